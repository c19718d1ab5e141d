"""Operators of airflow-hitl."""

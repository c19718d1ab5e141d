"""Triggers of airflow-hitl."""

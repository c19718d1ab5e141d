"""Airflow plugin of airflow-hitl."""

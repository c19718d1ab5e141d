"""Command line: ``airflow hitl ...`` (Airflow >= 3.2) and the ``airflow-hitl`` console script."""

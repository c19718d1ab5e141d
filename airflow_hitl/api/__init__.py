"""The REST API and pages of airflow-hitl, served by Airflow's api-server."""

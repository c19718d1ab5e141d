"""Browser tests of the Approvals pages against real Airflow processes."""

"""One quick task, run once after Airflow starts to warm up the api-server's Execution API.

On a busy machine the api-server's first task-execution request can take over 30 s; the task
runner gives up meanwhile and that first task fails. Paying that once here keeps it out of
the tests.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

with DAG(dag_id="e2e_warmup", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:

    @task
    def ping() -> str:
        return "pong"

    ping()

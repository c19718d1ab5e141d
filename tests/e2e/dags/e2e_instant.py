"""A gate decided the instant its request appears, many runs at once."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="e2e_instant",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=16,
    tags=["e2e"],
) as dag:
    gate = ApprovalOperator(task_id="gate", title="e2e instant decision")

    @task
    def after() -> str:
        return "ran"

    gate >> after()

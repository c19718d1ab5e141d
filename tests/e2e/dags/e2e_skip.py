"""A rejection skips the gate and its downstream instead of failing (``on_reject="skip"``)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="e2e_skip", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    gate = ApprovalOperator(task_id="gate", title="e2e skip on reject", on_reject="skip")

    @task
    def after() -> str:
        return "ran"

    gate >> after()

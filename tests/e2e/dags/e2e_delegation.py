"""A gate only ``carol`` may approve, for the delegation e2e tests: ``bob`` decides for her."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="e2e_delegation", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]
) as dag:
    gate = ApprovalOperator(task_id="gate", title="e2e delegation gate", allowed_approvers=["carol"])

    @task
    def after() -> str:
        return "ran"

    gate >> after()

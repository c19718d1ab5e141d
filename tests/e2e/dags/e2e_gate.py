"""A plain gate (anyone with edit access but the requester may approve) and one task after it.

Used by the e2e tests for self-approval and for clearing a waiting gate.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="e2e_gate", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    gate = ApprovalOperator(task_id="gate", title="e2e gate")

    @task
    def after() -> str:
        return "ran"

    gate >> after()

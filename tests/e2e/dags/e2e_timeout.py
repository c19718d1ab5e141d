"""Gates nobody answers: after a few seconds one is approved, the other rejected, by the timeout."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator


def timeout_dag(dag_id: str, action: str) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
        gate = ApprovalOperator(
            task_id="gate",
            title=f"e2e timeout ({action})",
            timeout=dt.timedelta(seconds=4),
            timeout_action=action,
        )

        @task
        def after() -> str:
            return "ran"

        gate >> after()
    return dag


approve_dag = timeout_dag(dag_id="e2e_timeout_approve", action="approve")
reject_dag = timeout_dag(dag_id="e2e_timeout_reject", action="reject")

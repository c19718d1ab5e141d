"""A gate that escalates to an admin when the on-call approver does not answer in time.

The first level is short on purpose so the demo shows escalation happening: ``bob`` has
20 seconds, then ``admin`` is added with 10 minutes more; if nobody decides, it is rejected.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="hitl_escalation",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["hitl", "example"],
) as dag:
    gate = ApprovalOperator(
        task_id="approve_hotfix",
        title="Apply hotfix migration to the orders database",
        reason="Unblocks checkout for EU customers",
        allowed_approvers=["bob"],
        timeout=dt.timedelta(seconds=20),
        timeout_action="escalate",
        escalate_to=[{"approvers": ["admin"], "timeout": dt.timedelta(minutes=10)}],
        escalation_final_action="reject",
        metadata={"risk": "high", "environment": "production"},
    )

    @task
    def migrate() -> str:
        return "migrated"

    gate >> migrate()

"""A gate that tells its approver by email (signed links), and one task after it.

Used by the notifications e2e test: the test approves by following the emailed link.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="e2e_notify_email", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]
) as dag:
    gate = ApprovalOperator(
        task_id="gate",
        title="Ship build {{ run_id }}",
        reason="release checklist done",
        context={"build": "{{ run_id }}", "note": "<b>not bold</b>"},
        allowed_approvers=["alice"],
        timeout=dt.timedelta(hours=1),
        notify_channels=["email", "in_app"],
    )

    @task
    def after() -> str:
        return "shipped"

    gate >> after()

"""A gate with an SLA of a few seconds and a timeout of an hour: it is overdue long before it expires.

Used by the SLA e2e test: the api-server records the breach, tells alice (email and in-app), and
the gate keeps waiting until she approves.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="e2e_sla", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    gate = ApprovalOperator(
        task_id="gate",
        title="Load {{ run_id }}",
        allowed_approvers=["alice"],
        sla=dt.timedelta(seconds=3),
        timeout=dt.timedelta(hours=1),
        notify_channels=["email", "in_app"],
    )

    @task
    def after() -> str:
        return "loaded"

    gate >> after()

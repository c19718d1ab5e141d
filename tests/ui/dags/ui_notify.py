"""A gate that tells alice in the Approvals pages (in-app notices): the bell's count goes up."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="ui_notify", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    ApprovalOperator(
        task_id="gate",
        title="Rotate the signing keys",
        notify_channels=["in_app"],
        notify_users=["alice"],
        timeout=dt.timedelta(hours=2),
    )

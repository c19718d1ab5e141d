"""A gate that posts to Slack and asks its approver for form inputs; one task after it reads them."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="e2e_slack_inputs", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]
) as dag:
    gate = ApprovalOperator(
        task_id="gate",
        title="Roll out {{ run_id }}",
        allowed_approvers=["alice"],
        timeout=dt.timedelta(hours=1),
        notify_channels=["slack"],
        slack_channel="C0APPROVALS",
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100),
            "ticket": Param(type="string"),
        },
    )

    @task
    def after(decision: object) -> dict:
        return read_decision(decision)["inputs"]

    after(gate.output)

"""A gate that emails, messages in Slack, calls a webhook and notifies in the Approvals pages."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="notified_release",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},
) as dag:
    ApprovalOperator(
        task_id="approve_release",
        title="Release model {{ params.version }}",
        allowed_roles=["op"],
        timeout=dt.timedelta(hours=4),
        notify_channels=["email", "slack", "webhook", "in_app"],
        notify_users=["alice"],
        notify_roles=["op"],  # default: the allowed approvers
        slack_channel="#approvals",  # default: a direct message to each person
        webhook_conn_id="approvals_webhook",  # default: [hitl] notify_webhook_conn_id
        remind_every=dt.timedelta(hours=1),
        notify_templates={"required": {"subject": "Please release {{ approval.title }}"}},
    )

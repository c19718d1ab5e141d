"""One gate per region: a mapped ApprovalOperator opens one request per map index.

Each region's request is decided on its own (or several at once with the Approvals tab's bulk
action, or ``POST /hitl/api/v1/approvals/bulk``); clearing one region's gate cancels only its
request. The release runs once every region has been approved.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

REGIONS = {"eu-west-1": "low", "us-east-1": "medium", "ap-south-1": "high"}

with DAG(
    dag_id="hitl_mapped",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["hitl", "example"],
) as dag:
    gates = ApprovalOperator.partial(
        task_id="approve_region",
        description="The on-call lead of each region approves its own rollout.",
        allowed_roles=["op"],
        timeout=dt.timedelta(hours=8),
        timeout_action="reject",
    ).expand_kwargs(
        [
            {"title": f"Roll out release 2026.11 to {region}", "metadata": {"region": region, "risk": risk}}
            for region, risk in REGIONS.items()
        ]
    )

    @task
    def release() -> str:
        return "released to every region"

    gates >> release()

"""A load that needs two of three named data owners to approve."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="hitl_quorum",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["hitl", "example"],
) as dag:
    gate = ApprovalOperator(
        task_id="approve_load",
        title="Load the November billing extract into the warehouse",
        description="Two of the three data owners must approve before the load replaces last month's table.",
        context={"rows": 1_204_331, "source": "billing_export_2026_11.parquet"},
        allowed_approvers=["alice", "bob", "carol"],
        required_approvals=2,
        timeout=dt.timedelta(days=1),
        timeout_action="reject",
        metadata={"risk": "medium"},
    )

    @task
    def load() -> str:
        return "loaded"

    gate >> load()

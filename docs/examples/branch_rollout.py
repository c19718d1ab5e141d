"""Follow one branch when approved and another when rejected; the gate succeeds either way."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalBranchOperator

with DAG(
    dag_id="branch_rollout",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    gate = ApprovalBranchOperator(
        task_id="approve_rollout",
        title="Roll out ranking model 2.3",
        branches={"approve": "roll_out", "reject": ["keep_current", "notify_team"]},
        timeout=dt.timedelta(hours=8),
        timeout_action="reject",  # a timeout follows the branch of its action
    )

    @task
    def roll_out() -> str:
        return "rolled out ranking model 2.3"

    @task
    def keep_current() -> str:
        return "kept ranking model 2.2"

    @task
    def notify_team() -> str:
        return "told the ranking team"

    gate >> [roll_out(), keep_current(), notify_team()]

"""After: approve follows one branch, reject the other; the gate succeeds either way."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalBranchOperator

with DAG(
    dag_id="migrate_branch_ours",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    choose = ApprovalBranchOperator(
        task_id="choose_rollout",
        title="Roll out ranking model 2.3?",
        branches={"approve": "roll_out", "reject": "keep_current"},  # options_mapping
        timeout=dt.timedelta(hours=8),
        timeout_action="reject",  # a timeout follows the reject branch, as defaults="Keep current" did
    )

    @task
    def roll_out() -> str:
        return "rolled out ranking model 2.3"

    @task
    def keep_current() -> str:
        return "kept ranking model 2.2"

    choose >> [roll_out(), keep_current()]

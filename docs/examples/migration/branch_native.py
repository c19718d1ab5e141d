"""Before: Airflow's HITLBranchOperator lets a person pick the branch."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import DAG, task

with DAG(
    dag_id="migrate_branch_native",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    choose = HITLBranchOperator(
        task_id="choose_rollout",
        subject="Roll out ranking model 2.3?",
        options=["Roll out", "Keep current"],
        options_mapping={"Roll out": "roll_out", "Keep current": "keep_current"},
        defaults="Keep current",  # what a timeout chooses
        response_timeout=dt.timedelta(hours=8),
    )

    @task
    def roll_out() -> str:
        return "rolled out ranking model 2.3"

    @task
    def keep_current() -> str:
        return "kept ranking model 2.2"

    choose >> [roll_out(), keep_current()]

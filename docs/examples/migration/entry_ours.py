"""After: the same form as the inputs of an airflow-hitl gate; approving submits it."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="migrate_entry_ours",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    form = ApprovalOperator(
        task_id="enter_rollout",
        title="Rollout of ranking model 2.3",
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100),
            "ticket": Param("CHG-0", type="string"),
        },
    )

    @task
    def roll_out(decision: dict | str) -> str:
        values = read_decision(decision)["inputs"]
        return f"rolling out to {values['rollout_percent']}% under {values['ticket']}"

    roll_out(form.output)

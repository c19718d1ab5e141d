"""A gate with a form: approvers choose the rollout share and give a change ticket."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="rollout_form",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    gate = ApprovalOperator(
        task_id="approve_rollout",
        title="Roll out ranking model 2.3",
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="Share of traffic"),
            "ticket": Param(type="string", description="Change ticket"),  # no default: required to approve
        },
        timeout=dt.timedelta(hours=8),
    )

    @task
    def roll_out(decision: dict | str) -> str:
        form = read_decision(decision)["inputs"]  # {"rollout_percent": 25, "ticket": "CHG-1234"}
        return f"rolling out to {form['rollout_percent']}% under {form['ticket']}"

    roll_out(gate.output)

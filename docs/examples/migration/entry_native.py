"""Before: Airflow's HITLEntryOperator asks for values, confirmed with its one "OK"."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import HITLEntryOperator
from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="migrate_entry_native",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:
    form = HITLEntryOperator(
        task_id="enter_rollout",
        subject="Rollout of ranking model 2.3",
        params={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100),
            "ticket": Param("CHG-0", type="string"),
        },
    )

    @task
    def roll_out(result: dict) -> str:
        values = result["params_input"]
        return f"rolling out to {values['rollout_percent']}% under {values['ticket']}"

    roll_out(form.output)

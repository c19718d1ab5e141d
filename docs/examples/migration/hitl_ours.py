"""After: the choice is a form input of an airflow-hitl gate; approving submits it."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="migrate_hitl_ours",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},
) as dag:

    @task
    def evaluate() -> dict[str, float]:
        return {"accuracy": 0.931, "target": 0.95}

    choose = ApprovalOperator(
        task_id="choose_action",
        title="Model {{ params.version }} missed its accuracy target",
        context_from={"metrics": "evaluate"},
        inputs={
            "action": Param("Retrain", enum=["Ship anyway", "Retrain", "Discard"]),  # the options
            "note": Param("", type="string"),
        },
        timeout=dt.timedelta(hours=8),
        timeout_action="approve",  # a timeout approves with the inputs' defaults, as `defaults` did
    )

    @task
    def act(decision: dict | str) -> str:
        form = read_decision(decision)["inputs"]
        return f"{form['action']} ({form['note']})"

    evaluate() >> choose
    act(choose.output)

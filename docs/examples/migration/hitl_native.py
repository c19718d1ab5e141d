"""Before: Airflow's HITLOperator asks what to do with a model that missed its target."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="migrate_hitl_native",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},
) as dag:

    @task
    def evaluate() -> dict[str, float]:
        return {"accuracy": 0.931, "target": 0.95}

    choose = HITLOperator(
        task_id="choose_action",
        subject="Model {{ params.version }} missed its accuracy target",
        body="Accuracy {{ ti.xcom_pull(task_ids='evaluate')['accuracy'] }}, target 0.95",
        options=["Ship anyway", "Retrain", "Discard"],
        defaults="Retrain",  # what a timeout chooses
        multiple=False,
        params={"note": Param("", type="string")},
        response_timeout=dt.timedelta(hours=8),
    )

    @task
    def act(result: dict) -> str:
        return f"{result['chosen_options'][0]} ({result['params_input']['note']})"

    evaluate() >> choose
    act(choose.output)

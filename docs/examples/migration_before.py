"""Before: a release gate with Airflow's own ApprovalOperator (apache-airflow-providers-standard)."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="release_native",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},
) as dag:

    @task
    def evaluate() -> dict[str, float]:
        return {"accuracy": 0.962, "loss": 0.087}

    gate = ApprovalOperator(
        task_id="approve_release",
        subject="Release model {{ params.version }}",
        body="Accuracy: {{ ti.xcom_pull(task_ids='evaluate')['accuracy'] }}",
        assigned_users=[{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}],
        params={"ticket": Param("CHG-0", type="string")},
        response_timeout=dt.timedelta(hours=4),
        defaults="Reject",  # what a timeout chooses
        fail_on_reject=True,
    )

    @task
    def deploy(result: dict) -> str:
        ticket = result["params_input"]["ticket"]
        return f"deployed under {ticket}, approved by {result['responded_by_user']['name']}"

    evaluate() >> gate
    deploy(gate.output)

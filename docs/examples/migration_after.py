"""After: the same release gate with airflow-hitl's ApprovalOperator."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="release_hitl",
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
        title="Release model {{ params.version }}",
        context_from={"metrics": "evaluate"},
        allowed_approvers=["alice", "bob"],
        inputs={"ticket": Param("CHG-0", type="string")},
        timeout=dt.timedelta(hours=4),
        timeout_action="reject",
        on_reject="fail",
    )

    @task
    def deploy(decision: dict | str) -> str:
        summary = read_decision(decision)
        return f"deployed under {summary['inputs']['ticket']}, approved by {summary['decided_by']}"

    evaluate() >> gate
    deploy(gate.output)

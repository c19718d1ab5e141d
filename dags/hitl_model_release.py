"""Release a trained model only after people have looked at its metrics.

``evaluate`` pushes metrics; the gate pulls them into the approval's context with
``context_from`` so approvers see accuracy and loss next to the Approve button.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="hitl_model_release",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["hitl", "example"],
    params={"model_version": "1.4.0"},
) as dag:

    @task
    def train() -> dict[str, str]:
        return {"artifact": "s3://models/churn/1.4.0"}

    @task
    def evaluate(model: dict[str, str]) -> dict[str, float]:
        return {"accuracy": 0.962, "precision": 0.951, "recall": 0.944, "training_loss": 0.087}

    gate = ApprovalOperator(
        task_id="approve_release",
        title="Release churn model {{ params.model_version }} to production",
        description="The model beat the current one on the holdout set. Approve to deploy.",
        reason="Model meets the accuracy threshold (> 95%)",
        context_from={"metrics": "evaluate", "model": "train"},
        metadata={"environment": "production", "model_version": "{{ params.model_version }}", "risk": "high"},
        timeout=dt.timedelta(hours=4),
        timeout_action="reject",
    )

    @task
    def deploy(decision: dict | str) -> str:
        # read_decision: the gate's XCom may arrive as JSON text (see README, "Writing a gate").
        summary = read_decision(decision)
        return f"deployed after approval by {', '.join(summary['approvers']) or summary['decision_source']}"

    metrics = evaluate(train())
    metrics >> gate
    deploy(gate.output)

"""Approve exactly this artifact: the deploy refuses any model but the one the approver saw."""

from __future__ import annotations

import datetime as dt
import hashlib

from airflow.sdk import DAG, task

from airflow_hitl import verify_bound
from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="bound_release",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
) as dag:

    @task
    def train() -> dict[str, str]:
        weights = b"model weights 2.1.0"  # a real task would upload the artifact it built
        return {"artifact_sha": hashlib.sha256(weights).hexdigest()}

    gate = ApprovalOperator(
        task_id="approve_model",
        title="Deploy the model trained in this run",
        allowed_roles=["op"],
        timeout=dt.timedelta(hours=4),
        # Shown to approvers, part of the request's content_digest, its SHA-256 in the decision.
        bind={"model": "{{ ti.xcom_pull('train')['artifact_sha'] }}"},
    )

    @task
    def deploy(decision: dict | str, trained: dict[str, str]) -> str:
        artifact_sha = trained["artifact_sha"]  # what this task is about to deploy
        verify_bound(decision, "model", artifact_sha)  # raises ApprovalMismatch for any other model
        return f"deployed model {artifact_sha}"

    trained = train()
    trained >> gate
    deploy(gate.output, trained)

"""Release a model once two people with the `op` role approve; escalate if nobody answers."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="release",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},  # the title below reads it
) as dag:

    @task
    def evaluate() -> dict[str, float]:
        return {"accuracy": 0.962, "loss": 0.087}

    gate = ApprovalOperator(
        task_id="approve_release",
        title="Release model {{ params.version }}",
        reason="Accuracy above 95%",
        context_from={"metrics": "evaluate"},  # upstream XComs shown to approvers
        metadata={"environment": "production", "risk": "high"},
        allowed_roles=["op"],  # or allowed_approvers=["alice", "bob"]
        required_approvals=2,  # quorum; require_all=True for everyone listed
        timeout=dt.timedelta(hours=4),
        timeout_action="escalate",  # or "approve" / "reject" (default)
        escalate_to=[{"approvers": ["admin"], "timeout": dt.timedelta(hours=2)}],
        escalation_final_action="reject",
        on_reject="fail",  # or "skip": skip the gate and its downstream
    )

    @task
    def deploy(decision: dict | str) -> str:
        summary = read_decision(decision)  # a dict, whichever way the XCom arrived
        return f"deployed, approved by {', '.join(summary['approvers'])}"

    evaluate() >> gate
    deploy(gate.output)

"""After: the same deployment gate with airflow-hitl's ApprovalOperator."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="migrate_approval_ours",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params={"version": "2.1.0"},
) as dag:

    @task
    def build() -> dict[str, str]:
        return {"image": "shop:2.1.0", "tests": "412 passed"}

    gate = ApprovalOperator(
        task_id="approve_deploy",
        title="Deploy shop {{ params.version }} to production",
        context_from={"build": "build"},  # shown to approvers as data, kept in the audit trail
        allowed_approvers=["alice", "bob"],
        timeout=dt.timedelta(hours=2),
        timeout_action="reject",
        on_reject="skip",  # as fail_on_reject=False: a rejection skips deploy (and the gate)
    )

    @task
    def deploy(decision: dict | str) -> str:
        return f"deployed shop 2.1.0, approved by {read_decision(decision)['decided_by']}"

    build() >> gate
    deploy(gate.output)

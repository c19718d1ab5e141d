"""Before: a deployment gate with Airflow's own ApprovalOperator (apache-airflow-providers-standard)."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, task

with DAG(
    dag_id="migrate_approval_native",
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
        subject="Deploy shop {{ params.version }} to production",
        body="Image {{ ti.xcom_pull(task_ids='build')['image'] }}: {{ ti.xcom_pull(task_ids='build')['tests'] }}",
        assigned_users=[{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}],
        response_timeout=dt.timedelta(hours=2),
        defaults="Reject",  # what a timeout chooses
        # fail_on_reject=False (the default): a rejection skips deploy and the gate succeeds
    )

    @task
    def deploy(result: dict) -> str:
        return f"deployed shop 2.1.0, approved by {result['responded_by_user']['name']}"

    build() >> gate
    deploy(gate.output)

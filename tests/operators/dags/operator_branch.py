"""Branch gates run by tests/operators/test_branch.py through `airflow dags test` (the worker path)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalBranchOperator

START = dt.datetime(2026, 1, 1)


def _branch_dag(dag_id: str, **gate_kwargs: object) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False) as dag:
        gate = ApprovalBranchOperator(
            task_id="gate",
            title="Branch of {{ dag.dag_id }}",
            branches={"approve": "ship", "reject": "roll_back"},
            poll_interval=0.5,
            **gate_kwargs,
        )

        @task
        def ship() -> str:
            return "shipped"

        @task
        def roll_back() -> str:
            return "rolled back"

        gate >> [ship(), roll_back()]
    return dag


branch_auto = _branch_dag("op_branch_auto", approval_type="auto")
branch_timeout_reject = _branch_dag("op_branch_timeout", timeout=dt.timedelta(seconds=2), timeout_action="reject")

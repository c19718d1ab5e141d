"""Gates run by tests/operators/test_approval.py through `airflow dags test`."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)


def _gate_dag(dag_id: str, **gate_kwargs: object) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False) as dag:

        @task
        def evaluate() -> dict[str, float]:
            return {"accuracy": 0.97, "loss": 0.08}

        gate = ApprovalOperator(
            task_id="gate",
            title="Gate of {{ dag.dag_id }}",
            context={"build": "{{ run_id }}"},
            context_from={"metrics": "evaluate"},
            poll_interval=0.5,
            **gate_kwargs,
        )

        @task
        def after(decision: dict) -> str:
            return decision["state"]

        evaluate() >> gate
        after(gate.output)
    return dag


manual = _gate_dag("op_manual")
reject_fail = _gate_dag("op_reject_fail")
reject_skip = _gate_dag("op_reject_skip", on_reject="skip")
auto = _gate_dag("op_auto", approval_type="auto")
conditional_true = _gate_dag(
    "op_conditional_true", approval_type="conditional", condition=lambda ctx: ctx["metrics"]["accuracy"] > 0.95
)
timeout_approve = _gate_dag("op_timeout_approve", timeout=dt.timedelta(seconds=2), timeout_action="approve")

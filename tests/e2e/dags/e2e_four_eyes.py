"""Four eyes across a run: ``deploy`` needs someone who did not vote on ``review``.

Used by tests/e2e/test_four_eyes_e2e.py: alice approves review, her vote on deploy is a 403
naming review, bob's passes and the run succeeds.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="e2e_four_eyes", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]):
    review = ApprovalOperator(task_id="review", title="Review the change")
    deploy = ApprovalOperator(task_id="deploy", title="Deploy the change", distinct_from=["review"])

    @task
    def shipped() -> str:
        return "shipped"

    review >> deploy >> shipped()

"""A branch gate with a form: approve follows ``ship`` (which reads the inputs), reject ``roll_back``.

``done`` joins both branches (``none_failed_min_one_success``), so it runs whichever was taken.
Used by tests/e2e/test_branch_e2e.py.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalBranchOperator
from airflow_hitl.records import read_decision

with DAG(dag_id="e2e_branch", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    gate = ApprovalBranchOperator(
        task_id="gate",
        title="e2e branch gate",
        branches={"approve": "ship", "reject": "roll_back"},
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100),
            "ticket": Param(type="string", minLength=3),
        },
    )

    @task
    def ship(decision: object) -> dict:
        # What the approver filled in reaches the task through the gate's XCom.
        return read_decision(decision)["inputs"]

    @task
    def roll_back() -> str:
        return "rolled back"

    @task(trigger_rule="none_failed_min_one_success")
    def done() -> str:
        return "done"

    shipped = ship(gate.output)
    rolled = roll_back()
    gate >> [shipped, rolled]
    [shipped, rolled] >> done()

"""A rollout that branches on the decision, with a form the approver fills in.

Approved: ``roll_out`` runs with the approver's ``rollout_percent`` and ``ticket`` (from the
gate's XCom) and ``keep_current`` is skipped. Rejected: the reverse; the gate succeeds either
way. ``report`` joins both branches.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from airflow_hitl.operators.approval import ApprovalBranchOperator
from airflow_hitl.records import read_decision

with DAG(
    dag_id="hitl_branch",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["hitl", "example"],
) as dag:
    gate = ApprovalBranchOperator(
        task_id="approve_rollout",
        title="Roll out ranking model 2.3 to production traffic",
        context={"offline_ndcg": 0.412, "baseline_ndcg": 0.398},
        branches={"approve": "roll_out", "reject": "keep_current"},
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="Share of traffic"),
            "ticket": Param(type="string", minLength=3, description="Change ticket"),
        },
        timeout=dt.timedelta(hours=8),
        timeout_action="reject",  # no answer keeps the current model
        metadata={"risk": "medium"},
    )

    @task
    def roll_out(decision: object) -> str:
        form = read_decision(decision)["inputs"]
        return f"rolling out to {form['rollout_percent']}% under {form['ticket']}"

    @task
    def keep_current() -> str:
        return "kept ranking model 2.2"

    @task(trigger_rule="none_failed_min_one_success")
    def report() -> str:
        return "reported"

    rolled = roll_out(gate.output)
    kept = keep_current()
    gate >> [rolled, kept]
    [rolled, kept] >> report()

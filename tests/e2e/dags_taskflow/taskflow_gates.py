"""TaskFlow gates for tests/e2e/test_taskflow_e2e.py: plain with Airflow notifiers, mapped, branching, broken.

``taskflow_release``'s gate has two notifiers: one whose service is down (it raises) and
Airflow's own ``SlackNotifier``, posting to the Slack Web API stand-in of the test
(``slack_api_default``), its text rendered from the request the gate opened.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.slack.notifications.slack import SlackNotifier
from airflow.sdk import BaseNotifier, dag, task

from airflow_hitl.records import read_decision

START = dt.datetime(2026, 1, 1)


class ChatDown(BaseNotifier):
    """A notifier whose service is unreachable."""

    def notify(self, context: Any) -> None:
        raise ConnectionError("chat service unreachable")


@dag(dag_id="taskflow_release", schedule=None, start_date=START, catchup=False, tags=["e2e"])
def taskflow_release() -> None:
    @task
    def evaluate() -> dict[str, float]:
        return {"accuracy": 0.962, "loss": 0.087}

    @task.approval(
        allowed_roles=["op"],
        timeout=dt.timedelta(hours=4),
        metadata={"environment": "production"},
        notifiers=[
            ChatDown(),
            SlackNotifier(
                slack_conn_id="slack_api_default",
                channel="#releases",
                text="Approval needed: {{ approval.title }} ({{ approval.id }}) in {{ dag.dag_id }}",
            ),
        ],
    )
    def approve_release(metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "title": f"Release model at {metrics['accuracy']:.1%} accuracy",
            "reason": "accuracy above 95%",
            "context": {"metrics": metrics},
            "metadata": {"model_version": "2.1.0"},
        }

    @task
    def release(value: Any) -> str:
        decision = read_decision(value)  # a JSON string when the gate ended in the triggerer (Airflow 3.3)
        if not decision["approved"]:
            raise ValueError(f"not approved: {decision}")
        return str(decision["decided_by"])

    release(approve_release(evaluate()))


@dag(dag_id="taskflow_mapped", schedule=None, start_date=START, catchup=False, tags=["e2e"])
def taskflow_mapped() -> None:
    @task
    def regions() -> list[str]:
        return ["eu-west-1", "us-east-1"]

    @task.approval(allowed_roles=["op"], timeout=dt.timedelta(hours=4))
    def approve_region(region: str) -> dict[str, Any]:
        return {"title": f"Roll out to {region}", "context": {"region": region}}

    @task
    def rolled_out(decisions: list[Any]) -> list[str]:
        return sorted(str(read_decision(value)["decided_by"]) for value in decisions)

    rolled_out(approve_region.expand(region=regions()))


@dag(dag_id="taskflow_branch", schedule=None, start_date=START, catchup=False, tags=["e2e"])
def taskflow_branch() -> None:
    @task.approval_branch(
        branches={"approve": "ship", "reject": "roll_back"},
        title="Ship build {{ dag_run.run_id }}",
        allowed_roles=["op"],
    )
    def approve_ship() -> dict[str, Any]:
        return {"context": {"build": 42}}

    @task
    def ship() -> str:
        return "shipped"

    @task
    def roll_back() -> str:
        return "rolled back"

    approve_ship() >> [ship(), roll_back()]


@dag(dag_id="taskflow_bad_return", schedule=None, start_date=START, catchup=False, tags=["e2e"])
def taskflow_bad_return() -> None:
    @task.approval(title="Release", retries=2)
    def approve_release() -> dict[str, Any]:
        return {"titel": "a typo"}

    approve_release()


taskflow_release()
taskflow_mapped()
taskflow_branch()
taskflow_bad_return()

"""Four eyes across a run (``distinct_from``) on real Airflow: the second gate refuses the first gate's voter."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_four_eyes"
API = "/hitl/api/v1/approvals"


def _pending(airflow: AirflowHarness, run_id: str, task_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = airflow.api(
            "GET", f"{API}/pending", user="alice", params={"dag_id": DAG_ID, "run_id": run_id, "task_id": task_id}
        ).json()
        return body["approvals"][0] if body["total_entries"] else None

    return wait_until(check, timeout=180, interval=0.5, what=f"pending {task_id} of {DAG_ID}/{run_id}")


def test_the_reviewer_cannot_also_deploy(airflow: AirflowHarness) -> None:
    run_id = airflow.trigger(DAG_ID, user="op")
    review = _pending(airflow, run_id, "review")
    airflow.api("POST", f"{API}/{review['id']}/approve", user="alice", json_body={"comment": "reviewed"})

    deploy = _pending(airflow, run_id, "deploy")
    assert deploy["distinct_from"] == ["review"]
    assert deploy["can_approve"] is False
    refused = airflow.api("POST", f"{API}/{deploy['id']}/approve", user="alice", json_body={}, expect=(403,)).json()
    assert refused["detail"] == "alice already voted on gate 'review' of this run; this gate needs someone else"
    assert airflow.manager.queries.get(deploy["id"]).votes == ()

    approved = airflow.api("POST", f"{API}/{deploy['id']}/approve", user="bob", json_body={}).json()
    assert approved["state"] == "approved"
    airflow.wait_for_run_state(DAG_ID, run_id, "success")
    assert airflow.task_states(DAG_ID, run_id) == {"review": "success", "deploy": "success", "shipped": "success"}

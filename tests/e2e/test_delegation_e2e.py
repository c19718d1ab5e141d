"""Delegation end to end on real Airflow processes (issue 13).

``carol`` is the only approver of ``e2e_delegation``'s gate. She delegates her approvals on
that DAG to ``bob`` over ``/hitl/api/v1/delegations``; bob's approval over the REST API counts
once, as carol's, and the gate's XCom, the API and the audit say "bob for carol". Once carol
ends the delegation, bob is refused and nothing changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_hitl.records import read_decision
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1/approvals"
DELEGATIONS = "/hitl/api/v1/delegations"
DAG_ID = "e2e_delegation"


def _delegate(airflow: AirflowHarness) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    body = {
        "delegate": "bob",
        "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
        "ends_at": (now + dt.timedelta(hours=2)).isoformat(),
        "dag_ids": [DAG_ID],
    }
    return airflow.api("POST", DELEGATIONS, user="carol", json_body=body, expect=(201,)).json()


def _pending(airflow: AirflowHarness, run_id: str, user: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = airflow.api("GET", f"{API}/pending", user=user, params={"dag_id": DAG_ID, "run_id": run_id}).json()
        return body["approvals"][0] if body["total_entries"] else None

    return wait_until(
        check, timeout=120, interval=0.5, what=f"pending request of {run_id}", on_timeout=airflow.dump_logs
    )


def test_delegated_approval_counts_once_and_shows_bob_for_carol(airflow: AirflowHarness) -> None:
    delegation = _delegate(airflow)
    try:
        run_id = airflow.trigger(DAG_ID, user="admin")
        item = _pending(airflow, run_id, "bob")
        assert (item["can_approve"], item["can_approve_for"]) == (True, "carol")

        decided = airflow.api("POST", f"{API}/{item['id']}/approve", user="bob", json_body={"comment": "for carol"})
        body = decided.json()
        assert (body["state"], body["decided_by"]) == ("approved", "carol")
        assert [(v["user"], v["delegate"]) for v in body["votes"]] == [("carol", "bob")]
        # Carol counts once: her own vote now is refused.
        airflow.api("POST", f"{API}/{item['id']}/approve", user="carol", json_body={}, expect=(409,))

        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        xcom = airflow.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/gate/xcomEntries/return_value"
        ).json()["value"]
        value = read_decision(xcom)
        assert value["approvers"] == ["carol"]
        assert [(v["user"], v["delegate"]) for v in value["votes"]] == [("carol", "bob")]
        vote = next(e for e in airflow.manager.audit.events(item["id"]) if e.event_type == "vote")
        assert (vote.actor, vote.details["delegate"]) == ("carol", "bob")
    finally:
        airflow.api("DELETE", f"{DELEGATIONS}/{delegation['id']}", user="carol", expect=(204,))


def test_refused_after_the_delegation_ends(airflow: AirflowHarness) -> None:
    delegation = _delegate(airflow)
    run_id = airflow.trigger(DAG_ID, user="admin")
    item = _pending(airflow, run_id, "bob")
    assert item["can_approve_for"] == "carol"

    airflow.api("DELETE", f"{DELEGATIONS}/{delegation['id']}", user="carol", expect=(204,))
    item = _pending(airflow, run_id, "bob")
    assert item["can_approve"] is False
    refused = airflow.api("POST", f"{API}/{item['id']}/approve", user="bob", json_body={}, expect=(403,))
    assert "not an allowed approver" in refused.json()["detail"]
    assert airflow.manager.queries.get(item["id"]).votes == ()

    # Carol still decides her own; the run goes on.
    airflow.api("POST", f"{API}/{item['id']}/approve", user="carol", json_body={})
    airflow.wait_for_run_state(DAG_ID, run_id, "success")

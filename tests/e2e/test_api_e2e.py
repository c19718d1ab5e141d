"""The approvals REST API end to end on real Airflow processes (issue 3).

Each test triggers an example DAG through Airflow's ``/api/v2``, finds its request with
``GET /hitl/api/v1/approvals/pending`` and decides it over HTTP with a bearer token from
``POST /auth/token``, on the same api-server and port, then watches what Airflow does
with the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1/approvals"


def find_pending(airflow: AirflowHarness, dag_id: str, run_id: str, *, user: str) -> dict[str, Any]:
    """Poll the pending list as ``user`` until the run's request shows up; return it."""

    def check() -> dict[str, Any] | None:
        body = airflow.api("GET", f"{API}/pending", user=user, params={"dag_id": dag_id, "run_id": run_id}).json()
        return body["approvals"][0] if body["total_entries"] else None

    return wait_until(
        check, timeout=120, interval=0.5, what=f"pending request of {dag_id}/{run_id}", on_timeout=airflow.dump_logs
    )


class TestApiApprove:
    """Approve over HTTP and the run goes on."""

    def test_approve_with_bearer_token_runs_downstream(self, airflow: AirflowHarness) -> None:
        dag_id = "hitl_model_release"
        run_id = airflow.trigger(dag_id, user="op")
        item = find_pending(airflow, dag_id, run_id, user="alice")
        assert item["task_id"] == "approve_release"
        assert item["requested_by"] == "op"
        assert item["can_approve"] is True

        response = airflow.api(
            "POST", f"{API}/{item['id']}/approve", user="alice", json_body={"comment": "metrics look good"}
        )
        assert response.json()["state"] == "approved"
        assert response.json()["decided_by"] == "alice"

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id)["deploy"] == "success"
        vote = next(e for e in airflow.manager.audit.events(item["id"]) if e.event_type == "vote")
        assert (vote.actor, vote.source, vote.details["client_address"]) == ("alice", "api", "127.0.0.1")

    def test_viewer_is_refused_and_nothing_changes(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")
        item = find_pending(airflow, dag_id, run_id, user="viewer")
        assert item["can_approve"] is False
        response = airflow.api("POST", f"{API}/{item['id']}/approve", user="viewer", json_body={}, expect=(403,))
        assert "edit access" in response.json()["detail"]
        airflow.api("POST", f"{API}/{item['id']}/approve", user="op", json_body={})
        airflow.wait_for_run_state(dag_id, run_id, "success")


class TestApiReject:
    """Reject over HTTP and the gate fails."""

    def test_reject_with_reason_fails_the_run(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="op")
        item = find_pending(airflow, dag_id, run_id, user="alice")
        airflow.api("POST", f"{API}/{item['id']}/reject", user="alice", json_body={}, expect=(422,))

        response = airflow.api(
            "POST", f"{API}/{item['id']}/reject", user="alice", json_body={"reason": "wrong input file"}
        )
        assert response.json()["state"] == "rejected"

        airflow.wait_for_run_state(dag_id, run_id, "failed")
        states = airflow.task_states(dag_id, run_id)
        assert states["gate"] == "failed"
        assert states["after"] == "upstream_failed"


class TestApiBulk:
    """One bulk call approves three runs."""

    def test_bulk_approve_three_runs(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_gate"
        run_ids = [airflow.trigger(dag_id, user="admin", unpause=i == 0) for i in range(3)]
        ids = [find_pending(airflow, dag_id, run_id, user="bob")["id"] for run_id in run_ids]

        body = airflow.api(
            "POST", f"{API}/bulk", user="bob", json_body={"ids": ids, "action": "approve", "comment": "batch"}
        ).json()
        assert [(r["ok"], r["state"]) for r in body["results"]] == [(True, "approved")] * 3

        for run_id in run_ids:
            airflow.wait_for_run_state(dag_id, run_id, "success")
        for approval_id in ids:
            assert {e.source for e in airflow.manager.audit.events(approval_id) if e.event_type == "vote"} == {"bulk"}


class TestApiQuorum:
    """Two of three named approvers, each with their own token."""

    def test_two_of_three(self, airflow: AirflowHarness) -> None:
        dag_id, task_id = "hitl_quorum", "approve_load"
        run_id = airflow.trigger(dag_id, user="admin")
        item = find_pending(airflow, dag_id, run_id, user="alice")
        assert item["required_approvals"] == 2
        # admin can edit the DAG but is not one of the named approvers.
        refused = airflow.api("POST", f"{API}/{item['id']}/approve", user="admin", json_body={}, expect=(403,))
        assert "not an allowed approver" in refused.json()["detail"]

        first = airflow.api("POST", f"{API}/{item['id']}/approve", user="alice", json_body={}).json()
        assert first["state"] == "pending"
        again = airflow.api("POST", f"{API}/{item['id']}/approve", user="alice", json_body={}, expect=(409,))
        assert "already voted" in again.json()["detail"]
        assert find_pending(airflow, dag_id, run_id, user="alice")["can_approve"] is False
        assert airflow.dag_run(dag_id, run_id)["state"] == "running"

        second = airflow.api("POST", f"{API}/{item['id']}/approve", user="carol", json_body={}).json()
        assert second["state"] == "approved"
        assert second["approvers"] == ["alice", "carol"]

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id) == {task_id: "success", "load": "success"}
        single = airflow.api("GET", f"{API}/{item['id']}", user="viewer").json()
        assert sorted(v["user"] for v in single["votes"]) == ["alice", "carol"]

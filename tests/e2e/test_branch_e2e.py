"""The branch gate and form inputs end to end on real Airflow (issue 13).

The gate ends from its trigger (no worker resumes it); the branch not taken is skipped by
Airflow's scheduler through ``NotPreviouslySkippedDep`` reading the ``skipmixin_key`` XCom of
the trigger's end event. If a future Airflow stops honouring that XCom for a task ended by a
trigger, the "other branch skipped" assertions here fail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_branch"
API = "/hitl/api/v1/approvals"


def _pending(airflow: AirflowHarness, run_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = airflow.api("GET", f"{API}/pending", user="alice", params={"dag_id": DAG_ID, "run_id": run_id}).json()
        return body["approvals"][0] if body["total_entries"] else None

    return wait_until(check, timeout=180, interval=0.5, what=f"pending request of {DAG_ID}/{run_id}")


def _xcom(airflow: AirflowHarness, run_id: str, task_id: str, key: str = "return_value") -> Any:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
    value = airflow.api("GET", path, params={"deserialize": True}).json()["value"]
    return json.loads(value) if isinstance(value, str) else value


class TestBranchGate:
    def test_approved_follows_approve_branch_with_inputs(self, airflow: AirflowHarness) -> None:
        run_id = airflow.trigger(DAG_ID, user="op")
        item = _pending(airflow, run_id)
        assert item["inputs"]["ticket"]["required"] is True
        assert item["inputs"]["rollout_percent"]["value"] == 10

        # Invalid values are refused, naming the fields, and change nothing.
        refused = airflow.api(
            "POST",
            f"{API}/{item['id']}/approve",
            user="alice",
            json_body={"inputs": {"rollout_percent": 500, "ticket": "x"}},
            expect=(422,),
        ).json()
        assert sorted(e["loc"][-1] for e in refused["detail"]) == ["rollout_percent", "ticket"]
        assert airflow.manager.queries.get(item["id"]).is_waiting

        approved = airflow.api(
            "POST",
            f"{API}/{item['id']}/approve",
            user="alice",
            json_body={"comment": "ship it", "inputs": {"rollout_percent": 25, "ticket": "CHG-1234"}},
        ).json()
        assert approved["state"] == "approved"

        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        assert airflow.task_states(DAG_ID, run_id) == {
            "gate": "success",
            "ship": "success",
            "roll_back": "skipped",
            "done": "success",
        }
        # The downstream task saw what the approver filled in.
        assert _xcom(airflow, run_id, "ship") == {"rollout_percent": 25, "ticket": "CHG-1234"}
        decision = _xcom(airflow, run_id, "gate")
        assert decision["inputs"] == {"rollout_percent": 25, "ticket": "CHG-1234"}
        assert decision["votes"][0]["inputs"] == {"rollout_percent": 25, "ticket": "CHG-1234"}
        assert _xcom(airflow, run_id, "gate", "skipmixin_key") == {"followed": ["ship"]}

    def test_rejected_follows_reject_branch(self, airflow: AirflowHarness) -> None:
        run_id = airflow.trigger(DAG_ID, user="op")
        item = _pending(airflow, run_id)
        airflow.api("POST", f"{API}/{item['id']}/reject", user="bob", json_body={"reason": "error budget spent"})

        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        assert airflow.task_states(DAG_ID, run_id) == {
            "gate": "success",
            "ship": "skipped",
            "roll_back": "success",
            "done": "success",
        }
        decision = _xcom(airflow, run_id, "gate")
        assert (decision["state"], decision["decided_by"]) == ("rejected", "bob")
        assert decision["inputs"] == {}

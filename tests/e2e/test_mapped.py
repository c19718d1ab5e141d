"""A mapped gate on real Airflow: one request per map index, decided one by one or in bulk (issue 13)."""

from __future__ import annotations

import pytest

from airflow_hitl.policy import Principal
from tests.e2e.harness import GATE_WAITS, AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

DAG_ID = "hitl_mapped"
TASK_ID = "approve_region"
ALICE = Principal.of("alice", ["op"])


def _waiting_by_index(airflow: AirflowHarness, run_id: str, count: int) -> dict[int, str]:
    """map_index -> id of that index's open request, once all ``count`` are open."""

    def opened() -> dict[int, str] | None:
        waiting = {a.map_index: a.id for a in airflow.approvals(DAG_ID, run_id, TASK_ID) if a.is_waiting}
        return waiting if len(waiting) == count else None

    return wait_until(opened, timeout=180, what=f"{count} open requests of {DAG_ID}.{TASK_ID}")


def _ti_state(airflow: AirflowHarness, run_id: str, map_index: int) -> str | None:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}/{map_index}"
    return airflow.api("GET", path).json()["state"]


class TestMappedGate:
    def test_each_index_decided_on_its_own_then_in_bulk(self, airflow: AirflowHarness) -> None:
        run_id = airflow.trigger(DAG_ID, user="op")
        waiting = _waiting_by_index(airflow, run_id, 3)
        assert sorted(waiting) == [0, 1, 2]
        titles = {a.map_index: a.title for a in airflow.approvals(DAG_ID, run_id, TASK_ID)}
        assert titles[0] == "Roll out release 2026.11 to eu-west-1"
        assert titles[2] == "Roll out release 2026.11 to ap-south-1"

        # One index, on its own: only that task instance ends.
        airflow.manager.approve(waiting[0], user=ALICE, comment="eu looks fine")
        wait_until(lambda: _ti_state(airflow, run_id, 0) == "success", timeout=120, what="index 0 to succeed")
        assert airflow.manager.queries.get(waiting[1]).is_waiting
        assert airflow.manager.queries.get(waiting[2]).is_waiting

        # The REST API filters by map_index.
        listed = airflow.api(
            "GET", "/hitl/api/v1/approvals", user="alice", params={"dag_id": DAG_ID, "run_id": run_id}
        ).json()["approvals"]
        assert sorted(item["map_index"] for item in listed) == [0, 1, 2]

        # The rest in one bulk call: each index gets its own result.
        response = airflow.api(
            "POST",
            "/hitl/api/v1/approvals/bulk",
            user="alice",
            json_body={"ids": [waiting[1], waiting[2]], "action": "approve", "comment": "us and apac too"},
        ).json()
        assert {r["id"]: (r["ok"], r["state"]) for r in response["results"]} == {
            waiting[1]: (True, "approved"),
            waiting[2]: (True, "approved"),
        }
        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        assert airflow.task_states(DAG_ID, run_id)["release"] == "success"

    def test_clearing_one_index_cancels_only_its_request(self, airflow: AirflowHarness) -> None:
        run_id = airflow.trigger(DAG_ID, user="op")
        waiting = _waiting_by_index(airflow, run_id, 3)
        for index in range(3):
            wait_until(
                lambda index=index: _ti_state(airflow, run_id, index) == GATE_WAITS,
                timeout=180,
                what=f"index {index} to wait in the triggerer",
            )

        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [[TASK_ID, 1]],
            "only_failed": False,
            "only_running": False,
            "include_upstream": False,
            "include_downstream": False,
            "reset_dag_runs": True,
        }
        airflow.api("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json_body=body)

        wait_until(
            lambda: airflow.manager.queries.get(waiting[1]).state == "cancelled",
            timeout=120,
            what="the cleared index's request to be cancelled",
        )
        assert airflow.manager.queries.get(waiting[0]).is_waiting
        assert airflow.manager.queries.get(waiting[2]).is_waiting
        # The cleared index runs again and opens a request of its own next try.
        retried = airflow.wait_for_approval(DAG_ID, run_id, TASK_ID, try_number=2, states=["pending"])
        assert retried.map_index == 1
        for request_id in (waiting[0], retried.id, waiting[2]):
            airflow.manager.approve(request_id, user=ALICE)
        airflow.wait_for_run_state(DAG_ID, run_id, "success")

"""Issue 10, impostor requests, end to end on real Airflow processes.

Anyone with edit access can ``POST /approvals`` naming the dag, run and task of a real
waiting gate. That request is marked ``origin: api``; the task instance's own view (the
query the task-instance tab makes) shows only the real gate; approving the impostor
resumes nothing; approving the real gate does.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import GATE_WAITS, AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1/approvals"
DAG_ID, TASK_ID = "e2e_gate", "gate"


def task_gates(airflow: AirflowHarness, run_id: str, *, user: str = "viewer") -> list[dict[str, Any]]:
    """What the task-instance tab asks for: this task instance's own gates, newest try first."""
    params = {
        "dag_id": DAG_ID,
        "run_id": run_id,
        "task_id": TASK_ID,
        "map_index": -1,
        "origin": "task",
        "order_by": "-requested_at",
    }
    return list(airflow.api("GET", API, user=user, params=params).json()["approvals"])


def real_gate(airflow: AirflowHarness, run_id: str) -> dict[str, Any]:
    """Wait for the run's gate to open; return it."""
    return wait_until(
        lambda: (task_gates(airflow, run_id) or [None])[0],
        timeout=180,
        interval=0.5,
        what=f"gate of {DAG_ID}/{run_id}",
        on_timeout=airflow.dump_logs,
    )


class TestImpostor:
    """An API request with a waiting gate's ids is never taken for the gate."""

    def test_impostor_neither_shown_as_the_gate_nor_resumes_the_task(self, airflow: AirflowHarness) -> None:
        run_a = airflow.trigger(DAG_ID, user="admin")
        run_b = airflow.trigger(DAG_ID, user="admin", unpause=False)
        gate_a, gate_b = real_gate(airflow, run_a), real_gate(airflow, run_b)
        airflow.wait_for_ti_state(DAG_ID, run_a, TASK_ID, GATE_WAITS)
        assert gate_a["origin"] == "task"

        impostor = airflow.api(
            "POST",
            API,
            user="op",
            json_body={"dag_id": DAG_ID, "run_id": run_a, "task_id": TASK_ID, "title": "e2e gate"},
            expect=(201,),
        ).json()
        assert impostor["origin"] == "api" and impostor["id"] != gate_a["id"]

        # The task instance's view shows the real gate only; lists show both, marked.
        assert [g["id"] for g in task_gates(airflow, run_a)] == [gate_a["id"]]
        listed = airflow.api("GET", API, user="viewer", params={"dag_id": DAG_ID, "run_id": run_a}).json()
        assert {a["id"]: a["origin"] for a in listed["approvals"]} == {gate_a["id"]: "task", impostor["id"]: "api"}

        approved = airflow.api("POST", f"{API}/{impostor['id']}/approve", user="alice", json_body={}).json()
        assert approved["state"] == "approved"

        # Run B's gate is approved after the impostor and its task resumes: the triggerer has
        # polled since the impostor was approved. Gate A must still be waiting.
        airflow.api("POST", f"{API}/{gate_b['id']}/approve", user="alice", json_body={})
        airflow.wait_for_run_state(DAG_ID, run_b, "success")
        assert airflow.task_instance(DAG_ID, run_a, TASK_ID)["state"] == GATE_WAITS
        assert airflow.api("GET", f"{API}/{gate_a['id']}", user="viewer").json()["state"] == "pending"

        decided = airflow.api("POST", f"{API}/{gate_a['id']}/approve", user="bob", json_body={"comment": "real"}).json()
        assert decided["state"] == "approved"
        airflow.wait_for_run_state(DAG_ID, run_a, "success")
        xcom = airflow.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_a}/taskInstances/{TASK_ID}/xcomEntries/return_value"
        ).json()
        # Resumed by the real gate's decision: bob's, with no trace of alice's vote on the impostor.
        assert "bob" in str(xcom["value"]) and "alice" not in str(xcom["value"])

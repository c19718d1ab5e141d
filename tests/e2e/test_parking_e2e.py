"""Waiting gates park in Airflow's ``awaiting_input`` state and hold no trigger (issue 29, items 1, 5 and 6).

Two real Airflow 3.3 stacks, one after the other (api-server, scheduler, triggerer and
dag-processor, LocalExecutor, PostgreSQL metadata DB, the approval store on PostgreSQL, the
DAGs of tests/e2e/dags_parking/), each with its triggerer frozen (SIGSTOP, its whole process
group) from the moment it is up until its tests are done: nothing here needs a triggerer.

- ``TestApiServer`` (the defaults): the gates park with no trigger row and no Human-in-the-loop
  panel of Airflow's own; a decision ends a parked gate in place (success, the decision as
  XCom, one try, no worker resumed); at its deadline a gate times out and its task fails per
  its timeout action; an escalation leaves the gate parked, its backstop moved to the new
  deadline; a parked gate marked success in Airflow has its request cancelled; a run deleted
  and created again under its run id asks again, and a waiting gate's run deleted has its
  request cancelled.
- ``TestBackstop`` (``[hitl] deadline_worker = False``: nobody acts on deadlines but Airflow's
  own sweep, as when no api-server runs): past the backstop Airflow resumes the gate on a
  worker, which applies the timeout action, or escalates it and parks it again.

The tests assert what happened, not how fast; they print how late it came.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from airflow_hitl.outbox import listen_conninfo
from airflow_hitl.records import Approval
from airflow_hitl.seam.parking import BACKSTOP_GRACE
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

PARKING_DAGS = Path(__file__).resolve().parent / "dags_parking"
API = "/hitl/api/v1"
DECIDE, EXPIRE, ESCALATE, MARK = "e2e_park_decide", "e2e_park_expire", "e2e_park_escalate", "e2e_park_mark"
BACKSTOP_EXPIRE, BACKSTOP_ESCALATE = "e2e_backstop_expire", "e2e_backstop_escalate"
#: The gates' deadline in tests/e2e/dags_parking/e2e_parking.py (seconds after each opens).
DEADLINE_SECONDS = 90.0
#: How far a parked gate's backstop may be from its deadline plus the grace (Airflow sets it
#: from the api-server's clock when the task parks, a moment after the request opened).
SLACK = dt.timedelta(seconds=30)


@dataclass(frozen=True, kw_only=True)
class Parked:
    """A stack with its triggerer frozen, and the gates parked in it."""

    airflow: AirflowHarness
    #: DAG id -> its run's id.
    runs: dict[str, str]
    #: DAG id -> its gate's request, as it opened.
    gates: dict[str, Approval]


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> AirflowHarness:
    root = tmp_path_factory.mktemp(f"airflow-parking-{name}")
    harness = AirflowHarness(root=root, extra_dag_dirs=[PARKING_DAGS], store="postgres", env=env, startup_timeout=600)
    # On this shared 2-core machine an api-server's first calls can outlast the harness's 90 s.
    harness._clients[0].close()
    harness._clients[0] = harness._http = httpx.Client(base_url=harness.base_url, timeout=300.0, trust_env=False)
    print(f"\nstarting Airflow ({name}) in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    return harness


def _parked(harness: AirflowHarness, dag_ids: tuple[str, ...]) -> Iterator[Parked]:
    """Freeze every triggerer, open the gates of ``dag_ids`` and wait until each is parked."""
    triggerers = [p for name, p in harness.processes.items() if name.startswith("triggerer")]
    assert triggerers
    for process in triggerers:
        os.killpg(process.pid, signal.SIGSTOP)
    try:
        runs = {dag_id: harness.trigger(dag_id) for dag_id in dag_ids}
        gates = {
            dag_id: harness.wait_for_approval(dag_id, run_id, "gate", states=["pending"], timeout=300)
            for dag_id, run_id in runs.items()
        }
        for dag_id, run_id in runs.items():
            harness.wait_for_ti_state(dag_id, run_id, "gate", "awaiting_input", timeout=300)
        yield Parked(airflow=harness, runs=runs, gates=gates)
    finally:
        for process in triggerers:
            os.killpg(process.pid, signal.SIGCONT)


@pytest.fixture(scope="class")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parked]:
    """The defaults: the api-server ends decided gates and acts on deadlines."""
    harness = _start(tmp_path_factory, "api-server", {})
    try:
        yield from _parked(harness, (EXPIRE, ESCALATE, DECIDE, MARK))
    finally:
        harness.stop()


@pytest.fixture(scope="class")
def backstop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parked]:
    """No deadline worker: only Airflow's deadline sweep acts on the gates' deadlines."""
    harness = _start(tmp_path_factory, "backstop", {"AIRFLOW__HITL__DEADLINE_WORKER": "False"})
    try:
        yield from _parked(harness, (BACKSTOP_EXPIRE, BACKSTOP_ESCALATE))
    finally:
        harness.stop()


def metadata(airflow: AirflowHarness, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on Airflow's metadata DB (PostgreSQL)."""
    with psycopg.connect(autocommit=True, **listen_conninfo(airflow.metadata_db_url)) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[call-overload]


def backstop_of(airflow: AirflowHarness, dag_id: str, run_id: str) -> dt.datetime | None:
    """The gate's task instance's deadline in Airflow (``trigger_timeout``), which Airflow's sweep acts on."""
    [(deadline,)] = metadata(
        airflow,
        "SELECT trigger_timeout FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'gate'",
        dag_id,
        run_id,
    )
    return deadline  # type: ignore[no-any-return]


def near(have: dt.datetime | None, wanted: dt.datetime) -> bool:
    return have is not None and abs(have - wanted) <= SLACK


def xcom(airflow: AirflowHarness, dag_id: str, run_id: str, key: str) -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/gate/xcomEntries/{key}"
    return airflow.api("GET", path, params={"deserialize": True}).json()["value"]


def tries(airflow: AirflowHarness, dag_id: str, run_id: str) -> list[int]:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/gate/tries"
    return [t["try_number"] for t in airflow.api("GET", path).json()["task_instances"]]


def seconds(value: str | dt.datetime) -> float:
    """Unix time of an API timestamp (ISO text) or a store time."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def ended_by(airflow: AirflowHarness, request_id: str) -> str | None:
    """Who claimed ending the request's task in the store (None: nobody, the worker finished it)."""
    return airflow.manager.gate_ends.gate_ended_by(request_id)


class TestApiServer:
    def test_gates_park_with_no_trigger_and_no_panel_of_airflows_own(self, api_server: Parked) -> None:
        airflow = api_server.airflow
        assert metadata(airflow, "SELECT count(*) FROM trigger") == [(0,)], "no trigger row: no triggerer slot"
        for dag_id, run_id in api_server.runs.items():
            ti = airflow.task_instance(dag_id, run_id, "gate")
            gate = api_server.gates[dag_id]
            assert (ti["state"], ti["try_number"], ti["trigger"]) == ("awaiting_input", 1, None)
            # Airflow's Human-in-the-loop panel and "Required Actions" list come from hitl_detail rows: none.
            details = airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails").json()
            assert details["total_entries"] == 0, details
            if gate.expires_at is None:
                assert backstop_of(airflow, dag_id, run_id) is None, "no deadline: Airflow's sweep never resumes it"
            else:
                assert near(backstop_of(airflow, dag_id, run_id), gate.expires_at + BACKSTOP_GRACE)
        # The Approval tab of our plugin is on every task instance page, whatever its state.
        plugins = airflow.api("GET", "/api/v2/plugins").json()["plugins"]
        views = [v for p in plugins for v in p.get("external_views", [])]
        assert any(v.get("destination") == "task_instance" for v in views), views

    def test_a_decision_ends_its_parked_gate_in_place(self, api_server: Parked) -> None:
        airflow, run_id, gate = api_server.airflow, api_server.runs[DECIDE], api_server.gates[DECIDE]
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="alice", json_body={"comment": "parked"})
        airflow.wait_for_run_state(DECIDE, run_id, "success", timeout=180)
        ti = airflow.task_instance(DECIDE, run_id, "gate")
        assert (ti["state"], tries(airflow, DECIDE, run_id)) == ("success", [1])
        assert str(ended_by(airflow, gate.id)).startswith("api-server@"), "ended by the api-server"
        summary = xcom(airflow, DECIDE, run_id, "return_value")
        assert (summary["request_id"], summary["decided_by"]) == (gate.id, "alice")
        # Ended in place: no worker ran the gate again after it parked.
        assert "resumed by Airflow" not in airflow.task_logs(DECIDE, run_id, "gate")
        decided = airflow.manager.queries.get(gate.id)
        assert decided.decided_at is not None
        print(
            f"\ndecision -> task ended: {seconds(ti['end_date']) - seconds(decided.decided_at):.3f}s", file=sys.stderr
        )

    def test_an_expiry_ends_its_parked_gate_per_its_timeout_action(self, api_server: Parked) -> None:
        airflow, run_id, gate = api_server.airflow, api_server.runs[EXPIRE], api_server.gates[EXPIRE]
        done = airflow.wait_for_approval(
            EXPIRE, run_id, "gate", states=["timeout"], timeout=DEADLINE_SECONDS + 180, interval=0.1
        )
        airflow.wait_for_run_state(EXPIRE, run_id, "failed", timeout=180)
        assert airflow.task_states(EXPIRE, run_id) == {"gate": "failed", "after": "upstream_failed"}
        assert (done.decision, done.decision_source) == ("rejected", "timeout")
        assert str(ended_by(airflow, gate.id)).startswith("api-server@"), "ended by the api-server, not the sweep"
        assert xcom(airflow, EXPIRE, run_id, "decision")["state"] == "timeout"
        assert tries(airflow, EXPIRE, run_id) == [1]
        ti = airflow.task_instance(EXPIRE, run_id, "gate")
        assert gate.expires_at is not None and done.decided_at is not None
        print(
            f"\nexpiry: applied {seconds(done.decided_at) - seconds(gate.expires_at):.3f}s after expires_at, "
            f"task ended {seconds(ti['end_date']) - seconds(gate.expires_at):.3f}s after it",
            file=sys.stderr,
        )

    def test_an_escalation_keeps_the_gate_parked_and_moves_its_backstop(self, api_server: Parked) -> None:
        airflow, run_id, gate = api_server.airflow, api_server.runs[ESCALATE], api_server.gates[ESCALATE]
        escalated = airflow.wait_for_approval(
            ESCALATE, run_id, "gate", states=["escalated"], timeout=DEADLINE_SECONDS + 180, interval=0.1
        )
        assert escalated.escalation_level == 1
        assert escalated.allowed_approvers == ("bob", "carol")
        assert escalated.expires_at is not None
        # Still parked, same try: nothing resumed it; the api-server moves its backstop with the deadline.
        ti = airflow.task_instance(ESCALATE, run_id, "gate")
        assert (ti["state"], ti["try_number"]) == ("awaiting_input", 1)
        wanted = escalated.expires_at + BACKSTOP_GRACE
        wait_until(
            lambda: near(backstop_of(airflow, ESCALATE, run_id), wanted),
            timeout=120,
            what="the parked gate's backstop to follow its new deadline",
        )
        assert airflow.manager.gate_ends.gate_ended_by(gate.id) is None
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="carol", json_body={"comment": "covering"})
        airflow.wait_for_run_state(ESCALATE, run_id, "success", timeout=180)
        assert xcom(airflow, ESCALATE, run_id, "return_value")["decided_by"] == "carol"
        assert tries(airflow, ESCALATE, run_id) == [1]

    def test_marking_a_parked_gate_cancels_its_request(self, api_server: Parked) -> None:
        # No trigger, so no on_kill: the api-server's reconcile of parked gates cancels it.
        airflow, run_id, gate = api_server.airflow, api_server.runs[MARK], api_server.gates[MARK]
        airflow.api(
            "PATCH", f"/api/v2/dags/{MARK}/dagRuns/{run_id}/taskInstances/gate", json_body={"new_state": "success"}
        )
        cancelled = airflow.wait_for_approval(MARK, run_id, "gate", states=["cancelled"], timeout=120)
        assert cancelled.id == gate.id
        assert cancelled.decision_source == "airflow"
        assert airflow.task_instance(MARK, run_id, "gate")["state"] == "success"

    def test_a_run_deleted_and_created_again_asks_again(self, api_server: Parked) -> None:
        # A run deleted in Airflow and created again under its run id starts again at try 1: its
        # gate asks again, whatever the old run's request said, which keeps its decision.
        airflow, run_id = api_server.airflow, f"again__{uuid.uuid4().hex[:8]}"
        assert airflow.trigger(DECIDE, run_id=run_id) == run_id
        old = airflow.wait_for_approval(DECIDE, run_id, "gate", states=["pending"], timeout=300)
        airflow.wait_for_ti_state(DECIDE, run_id, "gate", "awaiting_input", timeout=300)
        airflow.api("POST", f"{API}/approvals/{old.id}/approve", user="alice", json_body={"comment": "first run"})
        airflow.wait_for_run_state(DECIDE, run_id, "success", timeout=180)
        executor_event_taken(airflow, run_id)

        delete_run(airflow, DECIDE, run_id)
        assert airflow.trigger(DECIDE, run_id=run_id) == run_id
        new = airflow.wait_for_approval(DECIDE, run_id, "gate", states=["pending"], timeout=300)
        ti = airflow.wait_for_ti_state(DECIDE, run_id, "gate", "awaiting_input", timeout=300)
        assert new.id != old.id and (new.try_number, ti["try_number"]) == (1, 1)
        assert not new.votes and airflow.task_states(DECIDE, run_id)["after"] != "success"
        # The new request records the new task instance; the old one keeps its approval in the history.
        [(ti_id,)] = metadata(
            airflow,
            "SELECT id FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'gate'",
            DECIDE,
            run_id,
        )
        assert opened_by(airflow, new.id) == str(ti_id) != opened_by(airflow, old.id)
        kept = airflow.manager.queries.get(old.id)
        assert (kept.state, kept.decided_by, kept.comment) == ("approved", "alice", "first run")

        # Deleted while its gate waits: the api-server's next pass over parked gates cancels the request.
        delete_run(airflow, DECIDE, run_id)
        cancelled = wait_until(
            lambda: None if (now := airflow.manager.queries.get(new.id)).is_waiting else now,
            timeout=180,
            what="the deleted run's waiting request to be cancelled",
        )
        assert (cancelled.state, cancelled.decision_source, cancelled.comment) == (
            "cancelled",
            "airflow",
            "its DAG run was deleted in Airflow",
        )
        assert airflow.manager.queries.get(old.id).state == "approved"
        assert airflow.manager.audit.verify_audit_chain().ok


def delete_run(airflow: AirflowHarness, dag_id: str, run_id: str) -> None:
    """Delete a DAG run over Airflow's REST API, as a person does in Airflow's UI.

    Airflow deletes a run only when it is queued, successful or failed (409 while it runs): a
    running one is marked queued first, which leaves its task instances as they are, and deleted
    before the scheduler starts it again (else both again).
    """
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"

    def deleted() -> bool:
        if airflow.dag_run(dag_id, run_id)["state"] == "running":
            airflow.api("PATCH", path, json_body={"state": "queued"}, params={"update_mask": "state"})
        return airflow.api("DELETE", path, expect=(204, 409)).status_code == 204

    wait_until(deleted, timeout=120, interval=0.1, what=f"DAG run {dag_id}/{run_id} to be deleted")


def executor_event_taken(airflow: AirflowHarness, run_id: str) -> None:
    """Wait until the scheduler has received the executor's event of the run's gate's process.

    Airflow keys executor events by DAG, task, run, map index and try, not by task instance:
    the event of the first life's gate (its process exits once the gate parks, seconds later
    on a busy machine) received only after the run is created again finds the new gate
    scheduled at the same try, and the scheduler fails it as "killed externally". A person who
    deletes a run seconds after it ran meets the same race with any task; the test waits it out.
    """
    log = airflow.logs_folder / "scheduler.log"
    key = f"TaskInstanceKey(dag_id='{DECIDE}', task_id='gate', run_id='{run_id}', try_number=1"
    wait_until(
        lambda: any(
            "Received executor event" in line and key in line for line in log.read_text("utf-8", "replace").splitlines()
        ),
        timeout=180,
        what=f"the scheduler to receive the executor event of {DECIDE}/{run_id}'s gate",
    )


def opened_by(airflow: AirflowHarness, request_id: str) -> str | None:
    """The task instance try a request recorded when it opened, read from the store."""
    from airflow_hitl.models.tables import ApprovalRequestRow

    with airflow.manager.store.session() as session:
        row = session.get(ApprovalRequestRow, request_id)
        return row.task_instance_id if row is not None else None


class TestBackstop:
    def test_past_the_backstop_airflow_resumes_the_gate_which_times_out(self, backstop: Parked) -> None:
        airflow, run_id, gate = backstop.airflow, backstop.runs[BACKSTOP_EXPIRE], backstop.gates[BACKSTOP_EXPIRE]
        assert gate.expires_at is not None
        timeout = DEADLINE_SECONDS + BACKSTOP_GRACE.total_seconds() + 300
        airflow.wait_for_run_state(BACKSTOP_EXPIRE, run_id, "failed", timeout=timeout)
        done = airflow.manager.queries.get(gate.id)
        assert (done.state, done.decision, done.decision_source) == ("timeout", "rejected", "timeout")
        assert done.decided_at is not None and done.decided_at >= gate.expires_at + BACKSTOP_GRACE - SLACK
        assert airflow.task_states(BACKSTOP_EXPIRE, run_id) == {"gate": "failed", "after": "upstream_failed"}
        # The worker Airflow's sweep resumed finished it (same try), not the api-server.
        assert tries(airflow, BACKSTOP_EXPIRE, run_id) == [1]
        assert ended_by(airflow, gate.id) is None
        assert "resumed by Airflow at its backstop deadline" in airflow.task_logs(BACKSTOP_EXPIRE, run_id, "gate")
        assert xcom(airflow, BACKSTOP_EXPIRE, run_id, "decision")["state"] == "timeout"
        print(
            f"\nbackstop expiry: applied {seconds(done.decided_at) - seconds(gate.expires_at):.1f}s after expires_at",
            file=sys.stderr,
        )

    def test_past_the_backstop_an_escalation_parks_the_gate_again(self, backstop: Parked) -> None:
        airflow, run_id, gate = backstop.airflow, backstop.runs[BACKSTOP_ESCALATE], backstop.gates[BACKSTOP_ESCALATE]
        timeout = DEADLINE_SECONDS + BACKSTOP_GRACE.total_seconds() + 300
        escalated = airflow.wait_for_approval(BACKSTOP_ESCALATE, run_id, "gate", states=["escalated"], timeout=timeout)
        assert escalated.escalation_level == 1 and escalated.expires_at is not None
        # The resumed worker parked it again, same try, with the new level's backstop.
        ti = airflow.wait_for_ti_state(BACKSTOP_ESCALATE, run_id, "gate", "awaiting_input", timeout=300)
        assert (ti["try_number"], ti["trigger"]) == (1, None)
        assert near(backstop_of(airflow, BACKSTOP_ESCALATE, run_id), escalated.expires_at + BACKSTOP_GRACE)
        assert metadata(airflow, "SELECT count(*) FROM trigger") == [(0,)]
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="carol", json_body={"comment": "covering"})
        airflow.wait_for_run_state(BACKSTOP_ESCALATE, run_id, "success", timeout=180)
        assert xcom(airflow, BACKSTOP_ESCALATE, run_id, "return_value")["decided_by"] == "carol"
        assert str(ended_by(airflow, gate.id)).startswith("api-server@")
        assert tries(airflow, BACKSTOP_ESCALATE, run_id) == [1]

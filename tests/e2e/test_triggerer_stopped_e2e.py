"""Gates end, expire, escalate and remind with every triggerer stopped (issue 29, items 2 to 4).

One stack at a time, twice: the approval store on PostgreSQL (the api-server hears its NOTIFY),
then on SQLite (the demo's: the api-server polls it). Each stack is a real Airflow: api-server,
scheduler, triggerer and dag-processor, LocalExecutor, the DAGs of tests/e2e/dags_deadlines/.
Four gates open and wait (deferred, their triggers taken by the triggerer; or, where gates
park in Airflow's ``awaiting_input`` state, parked with no trigger), and then the triggerer is
frozen (SIGSTOP, its whole process group) until the module is done, so only the api-server can
act on them:

- a decision over the REST API ends its gate (the task succeeds, ended by the api-server);
- at its deadline a gate times out and its task ends per its timeout action (reject: failed);
- at its deadline an escalating gate re-opens to its next level (``escalated``, level 1), its
  task still deferred, and the added approver's decision ends it;
- a reminder goes out (alice's in-app notice) while the triggerer is frozen.

The store's ``task_ended_by`` names who ended each task: the api-server, never a trigger. The
test asserts what happened, not how fast; it prints how late each came (the benchmark,
``benchmarks/waiting_scale.py``, measures). The triggerer is let go (SIGCONT) before the stack
stops, so it stops cleanly.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_hitl.records import Approval
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

DEADLINE_DAGS = Path(__file__).resolve().parent / "dags_deadlines"
API = "/hitl/api/v1"
DECIDE, EXPIRE, ESCALATE, REMIND = (
    "e2e_deadline_decide",
    "e2e_deadline_expire",
    "e2e_deadline_escalate",
    "e2e_deadline_remind",
)
#: The gates' deadline in tests/e2e/dags_deadlines/e2e_deadlines.py (seconds after each opens).
DEADLINE_SECONDS = 90.0
#: How a gate's task waits: deferred on its trigger, or parked (no trigger, Airflow 3.3+).
WAITING = ("deferred", "awaiting_input")


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """Airflow with the approval store on PostgreSQL, then on SQLite, for the module."""
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"airflow-deadlines-{kind}")
    harness = AirflowHarness(root=root, extra_dag_dirs=[DEADLINE_DAGS], store=kind, startup_timeout=600)
    # On this shared 2-core machine an api-server's first calls can outlast the harness's 90 s.
    harness._clients[0].close()
    harness._clients[0] = harness._http = httpx.Client(base_url=harness.base_url, timeout=300.0, trust_env=False)
    print(f"\nstarting Airflow ({kind} store) in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@dataclass(frozen=True, kw_only=True)
class Frozen:
    """The stack with its triggerer frozen, and the gates that waited in it."""

    airflow: AirflowHarness
    #: DAG id -> its run's id.
    runs: dict[str, str]
    #: DAG id -> its gate's request, as it opened.
    gates: dict[str, Approval]
    #: Unix time at which the triggerer was frozen.
    at: float


@pytest.fixture(scope="module")
def frozen(stack: AirflowHarness) -> Iterator[Frozen]:
    """Open the four gates, wait until they wait (a deferred one: in the triggerer), then freeze every triggerer."""
    runs = {dag_id: stack.trigger(dag_id) for dag_id in (EXPIRE, ESCALATE, REMIND, DECIDE)}
    gates = {
        dag_id: stack.wait_for_approval(dag_id, run_id, "gate", states=["pending"]) for dag_id, run_id in runs.items()
    }
    # Once the triggerer has taken a trigger, none holds the task instance's row any more
    # (its assignment query locks it until it commits): frozen inside that query, it would
    # keep everybody, the api-server too, from ending the task.
    for dag_id, run_id in runs.items():
        if stack.wait_for_ti_state(dag_id, run_id, "gate", WAITING, timeout=300)["state"] == "deferred":
            stack.wait_in_triggerer(dag_id, run_id, "gate", timeout=300)
    triggerers = [p for name, p in stack.processes.items() if name.startswith("triggerer")]
    assert triggerers
    for process in triggerers:
        os.killpg(process.pid, signal.SIGSTOP)
    at = time.time()
    opened = gates[EXPIRE].requested_at.timestamp()
    print(f"\ntriggerer frozen {at - opened:.1f}s after the first gate opened", file=sys.stderr)
    try:
        yield Frozen(airflow=stack, runs=runs, gates=gates, at=at)
    finally:
        for process in triggerers:
            os.killpg(process.pid, signal.SIGCONT)


def seconds(value: str | dt.datetime) -> float:
    """Unix time of an API timestamp (ISO text) or a store time."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def xcom(airflow: AirflowHarness, dag_id: str, run_id: str, key: str) -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/gate/xcomEntries/{key}"
    return airflow.api("GET", path, params={"deserialize": True}).json()["value"]


def ended_by(airflow: AirflowHarness, request_id: str) -> str:
    """Who claimed ending the request's task (airflow_hitl.gate_ends)."""
    return str(airflow.manager.gate_ends.gate_ended_by(request_id))


def before_the_deadline(frozen: Frozen, gate: Approval) -> None:
    """The triggerer was frozen before ``gate``'s deadline: what follows is the api-server's doing."""
    assert gate.expires_at is not None
    assert frozen.at < gate.expires_at.timestamp(), (
        f"the triggerer was frozen {frozen.at - gate.expires_at.timestamp():.0f}s after the deadline: "
        "give the gates of tests/e2e/dags_deadlines/ a longer one"
    )


class TestTriggererStopped:
    def test_a_decision_ends_its_gate(self, frozen: Frozen) -> None:
        airflow, run_id, gate = frozen.airflow, frozen.runs[DECIDE], frozen.gates[DECIDE]
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="alice", json_body={"comment": "no triggerer"})
        airflow.wait_for_run_state(DECIDE, run_id, "success", timeout=180)
        ti = airflow.task_instance(DECIDE, run_id, "gate")
        assert (ti["state"], ti["try_number"]) == ("success", 1)
        decided = airflow.manager.queries.get(gate.id)
        assert decided.state == "approved"
        assert ended_by(airflow, gate.id).startswith("api-server@"), "ended by the api-server"
        assert xcom(airflow, DECIDE, run_id, "return_value")["decided_by"] == "alice"
        assert decided.decided_at is not None
        print(
            f"\ndecision -> task ended: {seconds(ti['end_date']) - seconds(decided.decided_at):.3f}s", file=sys.stderr
        )

    def test_an_expiry_ends_its_gate_per_the_timeout_action(self, frozen: Frozen) -> None:
        airflow, run_id, gate = frozen.airflow, frozen.runs[EXPIRE], frozen.gates[EXPIRE]
        before_the_deadline(frozen, gate)
        done = airflow.wait_for_approval(
            EXPIRE, run_id, "gate", states=["timeout"], timeout=DEADLINE_SECONDS + 180, interval=0.1
        )
        airflow.wait_for_run_state(EXPIRE, run_id, "failed", timeout=180)
        assert airflow.task_states(EXPIRE, run_id) == {"gate": "failed", "after": "upstream_failed"}
        assert (done.decision, done.decision_source) == ("rejected", "timeout")
        assert ended_by(airflow, gate.id).startswith("api-server@"), "ended by the api-server"
        assert xcom(airflow, EXPIRE, run_id, "decision")["state"] == "timeout"
        ti = airflow.task_instance(EXPIRE, run_id, "gate")
        assert gate.expires_at is not None and done.decided_at is not None
        print(
            f"\nexpiry: applied {seconds(done.decided_at) - seconds(gate.expires_at):.3f}s after expires_at, "
            f"task ended {seconds(ti['end_date']) - seconds(gate.expires_at):.3f}s after it",
            file=sys.stderr,
        )

    def test_an_escalation_reopens_the_gate_to_its_next_level(self, frozen: Frozen) -> None:
        airflow, run_id, gate = frozen.airflow, frozen.runs[ESCALATE], frozen.gates[ESCALATE]
        before_the_deadline(frozen, gate)
        escalated = airflow.wait_for_approval(
            ESCALATE, run_id, "gate", states=["escalated"], timeout=DEADLINE_SECONDS + 180, interval=0.1
        )
        assert escalated.escalation_level == 1
        assert escalated.allowed_approvers == ("bob", "carol")
        # Still waiting: nothing ended the task, which stays deferred on its (frozen) trigger, or parked.
        assert airflow.task_instance(ESCALATE, run_id, "gate")["state"] in WAITING
        assert airflow.manager.gate_ends.gate_ended_by(gate.id) is None
        assert gate.expires_at is not None
        print(
            f"\nescalation: applied {seconds(escalated.updated_at) - seconds(gate.expires_at):.3f}s after expires_at",
            file=sys.stderr,
        )
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="carol", json_body={"comment": "covering"})
        airflow.wait_for_run_state(ESCALATE, run_id, "success", timeout=180)
        assert xcom(airflow, ESCALATE, run_id, "return_value")["decided_by"] == "carol"
        assert ended_by(airflow, gate.id).startswith("api-server@")

    def test_a_reminder_goes_out(self, frozen: Frozen) -> None:
        airflow, run_id, gate = frozen.airflow, frozen.runs[REMIND], frozen.gates[REMIND]

        def reminded_since_frozen() -> list[dict[str, Any]]:
            body = airflow.api("GET", f"{API}/notifications", user="alice", params={"limit": 200}).json()
            return [
                n
                for n in body["notifications"]
                if n["request_id"] == gate.id and n["event_type"] == "reminder" and seconds(n["created_at"]) > frozen.at
            ]

        reminders = wait_until(reminded_since_frozen, timeout=180, interval=0.5, what="alice's in-app reminder")
        assert reminders[0]["read"] is False
        airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="alice", json_body={"comment": "reminded"})
        airflow.wait_for_run_state(REMIND, run_id, "success", timeout=180)
        assert ended_by(airflow, gate.id).startswith("api-server@")

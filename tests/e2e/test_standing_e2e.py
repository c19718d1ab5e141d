"""Standing approvals end to end on a real Airflow (issue 26, item 1), races included.

One stack at a time, twice: the approval store on PostgreSQL, then on SQLite (the demo's).
Each stack runs two api-servers on one store, a scheduler, a triggerer and a dag-processor;
the DAGs are tests/e2e/dags_standing/. People act through the REST API with their own tokens
(alice creates and revokes her standing approvals; bob, alice and carol trigger runs and
decide); the test reads the store to compare what it holds with what the API said, and on
PostgreSQL takes the appliers' leader lock or ends its holder's session, as an outage would.

- alice's standing approval casts her vote (source ``standing``) on a gate bob's run opened:
  the task succeeds, a use is spent, alice is told in-app, the audit trail has the vote.
- alice triggers the run herself: her standing approval is skipped (no self-approval) and
  the gate waits for someone else.
- Gates opening together against one use left: one vote, never more (on PostgreSQL with
  the appliers held off until every gate is open, so that each is owed the one use).
- A standing approval revoked while its gate opens, many times over: the vote is cast before
  the revocation, or not at all.
- Two api-servers: on PostgreSQL one applier leads (an advisory lock), on SQLite both look;
  the leader losing its store connection, or an api-server going away, while gates open:
  each owed vote is cast exactly once (the api-servers' own log lines say who cast which).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from airflow_hitl.api.standing_applier import LEADER_KEY
from airflow_hitl.models.tables import ApprovalStandingDueRow, ApprovalStandingRow, ApprovalVoteRow
from airflow_hitl.records import Approval
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

STANDING_DAGS = Path(__file__).resolve().parent / "dags_standing"
API = "/hitl/api/v1"
USE, SELF, PAIR, REVOKE, BURST = (
    "e2e_standing_use",
    "e2e_standing_self",
    "e2e_standing_pair",
    "e2e_standing_revoke",
    "e2e_standing_burst",
)
#: Runs of the two-gate DAG triggered together against one use (2 gates each).
RACE_RUNS = int(os.environ.get("HITL_E2E_STANDING_RACE_RUNS", "3"))
#: Rounds of "revoke while the gate opens".
REVOKE_ROUNDS = int(os.environ.get("HITL_E2E_STANDING_REVOKE_ROUNDS", "8"))
#: Gates of each burst across the api-servers.
BURST_RUNS = int(os.environ.get("HITL_E2E_STANDING_BURST_RUNS", "10"))
#: When each round revokes, in turn.
REVOKE_MOMENTS = ("at once", "task running", "request seen", "gate waiting")
#: A waiting gate's task: parked in awaiting_input (Airflow 3.3+), or deferred to its trigger.
WAITING = frozenset({"awaiting_input", "deferred"})
SELF_APPROVAL = "you triggered this run and cannot approve it yourself"
#: What an api-server logs when its applier cast a standing vote (airflow_hitl/api/standing_applier.py).
VOTED = re.compile(r"standing approval (\S+) voted for (\S+) on request (\S+)")


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """Airflow with two api-servers over one approval store (PostgreSQL, then SQLite), for the module."""
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"airflow-standing-{kind}")
    harness = AirflowHarness(root=root, extra_dag_dirs=[STANDING_DAGS], store=kind, api_servers=2, startup_timeout=600)
    # On this shared 2-core machine an api-server's first calls can outlast the harness's 90 s.
    for index, client in enumerate(harness._clients):
        client.close()
        harness._clients[index] = httpx.Client(base_url=harness.base_urls[index], timeout=300.0, trust_env=False)
    harness._http = harness._clients[0]
    print(f"\nstarting Airflow ({kind} store) in {root} on {harness.base_urls}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


# ---------------------------------------------------------------------- helpers


def create_standing(
    airflow: AirflowHarness,
    dag_id: str,
    *,
    task_id: str | None = None,
    max_uses: int | None = None,
    comment: str = "approved ahead",
    user: str = "alice",
    server: int = 0,
) -> dict[str, Any]:
    """``POST /standing-approvals`` as ``user``: the record the API answers with (201)."""
    body = {
        "dag_id": dag_id,
        "task_id": task_id,
        "valid_until": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).isoformat(),
        "max_uses": max_uses,
        "comment": comment,
    }
    response = airflow.api("POST", f"{API}/standing-approvals", user=user, json_body=body, expect=(201,), server=server)
    return dict(response.json())


def standing(airflow: AirflowHarness, standing_id: str, *, user: str = "alice") -> dict[str, Any]:
    """``GET /standing-approvals/{id}`` as its owner."""
    return dict(airflow.api("GET", f"{API}/standing-approvals/{standing_id}", user=user).json())


def owed_votes(airflow: AirflowHarness, approval_id: str, *, user: str = "alice") -> list[dict[str, Any]]:
    """``GET /approvals/{id}/standing``: what standing approvals owed the request, and how each was settled."""
    body = airflow.api("GET", f"{API}/approvals/{approval_id}/standing", user=user).json()
    return list(body["owed_votes"])


def settled(airflow: AirflowHarness, approval_id: str, *, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The request's owed votes once none is still due (an empty list: none was owed)."""

    def check() -> tuple[list[dict[str, Any]]] | None:
        owed = owed_votes(airflow, approval_id)
        return None if any(o["status"] == "due" for o in owed) else (owed,)

    (owed,) = wait_until(check, timeout=timeout, interval=0.25, what=f"request {approval_id}'s owed votes settled")
    return owed


def standing_votes(approval: Approval) -> list[Any]:
    return [v for v in approval.votes if v.source == "standing"]


def approve_waiting(airflow: AirflowHarness, gates: list[Approval], *, user: str = "carol") -> None:
    """``user`` approves those of ``gates`` still waiting (so their runs end)."""
    for gate in gates:
        if airflow.manager.queries.get(gate.id).is_waiting:
            airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user=user, json_body={"comment": "by hand"})


def when(value: str) -> dt.datetime:
    """An ISO 8601 time of the API."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def casts_logged(airflow: AirflowHarness) -> dict[tuple[str, str], list[str]]:
    """(standing id, request id) -> the api-servers whose applier logged casting that vote."""
    found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for path in sorted(airflow.logs_folder.glob("api-server*.log")):
        for match in VOTED.finditer(path.read_text("utf-8", "replace")):
            found[(match.group(1), match.group(3))].append(path.stem)
    return found


def leader_backend(airflow: AirflowHarness) -> int | None:
    """The PostgreSQL backend pid whose session holds the appliers' leader lock (None: nobody leads)."""
    engine = create_engine(airflow.store_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid = :high AND objid = :low AND objsubid = 1 AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"high": LEADER_KEY >> 32, "low": LEADER_KEY & 0xFFFFFFFF},
            ).scalar()
            return int(pid) if pid is not None else None
    finally:
        engine.dispose()


@contextlib.contextmanager
def appliers_held(airflow: AirflowHarness) -> Iterator[None]:
    """Hold the appliers' leader lock (PostgreSQL): no api-server casts an owed vote until the block ends.

    The lock is taken from whichever applier holds it by ending that applier's session; the
    applier finds it taken when it reconnects, and takes it (and catches up) once released.
    """
    engine = create_engine(airflow.store_url, isolation_level="AUTOCOMMIT")
    conn = engine.connect()
    try:

        def taken() -> bool:
            if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_KEY}).scalar():
                return True
            pid = leader_backend(airflow)
            if pid is not None:
                terminate_backend(airflow, pid)
            return False

        wait_until(taken, timeout=120, interval=0.01, what="the appliers' leader lock")
        yield
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_KEY})
    finally:
        conn.close()
        engine.dispose()


def terminate_backend(airflow: AirflowHarness, pid: int) -> None:
    """End one PostgreSQL session of the store, as a lost connection would."""
    engine = create_engine(airflow.store_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        engine.dispose()


def api_server_healthy(airflow: AirflowHarness, index: int) -> bool:
    """True once api-server ``index`` answers its health check."""
    try:
        return httpx.get(f"{airflow.base_urls[index]}/api/v2/monitor/health", timeout=5, trust_env=False).is_success
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------- the owner's vote


class TestTheOwnersVote:
    def test_it_approves_a_gate_someone_else_opened_and_the_owner_is_told(self, stack: AirflowHarness) -> None:
        airflow = stack
        created = create_standing(airflow, USE, task_id="gate", max_uses=3, comment="nightly loads approved ahead")
        assert (created["approver"], created["dag_id"], created["task_id"]) == ("alice", USE, "gate")
        assert (created["max_uses"], created["uses_left"], created["state"]) == (3, 3, "active")

        run_id = airflow.trigger(USE, user="bob")
        airflow.wait_for_run_state(USE, run_id, "success", timeout=300)
        assert airflow.task_states(USE, run_id) == {"gate": "success", "after": "success"}

        (gate,) = airflow.approvals(USE, run_id, "gate")
        item = airflow.api("GET", f"{API}/approvals/{gate.id}", user="bob").json()
        assert (item["state"], item["decided_by"], item["requested_by"]) == ("approved", "alice", "bob")
        (vote,) = item["votes"]
        assert (vote["user"], vote["vote"], vote["source"]) == ("alice", "approve", "standing")
        assert vote["comment"] == "nightly loads approved ahead"
        assert (vote["metadata"]["standing"]["id"], vote["metadata"]["standing"]["uses_left"]) == (created["id"], 2)

        after = standing(airflow, created["id"])
        assert (after["uses_left"], after["state"]) == (2, "active")
        (owed,) = owed_votes(airflow, gate.id)
        assert (owed["standing_id"], owed["approver"], owed["status"], owed["reason"]) == (
            created["id"],
            "alice",
            "used",
            None,
        )

        def told() -> list[dict[str, Any]]:
            body = airflow.api("GET", f"{API}/notifications", user="alice").json()
            return [n for n in body["notifications"] if n["event_type"] == "standing_used"]

        (notice,) = wait_until(told, timeout=120, interval=0.5, what="alice's in-app notice of the use")
        assert notice["request_id"] == gate.id and notice["read"] is False
        bobs = airflow.api("GET", f"{API}/notifications", user="bob").json()["notifications"]
        assert all(n["event_type"] != "standing_used" for n in bobs), "only the owner is told of a use"

        # The audit trail: the creation (no request), and the vote naming its standing approval.
        events = airflow.manager.audit.events()
        (made,) = [
            e
            for e in events
            if e.event_type == "standing_created" and e.details.get("standing_approval_id") == created["id"]
        ]
        assert (made.actor, made.request_id, made.details["approver"]) == ("alice", None, "alice")
        (voted,) = [e for e in airflow.manager.audit.events(gate.id) if e.event_type == "vote"]
        assert (voted.actor, voted.source) == ("alice", "standing")
        assert voted.details["facts"]["vote"]["metadata"]["standing"]["id"] == created["id"]
        assert airflow.manager.audit.verify_audit_chain().ok

    def test_the_owner_who_triggered_the_run_is_skipped_and_the_gate_waits_for_someone_else(
        self, stack: AirflowHarness
    ) -> None:
        airflow = stack
        created = create_standing(airflow, SELF, max_uses=2, comment="reports approved ahead")
        run_id = airflow.trigger(SELF, user="alice")
        gate = airflow.wait_for_approval(SELF, run_id, "gate", timeout=300)

        (owed,) = settled(airflow, gate.id)
        assert (owed["standing_id"], owed["approver"], owed["status"], owed["reason"]) == (
            created["id"],
            "alice",
            "skipped",
            SELF_APPROVAL,
        )
        item = airflow.api("GET", f"{API}/approvals/{gate.id}", user="alice").json()
        assert (item["state"], item["votes"], item["can_approve"]) == ("pending", [], False)
        assert standing(airflow, created["id"])["uses_left"] == 2, "a skipped vote spends nothing"

        decided = airflow.api("POST", f"{API}/approvals/{gate.id}/approve", user="bob", json_body={}).json()
        assert (decided["state"], [v["user"] for v in decided["votes"]]) == ("approved", ["bob"])
        airflow.wait_for_run_state(SELF, run_id, "success", timeout=300)


# ---------------------------------------------------------------------- the races


class TestRaces:
    def test_gates_opening_together_against_one_use_get_one_vote(self, stack: AirflowHarness) -> None:
        airflow = stack
        created = create_standing(airflow, PAIR, max_uses=1, comment="one release approved ahead")
        airflow.unpause(PAIR)
        # On PostgreSQL the leading applier, woken by each gate's NOTIFY, usually casts the vote
        # before the next gate opens, which then owes none. Held off until every gate is open
        # (as while the api-servers restart), the one use is owed to every gate at once.
        holding = appliers_held(airflow) if airflow.store_kind == "postgres" else contextlib.nullcontext()
        with holding:
            run_ids = [airflow.trigger(PAIR, user="bob", unpause=False) for _ in range(RACE_RUNS)]
            gates = [
                airflow.wait_for_approval(PAIR, run_id, task_id, timeout=300)
                for run_id in run_ids
                for task_id in ("gate_a", "gate_b")
            ]
        owed = {gate.id: settled(airflow, gate.id) for gate in gates}
        if airflow.store_kind == "postgres":
            assert all(len(rows) == 1 for rows in owed.values()), "each gate opened while the use was left"

        now = {gate.id: airflow.manager.queries.get(gate.id) for gate in gates}
        votes = [v for approval in now.values() for v in standing_votes(approval)]
        assert len(votes) == 1, f"one use, one vote: {votes}"
        assert [a.state for a in now.values()].count("approved") == 1
        assert all(a.state == "pending" and a.votes == () for a in now.values() if not standing_votes(a))
        statuses = [o["status"] for rows in owed.values() for o in rows]
        assert statuses.count("used") == 1
        # A gate that opened while the use was left was owed a vote the other gate spent first.
        skipped = [o["reason"] for rows in owed.values() for o in rows if o["status"] == "skipped"]
        assert all("no uses left" in reason for reason in skipped), skipped
        after = standing(airflow, created["id"])
        assert (after["uses_left"], after["state"]) == (0, "used_up")
        print(f"\n{len(gates)} gates, {len(statuses)} owed the vote, 1 cast", file=sys.stderr)

        approve_waiting(airflow, gates)
        for run_id in run_ids:
            airflow.wait_for_run_state(PAIR, run_id, "success", timeout=300)

    def test_a_standing_approval_revoked_while_its_gate_opens_votes_before_the_revocation_or_never(
        self, stack: AirflowHarness
    ) -> None:
        airflow = stack
        airflow.unpause(REVOKE)
        outcomes: collections.Counter[str] = collections.Counter()
        gates: list[Approval] = []
        run_ids: list[str] = []
        for round_ in range(REVOKE_ROUNDS):
            created = create_standing(airflow, REVOKE, task_id="gate", comment=f"round {round_}")
            run_id = airflow.trigger(REVOKE, user="bob", unpause=False)
            run_ids.append(run_id)
            # Revoked at a later point of the gate's opening each round: at once; once its task
            # runs; the moment its request (and the vote it is owed) is seen, racing the
            # api-servers' appliers that its opening woke (NOTIFY) or that will find it (poll);
            # once the gate's task waits (or is already through).
            moment = REVOKE_MOMENTS[round_ % len(REVOKE_MOMENTS)]
            if moment == "task running":
                airflow.wait_for_ti_state(REVOKE, run_id, "gate", {"running", *WAITING, "success"}, timeout=300)
            elif moment == "request seen":
                airflow.wait_for_approval(REVOKE, run_id, "gate", timeout=300, interval=0.02)
            elif moment == "gate waiting":
                airflow.wait_for_ti_state(REVOKE, run_id, "gate", {*WAITING, "success"}, timeout=300)
            revoked = airflow.api("DELETE", f"{API}/standing-approvals/{created['id']}", user="alice").json()
            assert (revoked["state"], revoked["revoked_by"]) == ("revoked", "alice")
            revoked_at = when(revoked["revoked_at"])

            gate = airflow.wait_for_approval(REVOKE, run_id, "gate", timeout=300)
            gates.append(gate)
            owed = [o for o in settled(airflow, gate.id) if o["standing_id"] == created["id"]]
            cast = [v for v in standing_votes(airflow.manager.queries.get(gate.id)) if v.user == "alice"]
            if cast:
                (vote,) = cast
                assert vote.metadata["standing"]["id"] == created["id"]
                assert vote.created_at < revoked_at, (vote.created_at, revoked_at)
                assert [o["status"] for o in owed] == ["used"]
                outcomes[f"{moment}: voted, then revoked"] += 1
            elif owed:
                (row,) = owed
                assert row["status"] == "skipped" and "revoked" in row["reason"], row
                outcomes[f"{moment}: owed, revoked before the vote"] += 1
            else:
                outcomes[f"{moment}: revoked before the gate opened"] += 1
            # A vote never follows the revocation, whatever came first.
            assert standing(airflow, created["id"])["revoked_at"] == revoked["revoked_at"]
            approve_waiting(airflow, [gate])
        print(f"\nrevocation races: {dict(outcomes)}", file=sys.stderr)
        assert sum(outcomes.values()) == REVOKE_ROUNDS
        for run_id in run_ids:
            airflow.wait_for_run_state(REVOKE, run_id, "success", timeout=300)
        revocations = [e for e in airflow.manager.audit.events() if e.event_type == "standing_revoked"]
        assert len(revocations) >= REVOKE_ROUNDS and {e.actor for e in revocations} == {"alice"}


# ---------------------------------------------------------------------- two api-servers


class TestTwoApiServers:
    def _burst(self, airflow: AirflowHarness, *, servers: tuple[int, ...]) -> tuple[dict[str, Any], list[str]]:
        created = create_standing(airflow, BURST, task_id="gate", comment="builds approved ahead", server=servers[-1])
        airflow.unpause(BURST)
        run_ids = []
        for i in range(BURST_RUNS):
            body: dict[str, Any] = {"logical_date": None, "conf": {}}
            server = servers[i % len(servers)]
            response = airflow.api(
                "POST", f"/api/v2/dags/{BURST}/dagRuns", user="bob", json_body=body, server=server, expect=(200, 201)
            )
            run_ids.append(str(response.json()["dag_run_id"]))
        return created, run_ids

    def _each_cast_once(self, airflow: AirflowHarness, created: dict[str, Any], run_ids: list[str]) -> None:
        for run_id in run_ids:
            airflow.wait_for_run_state(BURST, run_id, "success", timeout=600)
        logged = casts_logged(airflow)
        by_server: collections.Counter[str] = collections.Counter()
        for run_id in run_ids:
            (gate,) = airflow.approvals(BURST, run_id, "gate")
            assert [(v.user, v.source) for v in gate.votes] == [("alice", "standing")], gate.votes
            assert [(o["standing_id"], o["status"]) for o in owed_votes(airflow, gate.id)] == [(created["id"], "used")]
            (server,) = logged[(created["id"], gate.id)]
            by_server[server] += 1
        print(f"\nvotes cast by: {dict(by_server)}", file=sys.stderr)
        # Done with: the next burst's gates are owed by its own standing approval only.
        airflow.api("DELETE", f"{API}/standing-approvals/{created['id']}", user="alice")

    def test_the_leader_losing_its_store_connection_during_a_burst_casts_each_vote_once(
        self, stack: AirflowHarness
    ) -> None:
        airflow = stack
        created, run_ids = self._burst(airflow, servers=(0, 1))
        if airflow.store_kind == "postgres":
            # One applier leads (on SQLite every api-server looks, and their casts take turns
            # under the store's write lock). Take its connection away once gates are opening.
            airflow.wait_for_approval(BURST, run_ids[0], "gate", timeout=300, interval=0.05)
            pid = wait_until(lambda: leader_backend(airflow), timeout=60, what="an applier to lead")
            terminate_backend(airflow, pid)
            wait_until(
                lambda: (now := leader_backend(airflow)) is not None and now != pid,
                timeout=120,
                what="an applier to lead again on a new connection",
            )
        self._each_cast_once(airflow, created, run_ids)

    def test_an_api_server_going_away_during_a_burst_leaves_each_vote_cast_once(self, stack: AirflowHarness) -> None:
        airflow = stack
        name = "api-server-1"  # api-server 0 serves the tasks' Execution API
        process = airflow.processes.pop(name)
        process.stop()
        try:
            created, run_ids = self._burst(airflow, servers=(0,))
            self._each_cast_once(airflow, created, run_ids)
        finally:
            airflow.start_process(name, "api-server", 1)
            wait_until(lambda: api_server_healthy(airflow, 1), timeout=300, interval=1.0, what=f"{name} back")

    def test_no_standing_approval_ever_voted_more_than_it_owed_or_was_allowed(self, stack: AirflowHarness) -> None:
        # Over everything this stack did: votes, owed rows, uses and the api-servers' logs agree.
        airflow = stack
        with airflow.manager.store.session() as session:
            votes = session.execute(
                select(ApprovalVoteRow.request_id, ApprovalVoteRow.user, ApprovalVoteRow.metadata_).where(
                    ApprovalVoteRow.source == "standing"
                )
            ).all()
            used = session.execute(
                select(ApprovalStandingDueRow.standing_id, ApprovalStandingDueRow.request_id).where(
                    ApprovalStandingDueRow.status == "used"
                )
            ).all()
            approvals = session.scalars(select(ApprovalStandingRow)).all()
        cast = collections.Counter((v.metadata_["standing"]["id"], v.request_id) for v in votes)
        assert all(n == 1 for n in cast.values()), cast
        assert set(cast) == {(u.standing_id, u.request_id) for u in used} and len(used) == len(cast)
        for row in approvals:
            spent = sum(1 for standing_id, _ in cast if standing_id == row.id)
            if row.max_uses is not None and row.uses_left is not None:
                assert row.max_uses - row.uses_left == spent, (row.id, row.max_uses, row.uses_left, spent)
        logged = casts_logged(airflow)
        assert {key: len(servers) for key, servers in logged.items()} == dict.fromkeys(cast, 1)
        assert airflow.manager.audit.verify_audit_chain().ok

"""api/gate_closer.py: the api-server's thread that ends decided gates, on a real store.

On PostgreSQL the closer hears every transition through the store's NOTIFY; ``end`` is the
part that writes to Airflow's metadata DB, replaced here by a recorder (the real one is run
end to end in tests/e2e/test_resume_e2e.py, with every triggerer frozen).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from airflow_hitl.api.gate_closer import (
    DEFERRED,
    ENDED,
    LOCKED,
    NOT_YET,
    NOTHING,
    TAKEN,
    TRIGGER_CLASSPATH,
    EndClaim,
    GateCloser,
    end_gate,
    gate_states,
    unended_task_gates,
)
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.queries import ApprovalQueries
from airflow_hitl.records import Approval, TaskGate
from airflow_hitl.spec import utcnow
from airflow_hitl.triggers.approval import ApprovalTrigger
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")


class Recorder:
    """Stands in for the Airflow side: records each call, answers from a script.

    With ``claims``, it takes the closer's claim as :func:`end_gate` does once the task is
    locked and deferred: ``answers`` only when the claim is the closer's, :data:`TAKEN` when not.
    """

    def __init__(self, answers: Callable[[Approval, int], str] = lambda a, n: ENDED, *, claims: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.claims: list[EndClaim] = []
        self.answers = answers
        self.use_claims = claims
        self.changed = threading.Condition()

    def __call__(self, approval: Approval, claim: EndClaim) -> str:
        taken = claim.take() if self.use_claims else True
        with self.changed:
            self.calls.append((approval.id, approval.state))
            self.claims.append(claim)
            answer = self.answers(approval, sum(1 for i, _ in self.calls if i == approval.id)) if taken else TAKEN
            self.changed.notify_all()
        return answer

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, timeout), self.calls
            return list(self.calls)

    def wait_for_each(self, *calls: tuple[str, str], timeout: float = 20.0) -> list[tuple[str, str]]:
        """Wait until every one of ``calls`` was made, in whatever order (gates end side by side)."""
        with self.changed:
            assert self.changed.wait_for(lambda: all(c in self.calls for c in calls), timeout), self.calls
            return list(self.calls)


class CountingReads(ApprovalQueries):
    """A manager's reads that record each request read in full."""

    def __init__(self, *, store: ApprovalStore) -> None:
        super().__init__(store=store)
        self.reads: list[str] = []

    def get(self, request_id: str) -> Approval:
        self.reads.append(request_id)
        return super().get(request_id)


def reading_with(queries: ApprovalQueries) -> ApprovalManager:
    """A real manager over the store of ``queries``, which it reads requests with."""
    manager = ApprovalManager(store=queries.store)
    manager.queries = queries
    return manager


@pytest.fixture
def pg_manager(pg_store: ApprovalStore) -> ApprovalManager:
    return ApprovalManager(store=pg_store)


@pytest.fixture
def closer_of(pg_manager: ApprovalManager) -> Iterator[Callable[..., GateCloser]]:
    manager = pg_manager
    started: list[GateCloser] = []

    def make(
        end: Recorder,
        wait_seconds: float = 30.0,
        over: ApprovalManager | None = None,
        look: Callable[[TaskGate], str] = lambda gate: DEFERRED,
        leader_key: int | None = None,
        follow_every: float = 1.0,
    ) -> GateCloser:
        used = over or manager
        closer = GateCloser(
            manager_factory=lambda: used,
            wait_seconds=wait_seconds,
            look=each(look),
            end=end,
            leader_key=leader_key,
            follow_every=follow_every,
        )
        closer.start()
        started.append(closer)
        return closer

    yield make
    for closer in started:
        closer.stop()


def each(look: Callable[[TaskGate], str]) -> Callable[[Sequence[TaskGate]], dict[str, str]]:
    """A closer's ``look`` (all due gates at once) from an answer per gate."""
    return lambda gates: {gate.id: look(gate) for gate in gates}


def _listening(closer: GateCloser) -> None:
    # LISTEN is issued by the listener thread once it connects; a NOTIFY before that is not heard.
    assert closer.listening.wait(20), "the closer listens on a PostgreSQL store"


@pytest.mark.postgres
class TestOnPostgres:
    def test_a_decision_ends_its_gate_once(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser]
    ) -> None:
        end = Recorder()
        closer = closer_of(end)
        _listening(closer)
        approval = pg_manager.create(spec())
        pg_manager.approve(approval.id, user=ALICE)
        assert end.wait_for(1) == [(approval.id, "approved")]
        time.sleep(0.3)
        assert end.calls == [(approval.id, "approved")], "the create's NOTIFY asks nothing of Airflow"
        assert closer.ended == 1

    @pytest.mark.parametrize("answer", [NOT_YET, LOCKED, "error"], ids=["deferring", "locked", "failing"])
    def test_an_end_not_possible_yet_is_tried_again_until_it_ends_the_task(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser], answer: str
    ) -> None:
        # The task still deferring, its row held by another Airflow process, or a deadlock or
        # dropped connection: with every triggerer down, only the closer's next try ends it.
        def answers(approval: Approval, n: int) -> str:
            if n >= 3:
                return ENDED
            if answer == "error":
                raise RuntimeError("deadlock detected")
            return answer

        end = Recorder(answers)
        closer = closer_of(end)
        _listening(closer)
        approval = pg_manager.create(spec())
        pg_manager.reject(approval.id, user=ALICE, reason="no")
        assert end.wait_for(3) == [(approval.id, "rejected")] * 3
        time.sleep(0.3)
        assert len(end.calls) == 3 and closer.ended == 1

    @pytest.mark.parametrize("answer", [NOT_YET, "error"], ids=["never-defers", "keeps-failing"])
    def test_an_end_never_possible_is_left_to_the_trigger_after_the_wait(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser], answer: str
    ) -> None:
        def answers(approval: Approval, n: int) -> str:
            if answer == "error":
                raise RuntimeError("metadata DB down")
            return answer

        end = Recorder(answers)
        closer = closer_of(end, wait_seconds=1.5)
        _listening(closer)
        approval = pg_manager.create(spec())
        pg_manager.cancel(approval.id, actor="admin", reason="stop")
        end.wait_for(2)
        time.sleep(2.0)
        count = len(end.calls)
        time.sleep(1.5)
        assert len(end.calls) == count, "no more attempts after wait_seconds"
        assert closer.ended == 0

    def test_a_failing_airflow_side_never_holds_up_other_gates(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser]
    ) -> None:
        def answers(approval: Approval, n: int) -> str:
            if approval.state == "rejected":
                raise RuntimeError("metadata DB down")
            return ENDED

        end = Recorder(answers)
        closer = closer_of(end)
        _listening(closer)
        first, second = pg_manager.create(spec()), pg_manager.create(spec())
        pg_manager.reject(first.id, user=ALICE, reason="no")
        pg_manager.approve(second.id, user=ALICE)
        # Gates end side by side: the two calls come in either order, the failing one again and again.
        calls = end.wait_for_each((first.id, "rejected"), (second.id, "approved"))
        assert set(calls) == {(first.id, "rejected"), (second.id, "approved")}
        deadline = time.monotonic() + 20
        while closer.ended < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert closer.ended == 1

    def test_a_look_or_read_that_fails_is_tried_again(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        looks: list[str] = []
        reads: list[str] = []

        def look(gate: TaskGate) -> str:
            looks.append(gate.id)
            if len(looks) == 1:
                raise ConnectionError("metadata DB unreachable")
            return DEFERRED

        class FlakyRead(ApprovalQueries):
            def get(self, request_id: str) -> Approval:
                reads.append(request_id)
                if len(reads) == 1:
                    raise ConnectionError("store unreachable")
                return super().get(request_id)

        manager = reading_with(FlakyRead(store=pg_store))
        end = Recorder()
        closer = closer_of(end, over=manager, look=look)
        _listening(closer)
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        assert end.wait_for(1) == [(approval.id, "approved")]
        assert looks == [approval.id] * 3 and reads == [approval.id] * 2
        assert closer.ended == 1

    def test_a_locked_task_instance_is_tried_again_and_the_give_up_says_why(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser], caplog: pytest.LogCaptureFixture
    ) -> None:
        # Another Airflow process holds the row (a triggerer assigning itself the trigger):
        # looked at again until it lets go, and said so if it never does.
        end = Recorder(lambda a, n: LOCKED if a.state == "rejected" or n < 3 else ENDED)
        closer = closer_of(end, wait_seconds=1.0)
        _listening(closer)
        freed, held = pg_manager.create(spec()), pg_manager.create(spec())
        with caplog.at_level(logging.WARNING, logger="airflow_hitl.api.gate_closer"):
            pg_manager.approve(freed.id, user=ALICE)
            pg_manager.reject(held.id, user=ALICE, reason="no")
            deadline = time.monotonic() + 20
            while "left the task" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert [c for c in end.calls if c[0] == freed.id] == [(freed.id, "approved")] * 3
        assert closer.ended == 1
        assert f"left the task of request {held.id} to its trigger" in caplog.text
        assert "kept its task instance locked" in caplog.text
        assert freed.id not in caplog.text

    def test_a_gate_whose_task_is_not_deferred_is_neither_read_in_full_nor_ended(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        # The trigger ended it first, or there is no such task instance: one light look only.
        looked: list[TaskGate] = []
        reading = CountingReads(store=pg_store)
        manager, reads = reading_with(reading), reading.reads
        ended_already, deferred = manager.create(spec()), manager.create(spec())

        def look(gate: TaskGate) -> str:
            looked.append(gate)
            return NOTHING if gate.id == ended_already.id else DEFERRED

        end = Recorder()
        closer = closer_of(end, over=manager, look=look)
        _listening(closer)
        manager.approve(ended_already.id, user=ALICE)
        manager.approve(deferred.id, user=ALICE)
        assert end.wait_for(1) == [(deferred.id, "approved")]
        assert reads == [deferred.id]
        first = looked[0]
        assert (first.id, first.dag_id, first.run_id, first.task_id, first.map_index, first.try_number) == (
            ended_already.id,
            ended_already.dag_id,
            ended_already.run_id,
            ended_already.task_id,
            ended_already.map_index,
            ended_already.try_number,
        )

    def test_a_gate_still_deferring_is_looked_at_again_and_read_once_it_has_deferred(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        looks: list[str] = []

        def look(gate: TaskGate) -> str:
            looks.append(gate.id)
            return NOT_YET if len(looks) < 4 else DEFERRED

        reading = CountingReads(store=pg_store)
        manager, reads = reading_with(reading), reading.reads
        end = Recorder()
        closer = closer_of(end, over=manager, look=look)
        _listening(closer)
        approval = manager.create(spec())
        manager.reject(approval.id, user=ALICE, reason="no")
        assert end.wait_for(1) == [(approval.id, "rejected")]
        time.sleep(0.3)
        assert looks == [approval.id] * 4 and reads == [approval.id] and closer.ended == 1

    def test_the_tasks_of_many_waiting_gates_are_looked_up_together(self, pg_store: ApprovalStore) -> None:
        # A burst of decisions made before their tasks have deferred: each look asks about all
        # the waiting gates in one call, not one call per gate.
        manager = ApprovalManager(store=pg_store)
        decided = []
        for _ in range(30):
            approval = manager.create(spec())
            decided.append(manager.approve(approval.id, user=ALICE).id)
        looks: list[list[str]] = []

        def look(gates: Sequence[TaskGate]) -> dict[str, str]:
            looks.append([gate.id for gate in gates])
            return {gate.id: NOT_YET if len(looks) < 4 else DEFERRED for gate in gates}

        end = Recorder()
        closer = GateCloser(manager_factory=lambda: manager, look=look, end=end)
        for request_id in decided:  # heard before the closer's thread reads any: one batch
            closer.submit(request_id)
        closer.start()
        try:
            assert sorted(i for i, _ in end.wait_for(30)) == sorted(decided)
            assert looks == [decided] * 4
            assert closer.ended == 30
        finally:
            closer.stop()

    def test_the_ends_of_several_closed_gates_run_side_by_side(self, pg_store: ApprovalStore) -> None:
        # An end mostly waits on the two databases: a burst of expiries is ended several at a
        # time. Each end here waits until four are in progress at once, which ends one after
        # another could never reach (the barrier would break and every end fail).
        manager = ApprovalManager(store=pg_store)
        decided = [manager.approve(manager.create(spec()).id, user=ALICE).id for _ in range(8)]
        together = threading.Barrier(4, timeout=20)
        names: set[str] = set()

        def end(approval: Approval, claim: EndClaim) -> str:
            names.add(threading.current_thread().name)
            together.wait()
            return ENDED

        ended = Recorder()
        closer = GateCloser(
            manager_factory=lambda: manager,
            look=each(lambda gate: DEFERRED),
            end=lambda approval, claim: ended(approval, claim) if end(approval, claim) == ENDED else "",
        )
        for request_id in decided:  # heard before the closer's thread reads any: one batch
            closer.submit(request_id)
        closer.start()
        try:
            assert sorted(i for i, _ in ended.wait_for(8)) == sorted(decided)
            assert closer.ended == 8
            assert len(names) == 4 and all(name.startswith("hitl-gate-end") for name in names), names
        finally:
            closer.stop()

    def test_a_stream_of_transitions_is_read_together(
        self, pg_store: ApprovalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Decisions heard one after another (a stream, not a burst already queued) share one
        # read of the store while they arrive within the gathering window of the first.
        monkeypatch.setattr("airflow_hitl.api.gate_closer._GATHER", 5.0)  # wide: a loaded machine stays inside
        reads: list[list[str]] = []

        class Counting(ApprovalQueries):
            def closed_task_gates(self, request_ids: Sequence[str]) -> list[TaskGate]:
                reads.append(list(request_ids))
                return super().closed_task_gates(request_ids)

        manager = reading_with(Counting(store=pg_store))
        decided = [manager.approve(manager.create(spec()).id, user=ALICE).id for _ in range(4)]
        end = Recorder()
        closer = GateCloser(manager_factory=lambda: manager, look=each(lambda gate: DEFERRED), end=end)
        closer.start()
        try:
            for request_id in decided:
                closer.submit(request_id)
                time.sleep(0.05)
            assert sorted(i for i, _ in end.wait_for(4)) == sorted(decided)
            assert reads == [decided]
        finally:
            closer.stop()

    def test_transitions_heard_while_the_store_cannot_be_read_are_read_again(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        failures: list[Sequence[str]] = []

        class Flaky(ApprovalQueries):
            def closed_task_gates(self, request_ids: Sequence[str]) -> list[TaskGate]:
                if not failures:
                    failures.append(list(request_ids))
                    raise ConnectionError("store unreachable")
                return super().closed_task_gates(request_ids)

        manager = reading_with(Flaky(store=pg_store))
        # Opened before the closer listens: the decision is the one transition it hears, and
        # reading it fails the first time.
        approval = manager.create(spec())
        end = Recorder()
        closer = closer_of(end, over=manager)
        _listening(closer)
        manager.approve(approval.id, user=ALICE)
        assert end.wait_for(1) == [(approval.id, "approved")]
        assert failures == [[approval.id]]
        assert closer.ended == 1

    def test_transitions_that_close_no_tasks_gate_are_never_read_in_full(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        reading = CountingReads(store=pg_store)
        manager, reads = reading_with(reading), reading.reads
        end = Recorder()
        closer = closer_of(end, over=manager)
        _listening(closer)
        # Opened and still waiting, opened over the API and decided: each NOTIFYs.
        manager.create(spec(required_approvals=2))
        over_api = [manager.create(spec(), origin="api") for _ in range(20)]
        for approval in over_api:
            manager.approve(approval.id, user=ALICE)
        gate = manager.create(spec())
        manager.reject(gate.id, user=ALICE, reason="no")
        # The task's gate was decided last: once it is ended, every earlier NOTIFY was handled.
        assert end.wait_for(1) == [(gate.id, "rejected")]
        assert reads == [gate.id], "only the closed task gate is read in full"

    def test_an_opening_notify_read_after_the_decision_ends_the_gate_once(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        # On a busy machine the closer may read a request's opening NOTIFY only after it has
        # closed: it ends the gate then, and the closing NOTIFY that follows asks nothing more.
        reading, release = threading.Event(), threading.Event()

        class Late(ApprovalQueries):
            def closed_task_gates(self, request_ids: Sequence[str]) -> list[TaskGate]:
                if not reading.is_set():
                    reading.set()
                    release.wait(20)
                return super().closed_task_gates(request_ids)

        manager = reading_with(Late(store=pg_store))
        end = Recorder()
        closer = closer_of(end, over=manager)
        try:
            _listening(closer)
            approval = manager.create(spec())
            assert reading.wait(20), "the closer reads the opening's NOTIFY"
            manager.approve(approval.id, user=ALICE)
            deadline = time.monotonic() + 20
            while closer._ids.qsize() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # the closing's NOTIFY is heard while the opening's is being read
            release.set()
            assert end.wait_for(1) == [(approval.id, "approved")]
            time.sleep(0.5)
            assert end.calls == [(approval.id, "approved")]
            assert closer.ended == 1
        finally:
            release.set()

    def test_one_closer_of_a_store_works_and_another_takes_over_when_it_stops(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser]
    ) -> None:
        # As in an api-server with two worker processes: both start a closer with the same key.
        key = uuid.uuid4().int % 2**62  # this test's own: no other closer of the store shares it
        ends = [Recorder(), Recorder()]
        closers = [closer_of(end, leader_key=key, follow_every=0.05) for end in ends]
        deadline = time.monotonic() + 20
        while not any(c.listening.is_set() for c in closers) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # many tries of the other one to take the lock
        working = [i for i, c in enumerate(closers) if c.listening.is_set()]
        assert len(working) == 1, "exactly one of them listens"
        leader, follower = working[0], 1 - working[0]

        first = pg_manager.create(spec())
        pg_manager.approve(first.id, user=ALICE)
        assert ends[leader].wait_for(1) == [(first.id, "approved")]
        time.sleep(0.3)
        assert ends[follower].calls == [], "the other one asks nothing of Airflow"

        closers[leader].stop()  # its LISTEN connection ends, and the lock with it
        _listening(closers[follower])
        second = pg_manager.create(spec())
        pg_manager.reject(second.id, user=ALICE, reason="no")
        assert ends[follower].wait_for(1) == [(second.id, "rejected")]
        assert ends[leader].calls == [(first.id, "approved")]


@pytest.mark.postgres
class TestOneEnd:
    """The closer ends a gate only under the claim the gate's trigger takes too (airflow_hitl.gate_ends)."""

    def test_the_closer_ends_a_gate_under_its_own_claim(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser]
    ) -> None:
        end = Recorder(claims=True)
        closer = closer_of(end)
        _listening(closer)
        approval = pg_manager.create(spec())
        pg_manager.reject(approval.id, user=ALICE, reason="no")
        assert end.wait_for(1) == [(approval.id, "rejected")]
        [claim] = end.claims
        assert (claim.request_id, claim.by) == (approval.id, closer.claimant)
        assert closer.claimant.startswith("api-server@")
        assert pg_manager.gate_ends.gate_ended_by(approval.id) == closer.claimant
        assert closer.ended == 1

    def test_a_gate_whose_trigger_claimed_the_end_is_left_to_it_at_once(
        self, pg_manager: ApprovalManager, caplog: pytest.LogCaptureFixture
    ) -> None:
        approval = pg_manager.create(spec())
        pg_manager.reject(approval.id, user=ALICE, reason="no")
        assert pg_manager.gate_ends.claim_gate_end(approval.id, by="trigger@triggerer-1:42:abc")
        end = Recorder(claims=True)
        closer = GateCloser(manager_factory=lambda: pg_manager, look=each(lambda gate: DEFERRED), end=end)
        closer.submit(approval.id)
        with caplog.at_level(logging.INFO, logger="airflow_hitl.api.gate_closer"):
            closer.start()
            try:
                assert end.wait_for(1) == [(approval.id, "rejected")]
                time.sleep(0.3)
            finally:
                closer.stop()
        assert end.calls == [(approval.id, "rejected")], "settled: not tried again"
        assert closer.ended == 0
        assert pg_manager.gate_ends.gate_ended_by(approval.id) == "trigger@triggerer-1:42:abc"
        assert f"left the task of request {approval.id} to its trigger, which claimed ending it first" in caplog.text

    def test_closers_of_two_api_servers_racing_on_a_burst_end_each_gate_once(
        self, pg_manager: ApprovalManager, closer_of: Callable[..., GateCloser]
    ) -> None:
        # Without a leader key both work: each hears every decision and goes for every gate.
        ends = [Recorder(claims=True), Recorder(claims=True)]
        closers = [closer_of(end) for end in ends]
        for closer in closers:
            _listening(closer)
        gates = [pg_manager.create(spec()) for _ in range(30)]
        for gate in gates:
            pg_manager.reject(gate.id, user=ALICE, reason="burst")
        deadline = time.monotonic() + 30
        while sum(c.ended for c in closers) < len(gates) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert sum(c.ended for c in closers) == len(gates)
        ended_by = {gate.id: pg_manager.gate_ends.gate_ended_by(gate.id) for gate in gates}
        assert set(ended_by.values()) <= {c.claimant for c in closers}
        for closer in closers:
            assert closer.ended == sum(1 for by in ended_by.values() if by == closer.claimant)


@pytest.mark.postgres
class TestDeadlines:
    """What the deadline worker's transitions (airflow_hitl.api.deadlines) ask of the closer."""

    def test_a_timeout_ends_its_gate_and_an_escalation_leaves_it_waiting(
        self, pg_store: ApprovalStore, closer_of: Callable[..., GateCloser]
    ) -> None:
        clock = Clock()
        manager = ApprovalManager(store=pg_store, clock=clock)
        end = Recorder(claims=True)
        closer = closer_of(end, over=manager)
        _listening(closer)
        gate = manager.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=10),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=30))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=10)
        assert manager.apply_timeout(gate.id).escalated
        # The escalation's NOTIFY is heard and read: the gate still waits, so nothing ends its task.
        marker = manager.create(spec())
        manager.approve(marker.id, user=ALICE)
        assert end.wait_for(1) == [(marker.id, "approved")]
        clock.advance(minutes=30)
        assert manager.apply_timeout(gate.id).approval.state == "timeout"
        assert end.wait_for(2)[1] == (gate.id, "timeout")
        assert manager.gate_ends.gate_ended_by(gate.id) == closer.claimant


def sqlite_closer(manager: ApprovalManager, end: Recorder, **kw: Any) -> GateCloser:
    """A started closer of a SQLite store, polling it often, every gate's task deferred."""
    closer = GateCloser(manager_factory=lambda: manager, look=each(lambda gate: DEFERRED), end=end, **kw)
    closer.start()
    assert closer.listening.wait(20), "the closer polls a SQLite store"
    return closer


class TestOnSqlite:
    """No NOTIFY: the closer polls the store for closed gates whose task nobody has ended."""

    def test_a_decision_ends_its_gate_once(self, sqlite_manager: ApprovalManager) -> None:
        end = Recorder(claims=True)
        closer = sqlite_closer(sqlite_manager, end, poll_interval=0.05)
        try:
            waiting = sqlite_manager.create(spec())
            approval = sqlite_manager.create(spec())
            sqlite_manager.approve(approval.id, user=ALICE)
            assert end.wait_for(1) == [(approval.id, "approved")]
            rejected = sqlite_manager.create(spec())
            sqlite_manager.reject(rejected.id, user=ALICE, reason="no")
            assert end.wait_for(2)[1] == (rejected.id, "rejected")
            time.sleep(0.3)  # many polls
        finally:
            closer.stop()
        assert end.calls == [(approval.id, "approved"), (rejected.id, "rejected")], "each once; the waiting one never"
        assert closer.ended == 2
        assert sqlite_manager.gate_ends.gate_ended_by(approval.id) == closer.claimant
        assert sqlite_manager.queries.get(waiting.id).state == "pending"

    def test_a_timed_out_gate_is_ended_and_an_escalated_one_is_not(self, tmp_path: Any) -> None:
        store = ApprovalStore(url=f"sqlite:///{tmp_path / 'hitl.db'}")
        migrate(store)
        clock = Clock()
        manager = ApprovalManager(store=store, clock=clock)
        end = Recorder(claims=True)
        closer = sqlite_closer(manager, end, poll_interval=0.05)
        try:
            plain = manager.create(spec(timeout=dt.timedelta(minutes=1), timeout_action="approve"))
            climbing = manager.create(
                spec(
                    timeout=dt.timedelta(minutes=1),
                    timeout_action="escalate",
                    escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=1))],
                    escalation_final_action="reject",
                )
            )
            clock.advance(minutes=1)
            assert manager.apply_timeout(climbing.id).escalated
            assert manager.apply_timeout(plain.id).approval.state == "timeout"
            assert end.wait_for(1) == [(plain.id, "timeout")]
            time.sleep(0.3)  # many polls: the escalated gate waits on
            assert end.calls == [(plain.id, "timeout")]
        finally:
            closer.stop()
            store.dispose()

    def test_a_gate_whose_trigger_claimed_the_end_is_never_polled(self, sqlite_manager: ApprovalManager) -> None:
        approval = sqlite_manager.create(spec())
        sqlite_manager.reject(approval.id, user=ALICE, reason="no")
        assert sqlite_manager.gate_ends.claim_gate_end(approval.id, by="trigger@triggerer-1:42:abc")
        end = Recorder(claims=True)
        closer = sqlite_closer(sqlite_manager, end, poll_interval=0.05)
        try:
            marker = sqlite_manager.create(spec())
            sqlite_manager.approve(marker.id, user=ALICE)
            assert end.wait_for(1) == [(marker.id, "approved")]
        finally:
            closer.stop()
        assert end.calls == [(marker.id, "approved")]


class TestUnendedTaskGates:
    """What a SQLite store's closer polls for (on either store)."""

    def test_the_recent_unclaimed_closed_gates_of_tasks(self, mgr: ApprovalManager, clock: Clock) -> None:
        old = mgr.create(spec())
        mgr.approve(old.id, user=ALICE)
        clock.advance(minutes=5)
        since = clock.now
        waiting = mgr.create(spec())
        over_api = mgr.create(spec(), origin="api")
        mgr.approve(over_api.id, user=ALICE)
        claimed = mgr.create(spec())
        mgr.approve(claimed.id, user=ALICE)
        assert mgr.gate_ends.claim_gate_end(claimed.id, by="trigger@t:1:x")
        first = mgr.create(spec())
        mgr.reject(first.id, user=ALICE, reason="no")
        clock.advance(seconds=1)
        second = mgr.create(spec())
        mgr.cancel(second.id, actor="ops", reason="withdrawn")
        assert unended_task_gates(mgr, since=since) == [first.id, second.id]
        assert unended_task_gates(mgr, since=since, limit=1) == [first.id]
        assert waiting.id not in unended_task_gates(mgr, since=since - dt.timedelta(hours=1))
        assert old.id in unended_task_gates(mgr, since=since - dt.timedelta(hours=1))


class TestEndGate:
    def test_a_waiting_request_or_one_opened_over_the_api_asks_nothing_of_airflow(
        self, manager: ApprovalManager
    ) -> None:
        # NOTHING before any metadata DB is touched: none exists in this process.
        waiting = manager.create(spec())
        assert end_gate(waiting, EndClaim(manager=manager, request_id=waiting.id, by="api-server@t")) == NOTHING
        opened = manager.create(spec(), actor="admin", source="api", origin="api")
        closed = manager.cancel(opened.id, actor="admin", reason="x")
        assert end_gate(closed, EndClaim(manager=manager, request_id=closed.id, by="api-server@t")) == NOTHING
        assert manager.gate_ends.gate_ended_by(closed.id) is None, "nothing to end: nothing claimed"

    @pytest.mark.parametrize(
        ("state", "try_number", "expected"),
        [
            ("deferred", 1, DEFERRED),
            ("queued", 1, NOT_YET),
            ("running", 1, NOT_YET),
            ("scheduled", 1, NOT_YET),
            ("success", 1, NOTHING),
            ("failed", 1, NOTHING),
            ("deferred", 2, NOTHING),  # a later try of the task waits on a gate of its own
            (None, 1, NOTHING),  # no such task instance
        ],
    )
    def test_gate_states_reads_each_task_instance_try(
        self, airflow_api: object, state: str | None, try_number: int, expected: str
    ) -> None:
        # Rows written straight into a real (SQLite) Airflow metadata DB: the columns the
        # look reads are Airflow's own, so a rename in a future Airflow fails here.
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import delete, insert

        runs, tis = DagRun.__table__, TaskInstance.__table__
        run_id = f"gate_state__{uuid.uuid4().hex[:8]}"
        with create_session() as session:
            session.execute(
                insert(runs).values(dag_id="gate_dag", run_id=run_id, run_type="manual", run_after=utcnow())
            )
            if state is not None:
                session.execute(
                    insert(tis).values(
                        id=uuid.uuid4(),
                        dag_id="gate_dag",
                        run_id=run_id,
                        task_id="gate",
                        map_index=-1,
                        try_number=try_number,
                        pool="default_pool",
                        pool_slots=1,
                        state=state,
                    )
                )
        try:
            gate = TaskGate(id="x", dag_id="gate_dag", run_id=run_id, task_id="gate", map_index=-1, try_number=1)
            # With a gate of another task instance (none exists) in the same look.
            other = TaskGate(id="y", dag_id="gate_dag", run_id=run_id, task_id="other", map_index=-1, try_number=1)
            assert gate_states([gate, other]) == {"x": expected, "y": NOTHING}
        finally:
            with create_session() as session:
                session.execute(delete(tis).where(tis.c.run_id == run_id))
                session.execute(delete(runs).where(runs.c.run_id == run_id))

    def test_the_classpath_is_the_triggers_own(self) -> None:
        assert TRIGGER_CLASSPATH == "airflow_hitl.triggers.approval.ApprovalTrigger"
        assert ApprovalTrigger(request_id="x").serialize()[0] == TRIGGER_CLASSPATH


@pytest.fixture
def deferred_on_trigger(airflow_api: object) -> Iterator[Callable[[Approval], None]]:
    """Write ``approval``'s task instance into a real (SQLite) Airflow metadata DB, deferred on its trigger."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert

    runs, tis = DagRun.__table__, TaskInstance.__table__
    written: list[tuple[str, str, int]] = []

    def write(approval: Approval) -> None:
        with create_session() as session:
            session.execute(
                insert(runs).values(
                    dag_id=approval.dag_id, run_id=approval.run_id, run_type="manual", run_after=utcnow()
                )
            )
            trigger = Trigger.from_object(ApprovalTrigger(request_id=approval.id, end_task=True))
            session.add(trigger)
            session.flush()
            session.execute(
                insert(tis).values(
                    id=uuid.uuid4(),
                    dag_id=approval.dag_id,
                    run_id=approval.run_id,
                    task_id=approval.task_id,
                    map_index=approval.map_index,
                    try_number=approval.try_number,
                    pool="default_pool",
                    pool_slots=1,
                    state="deferred",
                    trigger_id=trigger.id,
                )
            )
            written.append((approval.dag_id, str(approval.run_id), trigger.id))

    yield write
    with create_session() as session:
        for dag_id, run_id, trigger_id in written:
            session.execute(delete(tis).where(tis.c.dag_id == dag_id, tis.c.run_id == run_id))
            session.execute(delete(runs).where(runs.c.dag_id == dag_id, runs.c.run_id == run_id))
            session.execute(delete(Trigger.__table__).where(Trigger.__table__.c.id == trigger_id))


def task_instance_of(approval: Approval) -> tuple[str | None, int | None]:
    """(state, trigger_id) of the gate's task instance in Airflow's metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(TaskInstance.state, TaskInstance.trigger_id).where(
                TaskInstance.dag_id == approval.dag_id,
                TaskInstance.run_id == approval.run_id,
                TaskInstance.task_id == approval.task_id,
            )
        ).one()
    return (str(row.state) if row.state is not None else None, row.trigger_id)


class TestEndGateInAirflow:
    """:func:`end_gate` on task instances of a real Airflow metadata DB, with the store's real claim."""

    def test_a_task_deferred_on_its_trigger_is_ended_once_under_the_claim(
        self, manager: ApprovalManager, deferred_on_trigger: Callable[[Approval], None]
    ) -> None:
        # Skipped on rejection: Airflow ends it without a callback to a DAG file this DB lacks.
        approval = manager.create(spec(on_reject="skip"))
        deferred_on_trigger(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        first = EndClaim(manager=manager, request_id=approval.id, by="api-server@one")
        assert end_gate(rejected, first) == ENDED
        assert task_instance_of(approval) == ("skipped", None)
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@one"
        # Another closer (or the same one again, from a late NOTIFY) finds nothing left to end.
        second = EndClaim(manager=manager, request_id=approval.id, by="api-server@two")
        assert end_gate(rejected, second) == NOTHING
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@one"

    def test_a_task_whose_trigger_claimed_the_end_is_not_touched(
        self, manager: ApprovalManager, deferred_on_trigger: Callable[[Approval], None]
    ) -> None:
        approval = manager.create(spec(on_reject="skip"))
        deferred_on_trigger(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        before = task_instance_of(approval)
        assert manager.gate_ends.claim_gate_end(approval.id, by="trigger@triggerer:7:abc")
        claim = EndClaim(manager=manager, request_id=approval.id, by="api-server@one")
        assert end_gate(rejected, claim) == TAKEN
        assert task_instance_of(approval) == before
        assert before[0] == "deferred"
        assert manager.gate_ends.gate_ended_by(approval.id) == "trigger@triggerer:7:abc"

    def test_an_end_that_fails_in_airflow_gives_the_claim_back_and_changes_nothing(
        self,
        manager: ApprovalManager,
        deferred_on_trigger: Callable[[Approval], None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import airflow.models.trigger

        approval = manager.create(spec(on_reject="skip"))
        deferred_on_trigger(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        claimed: list[str | None] = []

        def deadlocked(event: object, *, task_instance: object, session: object) -> None:
            claimed.append(manager.gate_ends.gate_ended_by(approval.id))
            raise RuntimeError("deadlock detected")

        monkeypatch.setattr(airflow.models.trigger, "handle_event_submit", deadlocked)
        claim = EndClaim(manager=manager, request_id=approval.id, by="api-server@one")
        with pytest.raises(RuntimeError, match="deadlock detected"):
            end_gate(rejected, claim)
        assert claimed == ["api-server@one"], "Airflow is handed the end only under the claim"
        assert manager.gate_ends.gate_ended_by(approval.id) is None, "given back: the trigger may end it"
        assert task_instance_of(approval)[0] == "deferred"
        monkeypatch.undo()
        # The trigger claims it now and ends the task; the closer, trying again, leaves it be.
        assert manager.gate_ends.claim_gate_end(approval.id, by="trigger@triggerer:7:abc")
        assert end_gate(rejected, claim) == TAKEN

    def test_an_end_slower_than_the_commit_bound_is_not_committed(
        self,
        manager: ApprovalManager,
        deferred_on_trigger: Callable[[Approval], None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Past the bound the trigger may take the claim over: the closer must not commit then.
        # (Airflow's end of a try with retries left pushes no XCom and leaves the commit to us.)
        import datetime as dt

        import airflow.models.trigger

        def to_retry(event: object, *, task_instance: Any, session: Any) -> None:
            task_instance.state = "up_for_retry"
            task_instance.trigger_id = None

        monkeypatch.setattr(airflow.models.trigger, "handle_event_submit", to_retry)
        monkeypatch.setattr("airflow_hitl.api.gate_closer.CLOSER_COMMIT_WITHIN", dt.timedelta(seconds=-1))
        approval = manager.create(spec())
        deferred_on_trigger(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        with pytest.raises(TimeoutError):
            end_gate(rejected, EndClaim(manager=manager, request_id=approval.id, by="api-server@one"))
        assert task_instance_of(approval)[0] == "deferred"
        assert manager.gate_ends.gate_ended_by(approval.id) is None

    def test_an_end_airflow_committed_before_failing_keeps_the_claim(
        self,
        manager: ApprovalManager,
        deferred_on_trigger: Callable[[Approval], None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Airflow commits the end itself when it pushes the XCom: an error after that must not
        # give the claim back, or the record would name a party that never ended the task.
        import airflow.models.trigger

        def committed_then_failed(event: object, *, task_instance: Any, session: Any) -> None:
            task_instance.state = "skipped"
            task_instance.trigger_id = None
            session.commit()
            raise RuntimeError("connection lost")

        monkeypatch.setattr(airflow.models.trigger, "handle_event_submit", committed_then_failed)
        approval = manager.create(spec(on_reject="skip"))
        deferred_on_trigger(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        with pytest.raises(RuntimeError, match="connection lost"):
            end_gate(rejected, EndClaim(manager=manager, request_id=approval.id, by="api-server@one"))
        assert task_instance_of(approval) == ("skipped", None)
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@one"

"""api/deadlines.py: the api-server's deadline worker, on real stores (SQLite and PostgreSQL).

Everything is real: the store, ``apply_timeout``'s row lock, PostgreSQL's NOTIFY and advisory
locks, and a TCP proxy that takes the store away. Tests that call :meth:`DeadlineWorker.run_due`
themselves move a hand clock (the manager's and the worker's); started workers run on the
real clock, with deadlines a second or two ahead, and are waited for, never slept for.
tests/e2e/test_triggerer_stopped_e2e.py runs the worker in a real api-server with every
triggerer stopped.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from airflow_hitl.api import deadlines
from airflow_hitl.api.deadlines import DeadlineWorker
from airflow_hitl.manager import ApprovalManager, TimeoutOutcome
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.records import Approval
from airflow_hitl.spec import utcnow
from tests.api.tcp_proxy import TcpProxy
from tests.e2e.harness import wait_until
from tests.helpers import Clock, spec

MINUTE = dt.timedelta(minutes=1)


def escalating(first: dt.timedelta, then: dt.timedelta, **kw: Any) -> Any:
    """A gate of bob's that escalates to carol after ``first``, then rejects after ``then``."""
    return spec(
        allowed_approvers=["bob"],
        timeout=first,
        timeout_action="escalate",
        escalation_targets=[EscalationLevel(approvers=("carol",), timeout=then)],
        escalation_final_action="reject",
        **kw,
    )


def audited(manager: ApprovalManager, request_id: str) -> list[str]:
    """The request's audit event types, in order."""
    return [event.event_type for event in manager.audit.events(request_id)]


def state_of(manager: ApprovalManager, request_id: str, state: str) -> Approval | None:
    """The request once it is in ``state`` (None before)."""
    found = manager.queries.get(request_id)
    return found if found.state == state else None


@pytest.fixture
def started() -> Iterator[Callable[..., DeadlineWorker]]:
    """Start workers; each is stopped at the end of the test, and its threads with it."""
    workers: list[DeadlineWorker] = []

    def start(manager: ApprovalManager, **kw: Any) -> DeadlineWorker:
        worker = DeadlineWorker(manager_factory=lambda: manager, **kw)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("hitl-deadlines"))


class TestRunDue:
    """One pass, as the worker makes each time it wakes, on the hand clock."""

    def test_a_due_timeout_is_applied_and_the_next_deadline_is_returned(
        self, mgr: ApprovalManager, clock: Clock
    ) -> None:
        worker = DeadlineWorker(manager_factory=lambda: mgr, clock=clock)
        soon = mgr.create(spec(timeout=MINUTE, timeout_action="reject"))
        later = mgr.create(spec(timeout=dt.timedelta(hours=1), timeout_action="approve"))
        mgr.create(spec())  # no deadline: never read
        assert worker.run_due(mgr) == soon.expires_at, "nothing due yet: sleep until the soonest"
        assert mgr.queries.get(soon.id).state == "pending"

        clock.advance(minutes=1)
        assert worker.run_due(mgr) == later.expires_at
        done = mgr.queries.get(soon.id)
        assert (done.state, done.decision, done.decision_source) == ("timeout", "rejected", "timeout")
        assert mgr.queries.get(later.id).state == "pending"
        assert (worker.timed_out, worker.escalated, list(worker.lateness)) == (1, 0, [0.0])

        clock.advance(hours=1)
        assert worker.run_due(mgr) is None, "no deadline left"
        assert (mgr.queries.get(later.id).state, mgr.queries.get(later.id).decision) == ("timeout", "approved")
        assert audited(mgr, soon.id) == ["requested", "timeout"]

    def test_an_escalation_opens_the_next_level_and_its_deadline_is_the_next(
        self, mgr: ApprovalManager, clock: Clock
    ) -> None:
        worker = DeadlineWorker(manager_factory=lambda: mgr, clock=clock)
        gate = mgr.create(escalating(dt.timedelta(minutes=10), dt.timedelta(minutes=30)))
        clock.advance(minutes=10)
        assert worker.run_due(mgr) == clock.now + dt.timedelta(minutes=30)
        escalated = mgr.queries.get(gate.id)
        assert (escalated.state, escalated.escalation_level) == ("escalated", 1)
        assert escalated.allowed_approvers == ("bob", "carol")
        # Still waiting: the gate closer finds no closed gate to end.
        assert mgr.queries.closed_task_gates([gate.id]) == []
        assert (worker.escalated, worker.timed_out) == (1, 0)

        clock.advance(minutes=30)
        assert worker.run_due(mgr) is None
        final = mgr.queries.get(gate.id)
        assert (final.state, final.decision) == ("timeout", "rejected")
        # Closed by the timeout: the gate closer ends its task.
        assert [g.id for g in mgr.queries.closed_task_gates([gate.id])] == [gate.id]
        assert audited(mgr, gate.id) == ["requested", "escalated", "timeout"]

    def test_each_applied_deadline_is_handed_to_on_applied_whose_errors_change_nothing(
        self, mgr: ApprovalManager, clock: Clock
    ) -> None:
        seen: list[tuple[str, str, bool]] = []

        def on_applied(outcome: TimeoutOutcome) -> None:
            seen.append((outcome.approval.id, outcome.approval.state, outcome.escalated))
            raise RuntimeError("a listener's own failure")

        worker = DeadlineWorker(manager_factory=lambda: mgr, clock=clock, on_applied=on_applied)
        plain = mgr.create(spec(timeout=MINUTE, timeout_action="approve"))
        climbing = mgr.create(escalating(MINUTE, dt.timedelta(hours=1)))
        clock.advance(minutes=1)
        assert worker.run_due(mgr) == clock.now + dt.timedelta(hours=1)
        assert sorted(seen) == sorted([(plain.id, "timeout", False), (climbing.id, "escalated", True)])
        assert (worker.timed_out, worker.escalated) == (1, 1)

    def test_more_due_than_one_read_holds_are_all_applied(
        self, mgr: ApprovalManager, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(deadlines, "BATCH", 4)
        gates = [mgr.create(spec(timeout=MINUTE, timeout_action="approve")) for _ in range(11)]
        later = mgr.create(spec(timeout=dt.timedelta(hours=2), timeout_action="approve"))
        worker = DeadlineWorker(manager_factory=lambda: mgr, clock=clock)
        clock.advance(minutes=5)
        assert worker.run_due(mgr) == later.expires_at
        assert {mgr.queries.get(g.id).state for g in gates} == {"timeout"}
        assert worker.timed_out == 11

    def test_a_pass_that_only_times_out_reads_the_deadlines_once(
        self, mgr: ApprovalManager, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # What it read still says what comes next when nothing escalated and the read was not
        # full: at 20,000 waiting gates reading again after each pass was half the thread's time.
        reads: list[int] = []
        read = mgr.queries.deadlines

        def counted(*, limit: int) -> Any:
            found = read(limit=limit)
            reads.append(len(found))
            return found

        monkeypatch.setattr(mgr.queries, "deadlines", counted)
        gates = [mgr.create(spec(timeout=MINUTE, timeout_action="reject")) for _ in range(5)]
        later = mgr.create(spec(timeout=dt.timedelta(hours=1), timeout_action="approve"))
        worker = DeadlineWorker(manager_factory=lambda: mgr, clock=clock)
        clock.advance(minutes=1)
        assert worker.run_due(mgr) == later.expires_at
        assert {mgr.queries.get(g.id).state for g in gates} == {"timeout"}
        assert reads == [6], "one read: five due and the one ahead"

    def test_a_request_that_cannot_be_timed_out_never_holds_up_the_others(
        self, store: ApprovalStore, clock: Clock
    ) -> None:
        broken: set[str] = set()

        class Failing(ApprovalManager):
            def apply_timeout(self, request_id: str) -> TimeoutOutcome:
                if request_id in broken:
                    raise RuntimeError("escalation levels unreadable")
                return super().apply_timeout(request_id)

        manager = Failing(store=store, clock=clock)
        first = manager.create(spec(timeout=MINUTE, timeout_action="reject"))
        second = manager.create(spec(timeout=dt.timedelta(minutes=2), timeout_action="reject"))
        broken.add(first.id)
        worker = DeadlineWorker(manager_factory=lambda: manager, clock=clock)
        clock.advance(minutes=3)
        retry = worker.run_due(manager)
        assert manager.queries.get(second.id).state == "timeout", "the next one was applied"
        assert manager.queries.get(first.id).state == "pending"
        assert retry is not None and clock.now < retry <= clock.now + dt.timedelta(minutes=2), "tried again later"
        # Decided meanwhile: no longer due, so no longer held back, and nothing is left to wake for.
        manager.cancel(first.id, actor="ops", reason="stuck")
        assert worker.run_due(manager) is None

    def test_two_workers_at_the_same_instant_apply_each_timeout_once(self, mgr: ApprovalManager, clock: Clock) -> None:
        # As two api-servers on SQLite, or a worker and a gate's trigger: the row lock decides.
        gates = [mgr.create(spec(timeout=MINUTE, timeout_action="reject")) for _ in range(20)]
        gates.append(mgr.create(escalating(MINUTE, dt.timedelta(hours=1))))
        workers = [DeadlineWorker(manager_factory=lambda: mgr, clock=clock) for _ in range(2)]
        clock.advance(minutes=2)
        start = threading.Barrier(len(workers))
        errors: list[BaseException] = []

        def run(worker: DeadlineWorker) -> None:
            try:
                start.wait(timeout=30)
                worker.run_due(mgr)
            except BaseException as err:  # reported below: a thread's failure must fail the test
                errors.append(err)

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert sum(w.timed_out for w in workers) == 20
        assert sum(w.escalated for w in workers) == 1, "escalated once, not twice in a row"
        for gate in gates[:-1]:
            assert audited(mgr, gate.id) == ["requested", "timeout"]
        assert audited(mgr, gates[-1].id) == ["requested", "escalated"]
        assert mgr.queries.get(gates[-1].id).escalation_level == 1
        assert mgr.audit.verify_audit_chain().ok


class TestStarted:
    """Running workers on the real clock."""

    def test_two_running_workers_apply_each_deadline_once_as_it_passes(
        self, manager: ApprovalManager, started: Callable[..., DeadlineWorker]
    ) -> None:
        # Without a leader (SQLite's way, or two api-servers of PostgreSQL without the lock).
        workers = [started(manager, poll_interval=0.1), started(manager, poll_interval=0.1)]
        gates = [
            manager.create(spec(timeout=dt.timedelta(seconds=1 + i / 4), timeout_action="approve")) for i in range(6)
        ]
        gates.append(manager.create(escalating(dt.timedelta(seconds=1), dt.timedelta(seconds=1))))
        for gate in gates[:-1]:
            wait_until(lambda g=gate: state_of(manager, g.id, "timeout"), timeout=60, interval=0.05, what="a timeout")
        final = wait_until(
            lambda: state_of(manager, gates[-1].id, "timeout"),
            timeout=60,
            interval=0.05,
            what="escalation, then timeout",
        )
        assert (final.escalation_level, final.decision) == (1, "rejected")
        assert sum(w.timed_out for w in workers) == len(gates)
        assert sum(w.escalated for w in workers) == 1
        for gate in gates[:-1]:
            assert audited(manager, gate.id) == ["requested", "timeout"]
        assert audited(manager, gates[-1].id) == ["requested", "escalated", "timeout"]
        late = sorted(x for w in workers for x in w.lateness)
        print(f"\nlateness of {len(late)} deadlines: max {late[-1] * 1000:.0f} ms", file=sys.stderr)

    def test_the_option_turns_the_worker_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_hitl.settings import HitlSettings

        monkeypatch.setenv("AIRFLOW__HITL__DEADLINE_WORKER", "False")
        assert deadlines.ensure_deadline_worker_started(HitlSettings.load()) is None


@pytest.fixture
def proxy(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session's PostgreSQL server, relaying."""
    # Short bounds, so an outage fails a call within seconds.
    monkeypatch.setenv("AIRFLOW__HITL__STORE_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_POOL_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_STATEMENT_TIMEOUT", "5")
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    tcp = TcpProxy(target=(target.hostname or "127.0.0.1", target.port or 5432))
    tcp.start()
    yield tcp
    tcp.stop()


@pytest.mark.postgres
class TestOnPostgres:
    def test_the_stores_notify_wakes_a_sleeping_worker(
        self, pg_store: ApprovalStore, started: Callable[..., DeadlineWorker]
    ) -> None:
        manager = ApprovalManager(store=pg_store)
        # Nothing to wait for, and an hour between looks: only the gate's NOTIFY can wake it in time.
        worker = started(manager, recheck=3600)
        assert worker.working.wait(30), "the worker listens on a PostgreSQL store"
        gate = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action="reject"))
        done = wait_until(lambda: state_of(manager, gate.id, "timeout"), timeout=60, interval=0.05, what="the timeout")
        assert done.decision == "rejected" and worker.timed_out == 1
        # An escalation's NOTIFY wakes it too, for the level's own deadline.
        climbing = manager.create(escalating(dt.timedelta(seconds=1), dt.timedelta(seconds=1)))
        wait_until(lambda: state_of(manager, climbing.id, "timeout"), timeout=60, interval=0.05, what="both deadlines")
        assert (worker.escalated, worker.timed_out) == (1, 2)

    def test_one_worker_leads_and_another_takes_over_when_it_stops(
        self, pg_store: ApprovalStore, started: Callable[..., DeadlineWorker]
    ) -> None:
        manager = ApprovalManager(store=pg_store)
        key = uuid.uuid4().int % 2**62  # this test's own lock, not a running api-server's
        workers = [started(manager, recheck=3600, leader_key=key, follow_every=0.05) for _ in range(2)]
        wait_until(lambda: any(w.working.is_set() for w in workers), timeout=30, what="a leader")
        time.sleep(0.3)  # many tries of the other one to take the lock
        working = [i for i, w in enumerate(workers) if w.working.is_set()]
        assert len(working) == 1, "exactly one of them works"
        leader, follower = workers[working[0]], workers[1 - working[0]]

        first = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action="reject"))
        wait_until(lambda: state_of(manager, first.id, "timeout"), timeout=60, interval=0.05, what="the leader's")
        assert (leader.timed_out, follower.timed_out) == (1, 0)

        leader.stop()  # its LISTEN connection ends, and the lock with it
        assert follower.working.wait(30), "the other one takes over"
        second = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action="approve"))
        wait_until(lambda: state_of(manager, second.id, "timeout"), timeout=60, interval=0.05, what="the follower's")
        assert (leader.timed_out, follower.timed_out) == (1, 1)

    def test_a_store_outage_delays_a_deadline_and_never_loses_it(
        self, pg_store: ApprovalStore, pg_url: str, proxy: TcpProxy, started: Callable[..., DeadlineWorker]
    ) -> None:
        direct = ApprovalManager(store=pg_store)
        proxied = ApprovalStore(url=make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False))
        try:
            worker = started(ApprovalManager(store=proxied), recheck=3600)
            assert worker.working.wait(30)
            gate = direct.create(spec(timeout=dt.timedelta(seconds=2), timeout_action="reject"))
            assert gate.expires_at is not None
            proxy.stop()
            # The deadline passes while the store cannot be reached from the worker.
            wait_until(lambda: utcnow() > gate.expires_at + dt.timedelta(seconds=1), timeout=30, interval=0.1)
            assert direct.queries.get(gate.id).state == "pending", "nothing decided without the store"
            assert worker.timed_out == 0
            proxy.start()
            done = wait_until(
                lambda: state_of(direct, gate.id, "timeout"),
                timeout=90,
                interval=0.1,
                what="the timeout after the outage",
            )
            assert done.decision == "rejected"
            assert worker.timed_out == 1
            assert audited(direct, gate.id) == ["requested", "timeout"]
        finally:
            proxied.dispose()

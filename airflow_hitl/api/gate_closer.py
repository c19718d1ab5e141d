"""End a decided gate's task from the api-server, without waiting for the triggerer.

A gate's trigger ends its task with Airflow's task end events (see
:mod:`airflow_hitl.triggers.approval`). That is prompt once the trigger runs, but a decision
made the instant a gate opens lands before the triggerer has picked the new trigger up:
Airflow's triggerer looks for new triggers about once a second, in two loops, so such a
decision waited one to three seconds for the trigger to start, see it and report it.

The api-server has Airflow's metadata DB, and Airflow's own ``handle_event_submit`` (the
function the triggerer calls with a trigger's event, documented to run in the API processes
too) ends a deferred task instance in one transaction. :class:`GateCloser` listens to the
store's NOTIFY (one per transition, PostgreSQL) and, for a request that has just closed, hands
exactly the event its trigger would yield to that function for the task instance deferred on
that trigger: the task ends ``success`` / ``failed`` / ``skipped`` with the same XCom, no
worker starts, and the task never passes through ``queued`` (so apache/airflow#72716 stays
closed). The triggerer, finding the trigger unused, cancels it later; the trigger's
``on_kill`` sees the request closed and does nothing.

Each batch of NOTIFYs (those heard within 20 ms of the first) costs one light query of the
store (which of them closed a task's gate) and one unlocked look at their task instances
(:func:`gate_states`), repeated every 50 ms for the gates whose tasks are still deferring,
all of them in one query; only a task still deferred gets its request read in full and ended.

One closer per store works at a time: every api-server worker process starts one, and the one
holding an advisory lock on its LISTEN connection listens (:func:`listen_for_transitions`);
the others take over within a second of its process ending. A closer that is stuck leaves the
gates to their triggers, which end them as they did before the closer existed.

A SQLite store has no NOTIFY: there every api-server process's closer looks every ``[hitl]
gate_closer_poll_interval`` seconds for the closed task gates whose end nobody has claimed yet
(``task_ended_by`` still empty, decided within ``[hitl] gate_closer_wait_seconds``:
:func:`unended_task_gates`, one query of a few rows) and hands them to the same work as heard
NOTIFYs. A decision, or a timeout applied by the deadline worker
(:mod:`airflow_hitl.api.deadlines`), so ends its gate within a second with every triggerer
stopped on SQLite too; several processes going for one gate meet at the claim.

Safe with any number of api-servers and triggerers: the task instance row is locked
(``FOR UPDATE SKIP LOCKED``) and re-checked (still deferred, on our trigger for this request
and try), and only then is the end claimed in the store (:mod:`airflow_hitl.gate_ends`), the
claim the gate's trigger takes too before it yields its own end: exactly one of them ends the
task. (The row lock alone is not enough: Airflow's triggerer reads the task instance without
one before it writes its trigger's end, so two ends of one try met in Airflow's DB, and the
triggerer exited on the deadlock or duplicate ``task_instance_history`` key.) The closer holds
the claim only inside its transaction, whose statements are bounded (lock and statement
timeouts on PostgreSQL): it commits within :data:`~airflow_hitl.gate_ends.CLOSER_COMMIT_WITHIN`
of taking it or not at all, and gives it back when the end did not commit. A decision
that arrives while the worker is still deferring is retried until the task is deferred, and
one that meets an error (a deadlock, a dropped connection, a full pool, in either database) is
retried each second, both for ``[hitl] gate_closer_wait_seconds``, after which the trigger's
own event ends it as before.

On Airflow 3.3+ a gate waits parked in ``awaiting_input`` instead (:mod:`airflow_hitl.seam.parking`):
no trigger, so the closer is what ends it. A parked task instance is ended exactly as a deferred
one (locked, re-checked: same try, parked to resume in ``execute_complete`` with this request's
id; the same claim and end event), and a gate deferred before an upgrade still ends on its
trigger's shape. A decision that lands while the task still runs (between opening the request
and parking) is retried until it has parked: a running task is never ended. What a trigger did
besides is the working closer's
pass over the parked gates (:mod:`airflow_hitl.api.parked`), run when a look every 30 s at two
one-row fingerprints finds something changed, and every 5 minutes anyway (every 30 while every
waiting gate is parked): closed gates whose task is still parked, however old (decided while no
api-server ran, or given up on here), are handed back to the closer; requests whose parked task
was cleared or marked are cancelled; backstop deadlines follow escalations.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from airflow_hitl.api import parked
from airflow_hitl.exceptions import ApprovalNotFound
from airflow_hitl.gate_ends import CLOSER_COMMIT_WITHIN, TAKE_OVER_AFTER, claimant
from airflow_hitl.manager import ApprovalManager, utcnow
from airflow_hitl.models.tables import ApprovalRequestRow
from airflow_hitl.outbox import listen_for_transitions
from airflow_hitl.queries import Kept
from airflow_hitl.records import Approval, TaskGate
from airflow_hitl.retry import Backoff
from airflow_hitl.seam import task_instances
from airflow_hitl.settings import HitlSettings
from airflow_hitl.triggers.approval import ApprovalTrigger, end_event
from airflow_hitl.version_compat import HAS_AWAITING_INPUT
from airflow_hitl.vocabulary import TERMINAL_STATES, Origin

log = logging.getLogger(__name__)

#: The trigger's class path as Airflow stores it (``Trigger.classpath``).
TRIGGER_CLASSPATH = ApprovalTrigger(request_id="-").serialize()[0]

#: The advisory lock whose holder is the store's one working closer (any constant works).
LEADER_KEY = 0x41F1_C105

#: Transitions read from the store in one query at most.
_BATCH = 500
#: Seconds a first NOTIFY waits for others: under a stream of decisions (100 a second) a few
#: share one read of the store and one look at Airflow's DB instead of each paying for both.
#: A gate ends 20 ms later at most, against the second or more its trigger would take.
_GATHER = 0.02

#: Settled requests remembered (a closed request stays closed; only late NOTIFYs ask again).
_SETTLED = 10_000

#: What :func:`end_gate` found: ended it, nothing to do (ever), or not deferred yet (try again).
ENDED, NOTHING, NOT_YET = "ended", "nothing", "not_yet"
#: What :func:`end_gate` found when another transaction holds the task instance's row (try again).
LOCKED = "locked"
#: What :func:`end_gate` found when another party holds the claim to end the task (its trigger
#: ends it, or another closer did): settled, like :data:`NOTHING`.
TAKEN = "taken"
#: A look, read or end that raised (tried again after :data:`_AFTER_FAILURE` or more, jittered).
_FAILED = "failed"
#: What keeps a gate waiting -> why, for the log line of one left to its trigger.
_WHY = {
    NOT_YET: "its task never deferred",
    LOCKED: "another Airflow process kept its task instance locked",
    _FAILED: "Airflow's DB or the store kept failing",
}
#: What :func:`gate_states` found when the task waits (deferred, or parked in ``awaiting_input``),
#: so :func:`end_gate` may end it.
DEFERRED = "deferred"

#: Seconds before a task still deferring is looked at again, and after a failure.
_LOOK_AGAIN, _AFTER_FAILURE = 0.05, 1.0
#: Gates looked up in one query at most.
_LOOK_BATCH = 100
#: Gates ended at once. An end spends most of its time waiting on the two databases (three
#: commits, each a WAL flush), not on Python: 1,000 gates expiring within a minute among 20,000
#: waiting ones were ended 4 to 10 s late one at a time on 2 cores, the databases idle between
#: statements. Each end holds one connection of Airflow's pool and one of the store's.
_ENDERS = 4
#: Milliseconds one statement of an end may wait on a lock, or run, on PostgreSQL.
_LOCK_TIMEOUT_MS, _STATEMENT_TIMEOUT_MS = 5_000, 10_000


def unended_task_gates(manager: ApprovalManager, *, since: dt.datetime, limit: int = _BATCH) -> list[str]:
    """Ids of the closed task gates decided at or after ``since`` whose end nobody has claimed yet, oldest first.

    What the closer of a SQLite store polls for, instead of hearing NOTIFYs: the decided index
    (``decided_at``) narrows it to the last moments' decisions, and a gate its trigger or a
    closer has ended (``task_ended_by`` set) is never returned again.
    """
    table = ApprovalRequestRow.__table__.c
    statement = (
        select(table.id)
        .where(
            table.decided_at >= since,
            table.task_ended_by.is_(None),
            table.origin == Origin.TASK,
            table.state.in_(sorted(TERMINAL_STATES)),
            table.run_id.is_not(None),
            table.try_number.is_not(None),
        )
        .order_by(table.decided_at, table.id)
        .limit(limit)
    )
    with manager.store.read_engine.connect() as conn:
        found = [str(request_id) for request_id in conn.scalars(statement)]
        conn.rollback()
    return found


def gate_states(gates: Sequence[TaskGate]) -> dict[str, str]:
    """By gate id, whether each task try waits (:data:`DEFERRED`, or parked), is about to (:data:`NOT_YET`) or neither.

    Unlocked reads of two columns, one query per :data:`_LOOK_BATCH` gates, before anything
    heavier: a gate whose task the trigger has already ended, or one with no task instance,
    costs no read of the request and no lock, and a hundred gates whose tasks are still
    deferring cost one query each time they are looked at, not a hundred.
    :func:`end_gate` checks again under the task instance's lock.
    """
    keys = [_key(gate) for gate in gates]
    found = task_instances.task_tries(keys, batch=_LOOK_BATCH)
    states = {}
    for gate, key in zip(gates, keys, strict=True):
        row = found.get(key)
        states[gate.id] = (
            NOTHING if row is None else _deferral(state=row.state, try_number=row.try_number, asked=gate.try_number)
        )
    return states


def _key(gate: TaskGate | Approval) -> task_instances.TaskKey:
    return task_instances.TaskKey(
        dag_id=gate.dag_id, run_id=str(gate.run_id), task_id=str(gate.task_id), map_index=gate.map_index
    )


def _deferral(*, state: str | None, try_number: int, asked: int | None) -> str:
    # The one reading of a task instance try, for the light look and again under the lock.
    from airflow.sdk import TaskInstanceState

    if try_number != asked:
        return NOTHING
    if state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED):
        return NOT_YET  # still deferring or parking (or resumed on a worker, which finishes it): look again
    return DEFERRED if state in (TaskInstanceState.DEFERRED, task_instances.AWAITING_INPUT) else NOTHING


@dataclass(frozen=True, kw_only=True)
class EndClaim:
    """The closer's claim to end one gate's task (:mod:`airflow_hitl.gate_ends`), taken at the last moment."""

    manager: ApprovalManager
    request_id: str
    #: This closer's name in the claim (:func:`~airflow_hitl.gate_ends.claimant`).
    by: str

    def take(self, *, take_over_after: dt.timedelta | None = None) -> bool:
        """Claim the end; True when this closer holds it (it may end the task), False when another party does.

        ``take_over_after``: take over a claim held longer than that (a parked gate has no
        trigger to take over from a closer whose process died before ending it).
        """
        return self.manager.gate_ends.claim_gate_end(self.request_id, by=self.by, take_over_after=take_over_after)

    def release(self) -> None:
        """Give the claim back: the end was not committed. Failing that, the trigger takes it over later."""
        try:
            self.manager.gate_ends.release_gate_end(self.request_id, by=self.by)
        except Exception:
            log.warning("could not give back the claim to end the task of request %s", self.request_id, exc_info=True)


def end_gate(approval: Approval, claim: EndClaim) -> str:
    """End the task instance of ``approval``'s gate in Airflow's metadata DB if it waits on this request.

    It waits deferred on the gate's trigger, or parked in ``awaiting_input`` with this request's
    id (Airflow 3.3+). Returns :data:`ENDED`, :data:`NOTHING` (not a task's gate, still open,
    already ended, or waiting on something else), :data:`TAKEN` (another party claimed the end:
    the gate's trigger ends it), :data:`NOT_YET` (the task has not deferred or parked yet) or
    :data:`LOCKED` (another transaction holds the task instance's row). ``claim`` is taken only
    once the task instance is locked and found waiting on this request, and given back when
    the end does not commit.
    """
    if approval.is_waiting or approval.origin != "task" or not approval.run_id or approval.try_number is None:
        return NOTHING
    with task_instances.hold_task_instance(_key(approval)) as held:
        if not isinstance(held, task_instances.HeldTaskInstance):
            # Locked by the scheduler, the triggerer or another api-server right now: look again.
            # (Airflow's triggerer locks the task instance rows of the triggers it is assigning
            # itself, until it commits: a triggerer that hangs there holds the gate's row.)
            return LOCKED if held == task_instances.LOCKED_ELSEWHERE else NOTHING
        found = _deferral(state=held.state, try_number=held.try_number, asked=approval.try_number)
        if found != DEFERRED:
            return found
        waits = _waits_on(held, approval)
        if waits is None:
            # Deferred on something else (an older trigger resuming on a worker): leave it.
            return NOTHING
        follow, trigger_id = waits
        claiming = time.monotonic()
        # A parked gate has no trigger to take over from a closer that died holding the claim.
        if not claim.take(take_over_after=TAKE_OVER_AFTER if trigger_id is None else None):
            return TAKEN
        try:
            # On PostgreSQL no statement of the end waits on a lock or runs for long, so the end
            # commits (or fails, and gives the claim back) well within CLOSER_COMMIT_WITHIN.
            held.bound_statements(lock_timeout_ms=_LOCK_TIMEOUT_MS, statement_timeout_ms=_STATEMENT_TIMEOUT_MS)
            held.submit_event(end_event(approval, follow))
            if time.monotonic() - claiming > CLOSER_COMMIT_WITHIN.total_seconds():
                # The gate's trigger may take the claim over soon: it ends the task instead.
                raise TimeoutError(f"ending the task took over {CLOSER_COMMIT_WITHIN.total_seconds():.0f} s")
            held.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                held.rollback()
            # Airflow commits the end itself when it pushes the XCom (its scoped session): a
            # failure after that leaves the task ended, and the claim with the one that ended it.
            if held.still_deferred_on(trigger_id):
                claim.release()
            raise
    return ENDED


def _waits_on(
    held: task_instances.HeldTaskInstance, approval: Approval
) -> tuple[dict[str, list[str]] | None, int | None] | None:
    # (the branches it follows, its trigger's id: None when parked), when the locked task
    # instance waits on ``approval``'s gate: parked to resume in execute_complete with its id
    # (Airflow 3.3+), or deferred on its trigger, which asks the task to be ended; else None.
    parked_with = held.parked()
    if parked_with is not None:
        if parked_with.method_name != parked.RESUME_METHOD or parked_with.request_id != approval.id:
            return None
        follow = parked_with.follow
        return ({str(k): [str(t) for t in v] for k, v in follow.items()} if follow is not None else None), None
    trigger = held.trigger()
    kwargs: dict[str, Any] = dict(trigger.kwargs) if trigger is not None else {}
    if (
        trigger is None
        or trigger.classpath != TRIGGER_CLASSPATH
        or kwargs.get("request_id") != approval.id
        or not kwargs.get("end_task")
    ):
        return None
    return kwargs.get("follow"), held.trigger_id


@dataclass(kw_only=True)
class _Closing:
    """A closed task gate the closer has not settled yet."""

    gate: TaskGate
    #: Monotonic time after which the gate is left to its trigger.
    give_up: float
    #: The request, once read in full (it is closed, so it no longer changes).
    approval: Approval | None = None
    #: Monotonic time of the next look.
    next_look: float = 0.0
    #: Whether a look, read or end has failed (logged once with its traceback).
    failed: bool = False
    #: The waits after failures: jittered, growing, still well inside the closer's give-up time.
    retries: Backoff = field(default_factory=lambda: Backoff(first=_AFTER_FAILURE, cap=_AFTER_FAILURE * 4))
    #: Why it still waits (:data:`_WHY` of the last try's answer).
    why: str = ""


class GateCloser:
    """The api-server's background thread that ends decided gates (see the module docstring).

    :param manager_factory: Builds the manager of the store (default: ``[hitl]``'s store).
    :param wait_seconds: How long a closed request's task may take to finish deferring, or
        the databases may keep failing, before the gate is left to its trigger.
    :param look: Whether the tasks of gates are deferred, by gate id (:func:`gate_states`;
        tests pass their own).
    :param end: Ends one gate under this closer's claim (:func:`end_gate`; tests pass their own).
    :param leader_key: With it, this closer works only while it holds that advisory lock of
        the store, so one of all the closers started with the same key works at a time
        (:data:`LEADER_KEY` in the api-server); None: it always works.
    :param follow_every: Seconds between a waiting closer's tries to take the lock.
    :param poll_interval: On a SQLite store (no NOTIFY), seconds between looks for closed
        gates whose task has not ended (:func:`unended_task_gates`).
    :param reconcile_every: Seconds between looks at whether the gates parked in
        ``awaiting_input`` need a pass (:class:`airflow_hitl.api.parked.ParkedGates`: two one-row
        fingerprints; a pass, :func:`airflow_hitl.api.parked.reconcile`, at once when this closer
        starts working, then when either changed or every ``parked.FULL_EVERY`` seconds, and
        never sooner than this after the last), while this closer works; None: none (the
        api-server's closer passes :data:`airflow_hitl.api.parked.RECONCILE_EVERY` on Airflow 3.3+).
    """

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        wait_seconds: float = 30.0,
        look: Callable[[Sequence[TaskGate]], dict[str, str]] = gate_states,
        end: Callable[[Approval, EndClaim], str] = end_gate,
        leader_key: int | None = None,
        follow_every: float = 1.0,
        poll_interval: float = 0.25,
        reconcile_every: float | None = None,
    ) -> None:
        self._manager_factory = manager_factory
        self._reconcile_every = reconcile_every
        self.poll_interval = max(0.05, poll_interval)
        self._leader_key = leader_key
        self._follow_every = follow_every
        self.wait_seconds = wait_seconds
        self._look = look
        self._end = end
        self._ids: queue.Queue[str] = queue.Queue()
        # Closed gates handed back by the pass over parked gates: looked at again even if settled.
        self._again: set[str] = set()
        self._again_lock = threading.Lock()
        #: This closer's name in the claims to end tasks (:mod:`airflow_hitl.gate_ends`).
        self.claimant = claimant("api-server")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Set while the LISTEN connection is up (transitions before it are not heard); with a
        #: ``leader_key``, only while this closer is the one that works. On SQLite: once it polls.
        self.listening = threading.Event()
        self.ended = 0
        self._ended_lock = threading.Lock()
        self._enders: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start listening to the store's NOTIFY (PostgreSQL), or polling it (SQLite), and working."""
        if self._threads:
            return
        manager = self._manager_factory()
        self._enders = concurrent.futures.ThreadPoolExecutor(max_workers=_ENDERS, thread_name_prefix="hitl-gate-end")
        hear = (self._listen, "hitl-gate-listener") if manager.store.is_postgres else (self._poll, "hitl-gate-poller")
        targets = [hear, (self._work, "hitl-gate-closer")]
        if self._reconcile_every is not None:
            targets.append((self._reconcile, "hitl-gate-reconcile"))
        for target, name in targets:
            thread = threading.Thread(target=target, args=(manager,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop both threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._enders is not None:
            self._enders.shutdown(wait=False, cancel_futures=True)
            self._enders = None

    def submit(self, request_id: str) -> None:
        """A transition of ``request_id`` was committed."""
        self._ids.put(request_id)

    def submit_again(self, request_id: str) -> None:
        """``request_id`` is closed and its task still parked: end it, even if this closer settled it before."""
        with self._again_lock:
            self._again.add(request_id)
        self._ids.put(request_id)

    def _reconcile(self, manager: ApprovalManager) -> None:
        # While this closer works (the store's leader on PostgreSQL; always on SQLite): a tick
        # every reconcile_every seconds, which passes over the parked gates only when something
        # changed, or the safety net is due (parked.ParkedGates; sooner again after a failure).
        # Each working term gets a new driver, so a closer that has just taken over passes at once.
        every = self._reconcile_every
        assert every is not None
        backoff = Backoff(first=_AFTER_FAILURE * 5, cap=every)
        while not self._stop.is_set():
            if not self.listening.wait(1.0):
                continue
            gates = parked.ParkedGates(manager=manager, end=self.submit_again, every=every)
            while self.listening.is_set() and not self._stop.is_set():
                try:
                    if gates.tick() is not None:
                        backoff.reset()
                    # The next look when a pass may run again (after a pass: every seconds or
                    # more), or every seconds after a look that found nothing changed.
                    delay = gates.due_in() or every
                except Exception:
                    delay = backoff.next()
                    log.warning(
                        "could not reconcile the parked gates; again in %.0fs", delay, exc_info=backoff.failures == 1
                    )
                # Cut short when this closer stops working: a second at most between looks, so a
                # term lost and won again within one wait still gets a new driver.
                until = time.monotonic() + delay
                while self.listening.is_set() and (left := until - time.monotonic()) > 0:
                    if self._stop.wait(min(1.0, left)):
                        break

    def _listen(self, manager: ApprovalManager) -> None:
        def listening(up: bool) -> None:
            if up:
                self.listening.set()
            else:
                self.listening.clear()

        listen_for_transitions(
            manager.store.url,
            stop=self._stop,
            on_payload=self.submit,
            on_listening=listening,
            what="gate closer",
            leader_key=self._leader_key,
            follow_every=self._follow_every,
        )

    def _poll(self, manager: ApprovalManager) -> None:
        # SQLite: no NOTIFY, so look for what it would have said. A gate already handed to the
        # work (waiting, or settled) is left out there, before any further read.
        self.listening.set()
        backoff = Backoff(first=_AFTER_FAILURE, cap=30.0)
        delay = self.poll_interval
        while not self._stop.wait(delay):
            since = utcnow() - dt.timedelta(seconds=self.wait_seconds)
            try:
                found = unended_task_gates(manager, since=since)
            except Exception:
                delay = backoff.next()
                log.warning(
                    "gate closer could not look for closed gates; again in %.1fs", delay, exc_info=backoff.failures == 1
                )
                continue
            backoff.reset()
            delay = self.poll_interval
            for request_id in found:
                self.submit(request_id)

    def _work(self, manager: ApprovalManager) -> None:
        # Closed gates not settled yet: the task still deferring, or Airflow's DB or the store
        # failing for a moment. A closed request stays closed, so it is read from the store at
        # most once; a deferring task is looked at again every 50 ms, a failure after a second.
        waiting: dict[str, _Closing] = {}
        # Closed requests already settled. Their opening's NOTIFY can be read after they closed
        # (a burst read late on a busy machine), and their closing's NOTIFY then follows: the
        # first settles the gate, the second must not ask Airflow again.
        settled: Kept[str, bool] = Kept(size=_SETTLED)
        # Transitions heard while the store could not be read -> give up at; read again each second.
        unread: dict[str, float] = {}
        next_reread = 0.0
        while not self._stop.is_set():
            heard = self._take(timeout=_LOOK_AGAIN if waiting or unread else 1.0)
            with self._again_lock:
                again, self._again = self._again, set()
            for request_id in again:
                settled.put(request_id, False)
            if unread and time.monotonic() >= next_reread:
                heard = [*unread, *heard]
            heard = [i for i in heard if i not in waiting and not settled.get(i)]
            gates = self._closed_task_gates(manager, heard)
            now = time.monotonic()
            if gates is None:
                for request_id in heard:
                    unread.setdefault(request_id, now + self.wait_seconds)
                unread = {i: give_up for i, give_up in unread.items() if give_up > now}
                next_reread, gates = now + 1.0, []
            else:
                for request_id in heard:
                    unread.pop(request_id, None)
            for gate in gates:
                waiting[gate.id] = _Closing(gate=gate, give_up=now + self.wait_seconds)
            now = time.monotonic()
            due = [closing for closing in waiting.values() if closing.next_look <= now]
            for closing, outcome in self._settle(manager, due):
                request_id = closing.gate.id
                if outcome not in _WHY:
                    del waiting[request_id]
                    settled.put(request_id, True)
                elif time.monotonic() > closing.give_up:
                    del waiting[request_id]
                    settled.put(request_id, True)
                    log.warning(
                        "left the task of request %s to its trigger (or, parked, to the next pass over"
                        " parked gates) after %.0f s: %s",
                        request_id,
                        self.wait_seconds,
                        closing.why,
                    )

    def _take(self, *, timeout: float) -> list[str]:
        # Waiting up to ``timeout`` for the first, then whatever else is heard within
        # _GATHER of it: a burst or a stream of transitions is read from the store in one
        # query, not one per NOTIFY.
        try:
            taken = [self._ids.get(timeout=timeout)]
        except queue.Empty:
            return []
        until = time.monotonic() + _GATHER
        while len(taken) < _BATCH:
            try:
                taken.append(self._ids.get(timeout=max(0.0, until - time.monotonic())))
            except queue.Empty:
                break
        return list(dict.fromkeys(taken))

    @staticmethod
    def _closed_task_gates(manager: ApprovalManager, request_ids: list[str]) -> list[TaskGate] | None:
        # Most transitions are requests opening, a vote short of quorum, or requests opened
        # over the API: one light query leaves them out before any full read. None: the store
        # could not be read (they are read again in a second; the triggers end them meanwhile).
        if not request_ids:
            return []
        try:
            return manager.queries.closed_task_gates(request_ids)
        except Exception:
            log.warning("gate closer could not read %d transitions", len(request_ids), exc_info=True)
            return None

    def _settle(self, manager: ApprovalManager, due: list[_Closing]) -> list[tuple[_Closing, str]]:
        # One look at every due gate's task, then each deferred one read and ended. ENDED,
        # NOTHING or TAKEN settle a gate; NOT_YET, LOCKED or an error keep it waiting: a deadlock, a
        # dropped connection or a full pool passes, and with every triggerer down (or slow)
        # only this thread can end the task.
        if not due:
            return []
        try:
            states = self._look([closing.gate for closing in due])
        except Exception:
            if not all(closing.failed for closing in due):  # not again on each retry
                log.warning("gate closer could not look up the tasks of %d closed requests", len(due), exc_info=True)
            states = dict.fromkeys((closing.gate.id for closing in due), _FAILED)
        waits = [closing for closing in due if states.get(closing.gate.id, NOTHING) == DEFERRED]
        # Each gate's end locks its own task instance and takes its own claim: they run side by side.
        enders = self._enders
        if enders is None or len(waits) < 2:
            ends = {closing.gate.id: self._end_one(manager, closing) for closing in waits}
        else:
            running = {closing.gate.id: enders.submit(self._end_one, manager, closing) for closing in waits}
            ends = {request_id: _outcome(future) for request_id, future in running.items()}
        outcomes = []
        for closing in due:
            state = ends.get(closing.gate.id) or states.get(closing.gate.id, NOTHING)
            if state in _WHY:
                closing.why = _WHY[state]
                closing.failed = closing.failed or state == _FAILED
                closing.next_look = time.monotonic() + (closing.retries.next() if state == _FAILED else _LOOK_AGAIN)
            outcomes.append((closing, state))
        return outcomes

    def _end_one(self, manager: ApprovalManager, closing: _Closing) -> str:
        gate = closing.gate
        try:
            if closing.approval is None:
                closing.approval = manager.queries.get(gate.id)
            outcome = self._end(closing.approval, EndClaim(manager=manager, request_id=gate.id, by=self.claimant))
        except ApprovalNotFound:
            return NOTHING
        except Exception:
            if not closing.failed:  # the traceback once per gate, not on each retry
                log.warning(
                    "gate closer could not end the task of request %s yet; trying again for up to %.0f s",
                    gate.id,
                    self.wait_seconds,
                    exc_info=True,
                )
            return _FAILED
        if outcome == ENDED:
            with self._ended_lock:
                self.ended += 1
            log.info("ended the task of request %s (%s) from the api-server", gate.id, closing.approval.state)
        elif outcome == TAKEN:
            log.info("left the task of request %s to its trigger, which claimed ending it first", gate.id)
        return outcome


def _outcome(future: concurrent.futures.Future[str]) -> str:
    # An end cancelled because the closer is stopping is tried again by whoever works next.
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        return _FAILED


_service_lock = threading.Lock()
_service: GateCloser | None = None


def ensure_gate_closer_started(settings: HitlSettings | None = None) -> GateCloser | None:
    """Start this process's gate closer once (the api-server calls it); None when turned off."""
    global _service
    settings = settings or HitlSettings.load()
    if not settings.gate_closer:
        return None
    with _service_lock:
        if _service is None:
            _service = GateCloser(
                wait_seconds=settings.gate_closer_wait_seconds,
                leader_key=LEADER_KEY,
                poll_interval=settings.gate_closer_poll_interval,
                reconcile_every=parked.RECONCILE_EVERY if HAS_AWAITING_INPUT else None,
            )
            try:
                _service.start()
            except Exception:
                # The store is unreachable now: the triggers end the gates; try again next start.
                log.warning("gate closer not started", exc_info=True)
                _service = None
        return _service


def stop_gate_closer() -> None:
    """Stop this process's gate closer, if it runs."""
    global _service
    with _service_lock:
        if _service is not None:
            _service.stop()
            _service = None

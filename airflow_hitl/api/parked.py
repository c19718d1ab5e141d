"""Gates parked in Airflow's ``awaiting_input`` state, kept in step with their requests by the api-server.

On Airflow 3.3+ a waiting gate parks its task in ``awaiting_input`` (:mod:`airflow_hitl.seam.parking`):
no trigger waits for it, so three things a trigger did are the api-server's now, and
:func:`reconcile` does them in one pass, run by the store's working gate closer (one per
PostgreSQL store, every api-server process on SQLite) through :class:`ParkedGates` whenever
something it acts on may have changed (see "When a pass runs" below):

- **Catch-up.** A request closed while its task stays parked (decided while no api-server ran,
  or the gate closer gave up on it) is handed to the gate closer, which ends the task in place.
  No time window: however long ago the decision was.
- **Clear and mark.** Clearing a parked task, or marking it success or failed, calls no
  trigger's ``on_kill``, so nothing else cancels its request: a waiting request whose task
  instance try is over (cleared: a new try; marked success or failed; its task removed from
  the DAG, which Airflow marks ``removed``) is cancelled, source ``airflow``, as ``on_kill``
  does for a deferred gate.
- **Runs deleted.** Deleting a DAG run deletes its task instances, and nothing ends their
  gates: a waiting request that recorded its task instance (every gate opened since revision
  0013) whose DAG run is gone is cancelled (source ``airflow``, "its DAG run was deleted in
  Airflow"), and so is one whose run was created again under its run id: its task instance is
  gone or is another one. A request that records no task instance (opened before revision
  0013, or by a script in a task's name) and has none is left for a person to cancel: nothing
  says it is over, or that its run ever existed.
- **Backstops.** Airflow's deadline sweep resumes a parked gate a grace period after its
  ``expires_at`` (:data:`~airflow_hitl.seam.parking.BACKSTOP_GRACE`); after an escalation the
  gate waits until a later ``expires_at``, so its backstop moves with it (a conditional update
  of the parked task instance), well before the old one passes.

A pass reads each side once: the waiting requests of tasks' gates (one walk of the store's
partial index of waiting requests) and the tasks parked on our requests (one select over
Airflow's index of task states), then looks up only the task instances of the requests that
are not parked (a task about to park, or one resumed on a worker, or gone), the task instance
ids those requests recorded, and the runs of those whose task instance is gone (batched
queries). The store is read first: a request that closes between the two reads is seen as
waiting and left to the next pass.

When a pass runs
================

A pass costs in proportion to the waiting gates (at 20,000 of them, a pass every 30 s kept an
idle api-server at about 2.2 CPU s a minute), so :class:`ParkedGates` runs one only when it may
find something. Every ``RECONCILE_EVERY`` seconds it takes two fingerprints, one row each,
computed by the databases: the store's waiting requests of tasks' gates
(:meth:`~airflow_hitl.queries.ApprovalQueries.waiting_task_gates_fingerprint`: a request
opened, closed or escalated changes it) and Airflow's parked task instances
(:func:`~airflow_hitl.seam.task_instances.parked_fingerprint`: a task parked, cleared, marked,
removed, resumed by the deadline sweep or ended, or its run deleted, changes it). It passes:

- at its first tick (a gate closer that has just started working, or taken over as leader);
- when either fingerprint differs from the one taken just before the last pass (taken before
  it, so a change during a pass brings the next one; a pass that acts is followed by one more);
- when ``FULL_EVERY`` seconds have passed since the last pass, whatever the fingerprints say:
  the safety net for what they do not see, a closed request whose task stays parked after the
  gate closer gave up on it (nothing changes on either side), a waiting request whose task was
  cleared or its run deleted before it parked (no parked task changed), and a row written
  around Airflow's ORM or the manager. Either of the first two leaves the sides' counts apart
  (the fingerprints count them): while the counts agree, as when every waiting gate is parked,
  the safety net waits ``FULL_EVERY_BALANCED`` seconds instead, since only two such cases at
  once, or a row written around the ORM, can hide there. At 20,000 parked gates a pass was
  most of an idle api-server's own CPU time;

and never sooner than ``max(RECONCILE_EVERY, 20 x the last pass's duration)`` after the last
pass ended, so a store with a huge backlog keeps the pass under about 5 % of one core. Clearing
or marking a parked gate, deleting its run, deciding or escalating it therefore still acts
within ``RECONCILE_EVERY`` seconds (unless a pass takes over 1.5 s); a tick that finds nothing
changed costs the two one-row statements.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from airflow_hitl.exceptions import ApprovalNotFound, ApprovalNotPending
from airflow_hitl.manager import ApprovalManager, TimeoutOutcome
from airflow_hitl.records import TaskGate
from airflow_hitl.seam import parking, task_instances
from airflow_hitl.vocabulary import Source

log = logging.getLogger(__name__)

#: Seconds between two ticks of :class:`ParkedGates` (a look at both fingerprints), and between
#: two passes at least: well inside the backstop's grace, so an escalated gate's backstop moves
#: before the old one passes.
RECONCILE_EVERY = 30.0
#: Seconds after which a pass runs even though neither fingerprint changed, while the two sides
#: differ in number (a request waits whose task is not parked, or a task is parked on a closed
#: request): the safety net.
FULL_EVERY = 300.0
#: The safety net while as many tasks are parked to resume in ``execute_complete`` as task
#: gates' requests wait: what only it finds then needs two such cases at once, or a row written
#: around the ORM. (Airflow's own HITL tasks park to resume there too: beside ours they mostly
#: keep the counts apart, and the safety net at ``FULL_EVERY``.)
FULL_EVERY_BALANCED = 1800.0
#: A pass runs at most once in this many times its own duration (about 5 % of one core at most).
PASS_SHARE = 20
#: The method a parked gate resumes in (``ApprovalOperator.execute_complete``).
RESUME_METHOD = "execute_complete"
#: Task instance states in which a try may still end its gate: it runs (and parks or defers),
#: waits, or is being resumed. Anything else (finished, cleared to no state, up for retry) is over.
LIVE_STATES = frozenset(
    {"running", "queued", "scheduled", "deferred", task_instances.AWAITING_INPUT, "up_for_reschedule"}
)
#: The state Airflow gives the task instances of a task no longer in its DAG (the row stays).
REMOVED = "removed"
#: States in which a task instance has its next try's id but still its last try's number: cleared,
#: reset by the scheduler, up for retry, restarting (the number goes up when it is scheduled).
_NEXT_TRY_STATES = frozenset({None, "up_for_retry", "restarting"})
#: A parked gate's backstop is moved when it differs from the one it should have by more than this.
_TOLERANCE = dt.timedelta(seconds=5)
#: Task instances looked up in one query, and request ids read in one query.
_BATCH = 100
_READ_BATCH = 500


@dataclass(kw_only=True)
class Reconciled:
    """What one :func:`reconcile` pass found and did."""

    #: Tasks parked on our requests.
    parked: int = 0
    #: Closed requests whose task was still parked: handed to the gate closer to end.
    ended: list[str] = field(default_factory=list)
    #: Waiting requests whose task instance try was over, or whose DAG run was deleted: cancelled.
    cancelled: list[str] = field(default_factory=list)
    #: Parked gates whose backstop deadline was moved.
    moved: int = 0


def reconcile(manager: ApprovalManager, *, end: Callable[[str], None]) -> Reconciled:
    """One pass over the parked gates (see the module docstring); ``end`` hands a closed request to the gate closer.

    Raises when the store or Airflow's DB cannot be read (nothing half done matters: each part
    is idempotent, and the next pass does it again).
    """
    waiting = manager.queries.waiting_task_gates()
    parked = task_instances.parked_tasks(method_name=RESUME_METHOD)
    done = Reconciled(parked=len(parked))
    on_request = {task.request_id: task for task in parked}
    moves: list[task_instances.BackstopMove] = []
    not_parked: list[TaskGate] = []
    for gate, expires_at in waiting:
        task = on_request.get(gate.id)
        if task is None or task.key != _key(gate) or task.try_number != gate.try_number:
            not_parked.append(gate)
            continue
        wanted = parking.backstop_deadline(expires_at)
        if _differs(task.backstop, wanted):
            moves.append(task_instances.BackstopMove(key=task.key, try_number=task.try_number, deadline=wanted))
    if moves:
        done.moved = task_instances.move_backstops(moves)
    done.cancelled = _cancel_ended_tries(manager, not_parked)
    waiting_ids = {gate.id for gate, _ in waiting}
    unsettled = [task for task in parked if task.request_id not in waiting_ids]
    for first in range(0, len(unsettled), _READ_BATCH):
        chunk = {task.request_id: task for task in unsettled[first : first + _READ_BATCH]}
        for gate in manager.queries.closed_task_gates(list(chunk)):
            task = chunk[gate.id]
            if task.key == _key(gate) and task.try_number == gate.try_number:
                done.ended.append(gate.id)
                end(gate.id)
    if done.ended or done.cancelled or done.moved:
        log.info(
            "parked gates: %d parked; %d closed handed to the gate closer, %d cancelled (task over or run deleted), "
            "%d backstops moved",
            done.parked,
            len(done.ended),
            len(done.cancelled),
            done.moved,
        )
    return done


class ParkedGates:
    """Runs :func:`reconcile` when it may find something (see "When a pass runs" in the module docstring).

    One per working term of a gate closer: a new one passes at its first :meth:`tick`. The
    fingerprints catch every change a pass acts on but a few (a closed request whose task stays
    parked after the gate closer gave up on it, a task cleared or a run deleted before its gate
    parked, a row written around Airflow's ORM or the manager): for those a pass runs every
    ``full_every`` seconds anyway, the safety net, or every ``full_every_balanced`` seconds
    while the fingerprints count as many parked tasks as waiting requests.

    :param manager: The store's manager.
    :param end: Hands a closed request whose task is still parked to the gate closer.
    :param clock: Monotonic seconds (tests pass their own).
    :param every: Seconds between two passes at least (:data:`RECONCILE_EVERY`).
    :param full_every: Seconds after which a pass runs whatever the fingerprints say (:data:`FULL_EVERY`).
    :param full_every_balanced: The same while the fingerprints count as many parked tasks as
        waiting requests (:data:`FULL_EVERY_BALANCED`).
    """

    def __init__(
        self,
        *,
        manager: ApprovalManager,
        end: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        every: float = RECONCILE_EVERY,
        full_every: float = FULL_EVERY,
        full_every_balanced: float = FULL_EVERY_BALANCED,
    ) -> None:
        self._manager = manager
        self._end = end
        self._clock = clock
        self._every = every
        self._full_every = full_every
        self._full_every_balanced = max(full_every, full_every_balanced)
        # The fingerprints taken just before the last pass (None: no pass yet, or it failed).
        self._seen: tuple[object, object] | None = None
        # When the last pass ended, and how long after it the next may run.
        self._ended: float | None = None
        self._gap = every
        #: Passes run so far.
        self.passes = 0

    def due_in(self) -> float:
        """Seconds until a pass may run again (0: now); a :meth:`tick` before that reads nothing."""
        if self._ended is None:
            return 0.0
        return max(0.0, self._ended + self._gap - self._clock())

    def tick(self) -> Reconciled | None:
        """Run a pass if one is due (see the class docstring) and return what it did; None: skipped.

        Raises when a database cannot be read (the next due tick tries again; after a failed
        pass it passes whatever the fingerprints say).
        """
        if self.due_in() > 0:
            return None
        store, airflow = (
            self._manager.queries.waiting_task_gates_fingerprint(),
            task_instances.parked_fingerprint(method_name=RESUME_METHOD),
        )
        seen = (store, airflow)
        net = self._full_every_balanced if store[0] == airflow[0] else self._full_every
        if (
            self._seen is not None
            and self._ended is not None
            and seen == self._seen
            and self._clock() < self._ended + net
        ):
            return None
        started = self._clock()
        try:
            done = reconcile(self._manager, end=self._end)
        except Exception:
            # Nothing is remembered, so the next due tick passes again; a quick failure may be
            # retried as soon as the caller's backoff says, a slow one keeps the spacing.
            self._seen, self._ended = None, self._clock()
            self._gap = PASS_SHARE * (self._ended - started)
            raise
        self._seen, self._ended = seen, self._clock()
        self._gap = max(self._every, PASS_SHARE * (self._ended - started))
        self.passes += 1
        return done


def move_backstop(outcome: TimeoutOutcome) -> None:
    """After the deadline worker escalated a task's gate, move its backstop with the new deadline at once.

    The deadline worker's ``on_applied`` hook (:mod:`airflow_hitl.api.deadlines`): one
    conditional update, a no-op unless the gate's task is parked on that try. Without it the
    next :func:`reconcile` pass moves it, still well before the old backstop passes.
    """
    approval = outcome.approval
    if not outcome.escalated or approval.origin != "task" or not approval.run_id or approval.try_number is None:
        return
    key = task_instances.TaskKey(
        dag_id=approval.dag_id, run_id=approval.run_id, task_id=str(approval.task_id), map_index=approval.map_index
    )
    deadline = parking.backstop_deadline(approval.expires_at)
    task_instances.move_backstops(
        [task_instances.BackstopMove(key=key, try_number=approval.try_number, deadline=deadline)]
    )


def _key(gate: TaskGate) -> task_instances.TaskKey:
    return task_instances.TaskKey(
        dag_id=gate.dag_id, run_id=gate.run_id, task_id=gate.task_id, map_index=gate.map_index
    )


def _differs(have: dt.datetime | None, wanted: dt.datetime | None) -> bool:
    if have is None or wanted is None:
        return have is not wanted
    return abs(have - wanted) > _TOLERANCE


def _cancel_ended_tries(manager: ApprovalManager, gates: Sequence[TaskGate]) -> list[str]:
    # The waiting requests whose task is not parked on them: most are running (about to park or
    # defer), deferred, or resumed on a worker; a try that is over, or a run that was deleted,
    # cancels its request.
    if not gates:
        return []
    found = task_instances.task_tries([_key(gate) for gate in gates], batch=_BATCH)
    opened_by = manager.queries.task_instance_ids([gate.id for gate in gates])
    gone = list(dict.fromkeys(_key(gate).run for gate in gates if _key(gate) not in found))
    runs = task_instances.existing_runs(gone, batch=_BATCH) if gone else set()
    cancelled = []
    for gate in gates:
        key = _key(gate)
        what = _why_over(gate, found.get(key), opened_by.get(gate.id), run_exists=key.run in runs)
        if what is None:
            continue
        try:
            manager.cancel(gate.id, actor=None, reason=what, source=Source.AIRFLOW)
        except (ApprovalNotPending, ApprovalNotFound):
            continue  # decided or gone meanwhile: nothing to cancel
        except Exception:
            log.warning("could not cancel approval request %s, whose task is over", gate.id, exc_info=True)
            continue
        log.info("cancelled approval request %s: %s", gate.id, what)
        cancelled.append(gate.id)
    return cancelled


def _why_over(
    gate: TaskGate, row: task_instances.TaskTry | None, opened_by: str | None, *, run_exists: bool
) -> str | None:
    # Why the gate's try can never end its request (the reason it is cancelled with); None: it may.
    if row is None:
        if opened_by is None:
            # A request a script opened in a task's name (its run may never have existed), or one
            # opened before task instances were recorded: nothing says its gate will never wait
            # again, and nothing ties it to a run that once was. Left for a person to cancel.
            return None
        if not run_exists:
            return "its DAG run was deleted in Airflow"
        return f"its DAG run was deleted and created again: task instance {opened_by} is gone"
    if _another_life(gate, row, opened_by):
        return (
            f"its DAG run was deleted and created again: task instance {opened_by} is gone "
            f"(try {row.try_number} is {row.id} now: {row.state or 'no state'})"
        )
    if row.try_number == gate.try_number and row.state in LIVE_STATES:
        return None
    if row.state == REMOVED:
        return "its task was removed from the DAG (Airflow marked its task instance removed)"
    what = f"try {gate.try_number} of its task instance is over (try {row.try_number}: {row.state or 'cleared'})"
    return f"task instance was cleared or marked in Airflow: {what}"


def _another_life(gate: TaskGate, row: task_instances.TaskTry, opened_by: str | None) -> bool:
    # The task instance try the request recorded is gone and another has its key, at a try its
    # own run could not be at now: tries only go up within one life of a run, and a new try has its
    # new id under the old number only while it waits to be scheduled (_NEXT_TRY_STATES).
    if opened_by is None or row.id is None or row.id == opened_by:
        return False
    if row.try_number == gate.try_number:
        return row.state not in _NEXT_TRY_STATES
    return row.try_number < gate.try_number

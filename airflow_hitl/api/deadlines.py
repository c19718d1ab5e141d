"""Act on the gates' deadlines from the api-server, with no triggerer needed.

A waiting gate's ``expires_at`` is when its timeout action applies, or its next escalation
level opens (:meth:`~airflow_hitl.manager.ApprovalManager.apply_timeout`). The gate's trigger
does that too, but only while a triggerer runs it: one triggerer holds a thousand triggers by
default, and past that (or with every triggerer stopped) expiries and escalations waited.

:class:`DeadlineWorker` sleeps until the soonest ``expires_at`` among the waiting requests
(one walk of the partial index of waiting requests, in expiry order:
:meth:`~airflow_hitl.queries.ApprovalQueries.deadlines`) and applies the timeout of each that
is due then, typically a few milliseconds late. A timeout closes the request, and its
transition's NOTIFY has the gate closer (:mod:`airflow_hitl.api.gate_closer`) end the task
per the timeout action; an escalation keeps the request waiting (state ``escalated``, a new
``expires_at``), so nothing ends the task, and the worker sleeps until the new deadline.

On PostgreSQL the store's NOTIFY (one per transition: a gate opening, an escalation) wakes it
early, since the new deadline may be the soonest, and one worker per store works at a time:
the one holding an advisory lock on its LISTEN connection (:data:`LEADER_KEY`, not the gate
closer's), as the gate closer does; another takes over within a second of its process
ending. SQLite has no NOTIFY: every api-server process looks every ``[hitl]
deadline_poll_interval`` seconds (or sooner, at the next deadline), and the store's write lock
makes their timeouts take turns. Either way a timeout is applied once: ``apply_timeout`` locks
the request's row and re-checks it, so the triggers racing the worker, or two workers, change
nothing the second time. A store outage delays deadlines (the worker retries with backoff);
it never decides a gate.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Callable

from airflow_hitl.api.background import ServiceSlot, StoreWatcher
from airflow_hitl.exceptions import ApprovalNotFound, StoreError
from airflow_hitl.manager import ApprovalManager, TimeoutOutcome, utcnow
from airflow_hitl.records import WaitState
from airflow_hitl.retry import Backoff
from airflow_hitl.settings import HitlSettings

log = logging.getLogger(__name__)

#: The advisory lock whose holder is the store's one working deadline worker (not the closer's or the applier's).
LEADER_KEY = 0x41F1_DEAD

#: Deadlines read in one query: those due are applied, the first one ahead says how long to sleep.
BATCH = 200
#: Seconds between two reads at least: a burst of NOTIFYs (gates opening together) costs a few reads, not one each.
_MIN_SPACING = 0.05
#: Seconds a leading worker on PostgreSQL sleeps at most when nothing wakes it (NOTIFY wakes it on any change).
_RECHECK = 30.0
#: Latenesses kept for the logs and the benchmark (seconds after ``expires_at`` each timeout was applied).
_KEPT_LATENESS = 10_000


class _HeldBack:
    """A request whose timeout failed for a reason of its own: tried again later, never holding up the others."""

    def __init__(self) -> None:
        self.backoff = Backoff(first=1.0, cap=60.0)
        self.until = 0.0


class DeadlineWorker(StoreWatcher):
    """The api-server's background thread that applies due timeouts and escalations (see the module docstring).

    :param manager_factory: Builds the manager of the store (default: ``[hitl]``'s store).
    :param poll_interval: On SQLite (no NOTIFY), seconds between looks when no deadline is sooner.
    :param leader_key: On PostgreSQL, work only while holding this advisory lock (None: always).
    :param follow_every: Seconds between a waiting worker's tries to take the lock.
    :param recheck: On PostgreSQL, seconds between looks at most when nothing wakes it.
    :param clock: What time it is (the manager's clock, which ``apply_timeout`` asks, in tests).
    :param on_applied: Called in the worker's thread with each timeout or escalation it applied
        (say, to move what else waits on the request's deadline); its errors are logged, never raised.
    """

    name = "hitl-deadlines"
    what = "deadline worker"

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        poll_interval: float = 0.25,
        leader_key: int | None = None,
        follow_every: float = 1.0,
        recheck: float = _RECHECK,
        clock: Callable[[], dt.datetime] = utcnow,
        on_applied: Callable[[TimeoutOutcome], None] | None = None,
    ) -> None:
        super().__init__(manager_factory=manager_factory, leader_key=leader_key, follow_every=follow_every)
        self._on_applied = on_applied
        self.poll_interval = max(0.05, poll_interval)
        self._recheck = max(self.poll_interval, recheck)
        self._clock = clock
        self._held: dict[str, _HeldBack] = {}
        #: Timeouts this worker applied that closed a request, and escalations it applied.
        self.timed_out = 0
        self.escalated = 0
        #: Seconds after ``expires_at`` each of them was applied, the latest last.
        self.lateness: collections.deque[float] = collections.deque(maxlen=_KEPT_LATENESS)

    def _work(self, manager: ApprovalManager) -> None:
        # Short: a deadline waits for the store to come back, and should not wait much longer.
        backoff = Backoff(first=0.5, cap=5.0)
        ceiling = self._recheck if manager.store.is_postgres else self.poll_interval
        upcoming: dt.datetime | None = None
        last_read = 0.0
        while not self._stop.is_set():
            wait = ceiling
            if upcoming is not None:
                wait = min(wait, max(0.0, (upcoming - self._clock()).total_seconds()))
            if self._wake.wait(wait):
                self._wake.clear()
                # Woken right after a read (a burst of gates opening): wait a moment for the rest.
                self._stop.wait(max(0.0, last_read + _MIN_SPACING - time.monotonic()))
            if self._stop.is_set():
                break
            if not self.working.is_set():
                upcoming = None
                continue
            last_read = time.monotonic()
            try:
                upcoming = self.run_due(manager)
                if backoff.failures:
                    log.info("deadline worker reads the store again")
                backoff.reset()
            except Exception:
                delay = backoff.next()
                # The traceback once per outage; then a line per retry.
                log.warning(
                    "deadline worker could not read or apply deadlines; trying again in %.1fs",
                    delay,
                    exc_info=backoff.failures == 1,
                )
                upcoming = None
                self._stop.wait(delay)

    def run_due(self, manager: ApprovalManager) -> dt.datetime | None:
        """Apply every due timeout; the soonest deadline still ahead (None: none known).

        Raises when the store cannot be read, or fails while a timeout is applied (nothing was
        decided then: the transaction rolled back, and the next try applies it).
        """
        while not self._stop.is_set():
            now = self._clock()
            found = manager.queries.deadlines(limit=BATCH)
            due = [state for state in found if state.expires_at is not None and state.expires_at <= now]
            # Held back only while still due: a request decided meanwhile is forgotten.
            due_ids = {state.id for state in due}
            self._held = {i: held for i, held in self._held.items() if i in due_ids}
            escalated = self.escalated
            changed = {state.id: self._apply(manager, state) for state in due if not self._stop.is_set()}
            if self.escalated != escalated or (len(found) == BATCH and len(due) == BATCH):
                # Read again: an escalation has a deadline of its own now, and a full batch may have more.
                continue
            # Otherwise what was read still says what comes next (a gate opening meanwhile wakes the
            # worker): at 20,000 waiting gates, 1,000 expiring within a minute, reading again after
            # each pass was half of this thread's time.
            ahead = [s.expires_at for s in found if s.expires_at is not None and s.expires_at > now]
            # Due, tried, unchanged: the manager's clock disagreed; look again in a moment.
            stalled = [
                now + dt.timedelta(seconds=_MIN_SPACING)
                for s in due
                if s.id not in self._held and not changed.get(s.id, True)
            ][:1]
            soonest = [at for at in (*ahead[:1], *stalled, self._next_retry()) if at is not None]
            return min(soonest) if soonest else None
        return None

    def _apply(self, manager: ApprovalManager, state: WaitState) -> bool:
        # Whether anything changed, so the deadlines are read again (False: held back, or not due yet).
        held = self._held.get(state.id)
        if held is not None and time.monotonic() < held.until:
            return False
        try:
            outcome = manager.apply_timeout(state.id)
        except ApprovalNotFound:
            self._held.pop(state.id, None)  # deleted meanwhile: nothing to act on
            return True
        except StoreError:
            raise  # the store is away: the whole worker backs off, this timeout stays due
        except Exception:
            # This request's own problem (say, escalation levels it cannot read): the others go on.
            held = self._held.setdefault(state.id, _HeldBack())
            delay = held.backoff.next()
            held.until = time.monotonic() + delay
            log.warning(
                "deadline worker could not apply the timeout of request %s; trying it again in %.0fs",
                state.id,
                delay,
                exc_info=held.backoff.failures == 1,
            )
            return True
        self._held.pop(state.id, None)
        if outcome.applied:
            self._applied(outcome, state)
            return True
        # Not applied: a trigger, another worker or a decision got there first (read again), or
        # the manager's clock is behind this worker's (nothing changed: wait for the next pass).
        after = outcome.approval
        return not after.is_waiting or after.expires_at != state.expires_at

    def _applied(self, outcome: TimeoutOutcome, state: WaitState) -> None:
        assert state.expires_at is not None
        late = (self._clock() - state.expires_at).total_seconds()
        self.lateness.append(late)
        approval = outcome.approval
        if outcome.escalated:
            self.escalated += 1
            log.info(
                "escalated request %s to level %d %.3fs after its deadline; it waits until %s",
                approval.id,
                approval.escalation_level,
                late,
                approval.expires_at,
            )
        else:
            self.timed_out += 1
            log.info("timed out request %s (%s) %.3fs after its deadline", approval.id, approval.decision, late)
        if self._on_applied is not None:
            try:
                self._on_applied(outcome)
            except Exception:
                log.warning("deadline worker's on_applied failed for request %s", approval.id, exc_info=True)

    def _next_retry(self) -> dt.datetime | None:
        # When the soonest held-back request may be tried again, on the worker's clock.
        if not self._held:
            return None
        seconds = min(held.until for held in self._held.values()) - time.monotonic()
        return self._clock() + dt.timedelta(seconds=max(0.0, seconds))


def _build(
    settings: HitlSettings, *, on_applied: Callable[[TimeoutOutcome], None] | None = None
) -> DeadlineWorker | None:
    if not settings.deadline_worker:
        return None
    return DeadlineWorker(poll_interval=settings.deadline_poll_interval, leader_key=LEADER_KEY, on_applied=on_applied)


_slot: ServiceSlot[DeadlineWorker] = ServiceSlot(build=_build, what="deadline worker")


def ensure_deadline_worker_started(
    settings: HitlSettings | None = None, *, on_applied: Callable[[TimeoutOutcome], None] | None = None
) -> DeadlineWorker | None:
    """Start this process's deadline worker once (the api-server calls it); None when turned off or unreachable.

    ``on_applied``: see :class:`DeadlineWorker` (only the call that starts the worker passes it on).
    """
    return _slot.ensure_started(settings, on_applied=on_applied)


def stop_deadline_worker() -> None:
    """Stop this process's deadline worker, if it runs."""
    _slot.stop()

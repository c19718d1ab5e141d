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

Safe with any number of api-servers and triggerers: the task instance row is locked
(``FOR UPDATE SKIP LOCKED``) and re-checked (still deferred, on our trigger for this request
and try), so exactly one of them ends it; a decision that arrives while the worker is still
deferring is retried until the task is deferred, for ``[hitl] gate_closer_wait_seconds``,
after which the trigger's own event ends it as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from airflow_hitl.exceptions import ApprovalNotFound
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.outbox import listen_for_transitions
from airflow_hitl.queries import Kept
from airflow_hitl.records import Approval
from airflow_hitl.settings import HitlSettings
from airflow_hitl.triggers.approval import ApprovalTrigger, end_event

log = logging.getLogger(__name__)

#: The trigger's class path as Airflow stores it (``Trigger.classpath``).
TRIGGER_CLASSPATH = ApprovalTrigger(request_id="-").serialize()[0]

#: Transitions read from the store in one query at most.
_BATCH = 500

#: Settled requests remembered (a closed request stays closed; only late NOTIFYs ask again).
_SETTLED = 10_000

#: What :func:`end_gate` found: ended it, nothing to do (ever), or not deferred yet (try again).
ENDED, NOTHING, NOT_YET = "ended", "nothing", "not_yet"


def end_gate(approval: Approval) -> str:
    """End the task instance of ``approval``'s gate in Airflow's metadata DB if it waits on its trigger.

    Returns :data:`ENDED`, :data:`NOTHING` (not a task's gate, still open, already ended, or
    deferred on something else) or :data:`NOT_YET` (the task has not deferred yet).
    """
    if approval.is_waiting or approval.origin != "task" or not approval.run_id or approval.try_number is None:
        return NOTHING
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger, handle_event_submit
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    key = (
        TaskInstance.dag_id == approval.dag_id,
        TaskInstance.run_id == approval.run_id,
        TaskInstance.task_id == approval.task_id,
        TaskInstance.map_index == approval.map_index,
    )
    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(*key).with_for_update(skip_locked=True)).one_or_none()
        if ti is None:
            # Locked by the scheduler, the triggerer or another api-server right now: look again.
            exists = session.scalar(select(TaskInstance.try_number).where(*key))
            return NOT_YET if exists is not None else NOTHING
        if ti.try_number != approval.try_number:
            return NOTHING
        if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED):
            return NOT_YET  # still deferring: look again in a moment
        if ti.state != TaskInstanceState.DEFERRED or ti.trigger_id is None:
            return NOTHING
        trigger = session.get(Trigger, ti.trigger_id)
        kwargs: dict[str, Any] = dict(trigger.kwargs) if trigger is not None else {}
        if (
            trigger is None
            or trigger.classpath != TRIGGER_CLASSPATH
            or kwargs.get("request_id") != approval.id
            or not kwargs.get("end_task")
        ):
            # Deferred on something else (an older trigger resuming on a worker): leave it.
            return NOTHING
        handle_event_submit(end_event(approval, kwargs.get("follow")), task_instance=ti, session=session)
    return ENDED


class GateCloser:
    """The api-server's background thread that ends decided gates (see the module docstring).

    :param manager_factory: Builds the manager of the store (default: ``[hitl]``'s store).
    :param wait_seconds: How long a closed request's task may take to finish deferring.
    :param end: Ends one gate (:func:`end_gate`; tests pass their own).
    """

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        wait_seconds: float = 30.0,
        end: Callable[[Approval], str] = end_gate,
    ) -> None:
        self._manager_factory = manager_factory
        self.wait_seconds = wait_seconds
        self._end = end
        self._ids: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Set while the LISTEN connection is up (transitions before it are not heard).
        self.listening = threading.Event()
        self.ended = 0

    def start(self) -> None:
        """Start listening (only a PostgreSQL store NOTIFYs; on SQLite the triggers end the gates)."""
        if self._threads:
            return
        manager = self._manager_factory()
        if not manager.store.is_postgres:
            return
        for target, name in ((self._listen, "hitl-gate-listener"), (self._work, "hitl-gate-closer")):
            thread = threading.Thread(target=target, args=(manager,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop both threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def submit(self, request_id: str) -> None:
        """A transition of ``request_id`` was committed."""
        self._ids.put(request_id)

    def _listen(self, manager: ApprovalManager) -> None:
        def listening(up: bool) -> None:
            if up:
                self.listening.set()
            else:
                self.listening.clear()

        listen_for_transitions(
            manager.store.url, stop=self._stop, on_payload=self.submit, on_listening=listening, what="gate closer"
        )

    def _work(self, manager: ApprovalManager) -> None:
        # Closed requests whose task is still deferring -> (the request once read, give up at).
        # A closed request stays closed, so it is read from the store once, and the waiting ones
        # are looked at again every 50 ms, not once per NOTIFY of a burst.
        waiting: dict[str, tuple[Approval | None, float]] = {}
        # Closed requests already settled. Their opening's NOTIFY can be read after they closed
        # (a burst read late on a busy machine), and their closing's NOTIFY then follows: the
        # first settles the gate, the second must not ask Airflow again.
        settled: Kept[str, bool] = Kept(size=_SETTLED)
        next_retry = 0.0
        while not self._stop.is_set():
            heard = self._take(timeout=0.05 if waiting else 1.0)
            heard = [i for i in heard if i not in waiting and not settled.get(i)]
            for request_id in self._closed_task_gates(manager, heard):
                outcome, approval = self._settle(manager, request_id, None)
                if outcome == NOT_YET:
                    waiting[request_id] = (approval, time.monotonic() + self.wait_seconds)
                else:
                    settled.put(request_id, True)
            now = time.monotonic()
            if waiting and now >= next_retry:
                next_retry = now + 0.05
                for request_id, (known, give_up) in list(waiting.items()):
                    outcome, approval = self._settle(manager, request_id, known)
                    if outcome != NOT_YET or now > give_up:
                        del waiting[request_id]
                        settled.put(request_id, True)
                    else:
                        waiting[request_id] = (approval, give_up)

    def _take(self, *, timeout: float) -> list[str]:
        # Everything heard so far, waiting up to ``timeout`` for the first: a burst of
        # transitions is read from the store in one query, not one per NOTIFY.
        try:
            taken = [self._ids.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(taken) < _BATCH:
            try:
                taken.append(self._ids.get_nowait())
            except queue.Empty:
                break
        return list(dict.fromkeys(taken))

    @staticmethod
    def _closed_task_gates(manager: ApprovalManager, request_ids: list[str]) -> list[str]:
        # Most transitions are requests opening, a vote short of quorum, or requests opened
        # over the API: one light query leaves them out before any full read.
        if not request_ids:
            return []
        try:
            return manager.closed_task_gates(request_ids)
        except Exception:
            log.warning(
                "gate closer could not read %d requests; reading them one by one", len(request_ids), exc_info=True
            )
            return request_ids

    def _settle(self, manager: ApprovalManager, request_id: str, known: Approval | None) -> tuple[str, Approval | None]:
        approval = known
        if approval is None:
            try:
                approval = manager.get(request_id)
            except ApprovalNotFound:
                return NOTHING, None
            except Exception:
                log.warning("gate closer could not read request %s", request_id, exc_info=True)
                return NOT_YET, None
        if approval.is_waiting:
            return NOTHING, approval
        try:
            outcome = self._end(approval)
        except Exception:
            # Airflow's DB unreachable or busy: the trigger still ends the gate.
            log.warning("gate closer could not end the task of request %s", request_id, exc_info=True)
            return NOTHING, approval
        if outcome == ENDED:
            self.ended += 1
            log.info("ended the task of request %s (%s) from the api-server", request_id, approval.state)
        return outcome, approval


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
            _service = GateCloser(wait_seconds=settings.gate_closer_wait_seconds)
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

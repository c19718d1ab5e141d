"""Deliver the notification outbox: claim due notices, send them, retry, settle.

:class:`OutboxDrainer` turns one claimed :class:`~airflow_hitl.outbox.OutboxIntent` into
sends through the :class:`~airflow_hitl.notifications.dispatcher.NotificationDispatcher`
(one ``approval_notifications`` row per recipient, channel and notice; a retry reuses the
row and its message id and skips recipients already reached). A failed send is retried after
the one retry policy's delay (:mod:`airflow_hitl.retry`: jittered, at least ``[hitl]
notify_retry_backoff``, its window doubled per attempt, at most ``notify_retry_max_backoff``)
for as long as the notice matters: while the request is
open for the notices that ask for a decision, ``[hitl] outbox_final_retry_seconds`` after it
closed for the ones that say how it ended. After a reminder, the next one is queued.

:class:`DrainerService` runs a drainer in a background thread of the api-server (never in
the triggerer's event loop): it drains, then sleeps until the next due notice, the
``[hitl] outbox_poll_interval`` (30 s while it listens on PostgreSQL), or (PostgreSQL) a
NOTIFY from a transition, whichever comes first. Any number of api-servers may run one: claims never overlap.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from airflow_hitl.exceptions import ApprovalNotFound
from airflow_hitl.manager import ApprovalManager, utcnow
from airflow_hitl.models.store import OUTBOX_CHANNEL
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.outbox import Outbox, OutboxIntent, listen_for_transitions, standing_of
from airflow_hitl.records import Approval
from airflow_hitl.retry import Backoff, RetryPolicy
from airflow_hitl.settings import HitlSettings
from airflow_hitl.vocabulary import ACTION_EVENTS, Channel, Event

log = logging.getLogger(__name__)

#: Seconds the drainer sleeps at most while a LISTEN connection would wake it (PostgreSQL).
_RECHECK = 30.0


class OutboxDrainer:
    """Send due outbox notices of one store.

    :param manager: The store's manager.
    :param settings: ``[hitl]`` settings; default ``HitlSettings.load()``.
    :param notify_settings: Notification settings (retry backoff); default ``NotifySettings.load()``.
    :param dispatcher_factory: Builds the dispatcher used per notice (tests pass their own).
    :param defer_unresolved: Leave recipients this process cannot resolve to another sender
        (the worker's fast path: the api-server sees FAB users' emails).
    :param owner: Name written to the claims; default host:pid:random.
    :param clock: Current time.
    """

    def __init__(
        self,
        *,
        manager: ApprovalManager,
        settings: HitlSettings | None = None,
        notify_settings: NotifySettings | None = None,
        dispatcher_factory: Callable[[], NotificationDispatcher] | None = None,
        defer_unresolved: bool = False,
        owner: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.manager = manager
        self.settings = settings or HitlSettings.load()
        self.notify_settings = notify_settings or NotifySettings.load()
        self._factory = dispatcher_factory
        self.defer_unresolved = defer_unresolved
        self._clock = clock
        self._retry_policy = RetryPolicy(
            first=self.notify_settings.retry_backoff, cap=self.notify_settings.retry_max_backoff
        )
        self.outbox = Outbox(
            store=manager.store, owner=owner, lease_seconds=self.settings.outbox_lease_seconds, clock=clock
        )

    def _dispatcher(self) -> NotificationDispatcher:
        if self._factory is not None:
            return self._factory()
        return NotificationDispatcher(manager=self.manager, settings=self.notify_settings)

    def drain(self, *, request_id: str | None = None, event_types: Sequence[str] | None = None, limit: int = 20) -> int:
        """Send every due notice (of one request / some events only, if given); return how many were handled."""
        seen: list[str] = []
        while True:
            # Each notice once per call: one handed back (or retried at once) waits for the next call.
            intents = self.outbox.claim(limit=limit, request_id=request_id, event_types=event_types, exclude=seen)
            if not intents:
                return len(seen)
            for intent in intents:
                seen.append(intent.id)
                try:
                    self.deliver(intent)
                except Exception:
                    # The lease runs out and another attempt follows; nothing here may stop the rest.
                    log.exception("outbox notice %s (%s) could not be handled", intent.id, intent.event_type)

    def _retry_at(self, intent: OutboxIntent, approval: Approval, now: dt.datetime) -> dt.datetime | None:
        """When to try again if this attempt fails; None when this is the last attempt."""
        # intent.attempts counts this attempt too (claim() added it): the first failure is 1.
        delay = self._retry_policy.delay(intent.attempts)
        at = now + dt.timedelta(seconds=delay)
        if intent.event_type in ACTION_EVENTS:
            deadline = approval.expires_at
        else:
            closed = approval.decided_at or now
            deadline = closed + dt.timedelta(seconds=self.settings.outbox_final_retry_seconds)
        if deadline is not None and at >= deadline:
            return None
        return at

    def _owners_notify(self, intent: OutboxIntent, approval: Approval) -> dict[str, Any] | None:
        """Where a standing approval's notice goes: its owner only, in-app, and by email when the gate emails.

        None for every other notice (the request's own ``notify``: its approvers, its channels).
        """
        standing_id = standing_of(intent.dedupe_key) if intent.event_type == Event.STANDING_USED else None
        if standing_id is None:
            return None
        owner = self.manager.standing.get(standing_id).approver
        channels = [Channel.IN_APP] + (
            [Channel.EMAIL] if Channel.EMAIL in (approval.notify.get("channels") or ()) else []
        )
        return {**approval.notify, "channels": channels, "users": [owner], "roles": []}

    def deliver(self, intent: OutboxIntent) -> str:
        """Send one claimed notice and settle it; return its new status (``pending`` when retried)."""
        try:
            approval = self.manager.queries.get(intent.request_id)
        except ApprovalNotFound:
            self.outbox.complete(intent.id, status="cancelled", error="the request no longer exists")
            return "cancelled"
        if intent.event_type == Event.SLA_BREACHED and approval.is_waiting:
            # Recorded before anyone is told (once, under the request's lock), whatever the channels.
            _, approval = self.manager.sla.breach(intent.request_id)
        now = self._clock()
        if intent.event_type in ACTION_EVENTS:
            if not approval.is_waiting:
                self.outbox.complete(intent.id, status="cancelled", error=f"the request was {approval.state} first")
                return "cancelled"
            if approval.expires_at is not None and now >= approval.expires_at and intent.event_type == "reminder":
                # Never remind after expiry: the timeout or escalation notice comes instead.
                self.outbox.complete(intent.id, status="cancelled", error="the request expired first")
                return "cancelled"
        retry_at = self._retry_at(intent, approval, now)
        dispatcher = self._dispatcher()
        rows = dispatcher.dispatch(
            approval,
            intent.event_type,
            notify=self._owners_notify(intent, approval),
            outbox_id=intent.id,
            retry_at=retry_at,
            defer_unresolved=self.defer_unresolved,
        )
        retrying = [r for r in rows if r.status == "failed" and r.next_attempt_at is not None]
        failed = [r for r in rows if r.status == "failed" and r.next_attempt_at is None]
        errors = "; ".join(
            f"{r.channel} to {r.recipient}: {r.error or r.metadata.get('error')}" for r in retrying + failed
        )
        if retrying and retry_at is not None:
            self.outbox.retry(intent.id, at=retry_at, error=errors)
            return "pending"
        if dispatcher.deferred:
            log.info(
                "outbox notice %s: %d recipient(s) left to a sender that can resolve them",
                intent.id,
                len(dispatcher.deferred),
            )
            self.outbox.release(intent.id)
            return "pending"
        status = "failed" if failed and len(failed) == len(rows) else "sent"
        self.outbox.complete(intent.id, status=status, error=errors or None)
        if intent.event_type == "reminder":
            self.outbox.plan_next_reminder(approval.id, after=now)
        return status


class DrainerService:
    """A drainer in a background thread: drains, then sleeps until due, polled or woken.

    :param manager_factory: Builds the manager (called in the thread, retried until it works,
        so an api-server starts even while the store is down).
    :param settings: ``[hitl]`` settings; default ``HitlSettings.load()``.
    """

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        settings: HitlSettings | None = None,
    ) -> None:
        self._manager_factory = manager_factory
        self.settings = settings or HitlSettings.load()
        self._stop = threading.Event()
        self._wake = threading.Event()
        #: Set while the LISTEN connection is up (PostgreSQL): then a NOTIFY wakes the drainer.
        self._listening = threading.Event()
        self._threads: list[threading.Thread] = []
        self.drained = 0

    @property
    def running(self) -> bool:
        """True while the drain thread is alive."""
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        thread = threading.Thread(target=self._run, name="hitl-outbox-drainer", daemon=True)
        self._threads = [thread]
        thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the threads to finish and wait for them."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def wake(self) -> None:
        """Drain now (a transition was announced)."""
        self._wake.set()

    def _run(self) -> None:
        backoff = Backoff(first=1.0, cap=self.settings.store_retry_max_backoff)
        drainer: OutboxDrainer | None = None
        while not self._stop.is_set():
            try:
                if drainer is None:
                    manager = self._manager_factory()
                    drainer = OutboxDrainer(manager=manager, settings=self.settings)
                    if manager.store.is_postgres:
                        self._start_listener(manager)
                self._wake.clear()
                self.drained += drainer.drain()
                backoff.reset()
                # Listening on PostgreSQL, every transaction that queues notices wakes the drainer and
                # the next due one is known: a look is only a safety net (polling every second cost the
                # idle api-server three queries a second).
                wait = _RECHECK if self._listening.is_set() else self.settings.outbox_poll_interval
                due = drainer.outbox.next_due()
                if due is not None:
                    wait = min(wait, max(0.0, (due - utcnow()).total_seconds()))
                self._wake.wait(wait)
            except Exception:
                delay = backoff.next()
                log.warning("outbox drainer failed; retrying in %.1fs", delay, exc_info=True)
                self._stop.wait(delay)

    def _listening_changed(self, up: bool) -> None:
        if up:
            self._listening.set()
            self._wake.set()  # catch up with what was queued while nobody listened
        else:
            self._listening.clear()

    def _start_listener(self, manager: ApprovalManager) -> None:
        thread = threading.Thread(target=self._listen, args=(manager,), name="hitl-outbox-listener", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _listen(self, manager: ApprovalManager) -> None:
        # A transaction that queued notices NOTIFYs on commit; waking at once keeps "required"
        # and final notices prompt. Transitions that queued none do not wake the drainer.
        listen_for_transitions(
            manager.store.url,
            channel=OUTBOX_CHANNEL,
            stop=self._stop,
            on_payload=lambda _: self._wake.set(),
            on_listening=self._listening_changed,
            what="outbox",
            max_backoff=self.settings.store_retry_max_backoff,
        )


_service_lock = threading.Lock()
_service: DrainerService | None = None


def ensure_drainer_started(settings: HitlSettings | None = None) -> DrainerService | None:
    """Start this process's drainer once (the api-server calls it); None when turned off."""
    global _service
    settings = settings or HitlSettings.load()
    if not settings.outbox_drainer:
        return None
    with _service_lock:
        if _service is None:
            _service = DrainerService(settings=settings)
        _service.start()
        return _service


def stop_drainer() -> None:
    """Stop this process's drainer, if it runs."""
    global _service
    with _service_lock:
        if _service is not None:
            _service.stop()
            _service = None

"""The notification outbox: every notice a transition owes is queued with the transition.

The :class:`~airflow_hitl.manager.ApprovalManager` calls :func:`plan_opened`,
:func:`plan_escalated` and :func:`plan_closed` inside the transaction of the transition
(request opened, escalated, decided / timed out / cancelled), so a notice is queued if and
only if its transition commits, whatever process made it (a worker, the triggerer, an
api-server) and whether or not a mail server is up at that moment. Reminders
(``remind_every``) are intents with a due time, planned one at a time.

Senders (the api-server's drainer, the worker's fast path for ``required``) take due intents
with :meth:`Outbox.claim`: a lease (``lease_until``) set under ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, under SQLite's ``BEGIN IMMEDIATE`` write lock otherwise, so any number of senders
share the work and a notice is sent by one of them; a sender that dies leaves a lease that
runs out. Delivering (recipients, rendering, channels) lives above this layer, in
:mod:`airflow_hitl.notifications.drainer`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from airflow_hitl.models.store import NOTIFY_CHANNEL, OUTBOX_QUEUED, ApprovalStore
from airflow_hitl.models.tables import (
    ApprovalNotificationRow,
    ApprovalOutboxRow,
    ApprovalRequestRow,
)
from airflow_hitl.records import record_of
from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import (
    ACTION_EVENTS,
    AUTOMATIC_SOURCES,
    WAITING_STATES,
    Event,
    NoticeStatus,
    OutboxStatus,
    final_event,
)

log = logging.getLogger(__name__)

#: The outbox key of a standing approval's notice to its owner: ``standing_used:<id>:<level>``.
STANDING_USED_PREFIX = f"{Event.STANDING_USED}:"


def listen_conninfo(store_url: str) -> dict[str, Any]:
    """psycopg connection arguments for LISTENing to the store's NOTIFY channel (PostgreSQL)."""
    url = make_url(store_url)
    info: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    info.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return {k: v for k, v in info.items() if v is not None}


def listen_for_transitions(
    store_url: str,
    *,
    stop: threading.Event,
    on_payload: Callable[[str], None],
    on_listening: Callable[[bool], None] | None = None,
    what: str = "store",
    max_backoff: float = 30.0,
    channel: str = NOTIFY_CHANNEL,
    leader_key: int | None = None,
    follow_every: float = 1.0,
) -> None:
    """Call ``on_payload(request_id)`` for every transition's NOTIFY until ``stop`` is set.

    ``channel`` is :data:`~airflow_hitl.models.store.NOTIFY_CHANNEL` (every transition, its
    request id as payload) or :data:`~airflow_hitl.models.store.OUTBOX_CHANNEL` (transactions
    that queued notices, no payload).

    With ``leader_key`` only one listener per store listens at a time: the one whose
    connection holds that PostgreSQL advisory lock, which the server frees when the connection
    ends (its process stopped or died); the others try again every ``follow_every`` seconds.

    A lost connection is reopened after the one retry policy's delay (:mod:`airflow_hitl.retry`,
    capped at ``max_backoff``), each time with a fresh login (a token login's token expires);
    ``on_listening(True)`` follows each LISTEN (a transition committed before it is not heard,
    so a caller catches up then) and ``on_listening(False)`` each loss. Blocks: run it in a
    thread of its own.
    """
    import psycopg

    from airflow_hitl.models.store import fresh_login
    from airflow_hitl.retry import Backoff

    info = listen_conninfo(store_url)
    backoff = Backoff(first=1.0, cap=max_backoff)
    while not stop.is_set():
        try:
            with psycopg.connect(autocommit=True, **{**info, **fresh_login(store_url)}) as conn:
                backoff.reset()
                if leader_key is not None:
                    while not _leads(conn, leader_key):
                        if stop.wait(follow_every):
                            return
                conn.execute(f"LISTEN {channel}")
                if on_listening is not None:
                    on_listening(True)
                while not stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        on_payload(note.payload)
        except Exception:
            if on_listening is not None:
                on_listening(False)
            delay = backoff.next()
            log.warning("%s LISTEN connection lost; reconnecting in %.1fs", what, delay, exc_info=True)
            stop.wait(delay)


def _leads(conn: Any, key: int) -> bool:
    # A session-level lock: held until this connection ends, whatever its transactions do.
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, kw_only=True)
class OutboxIntent:
    """One queued notice as a sender sees it after claiming it."""

    id: str
    request_id: str
    event_type: str
    dedupe_key: str
    status: str
    due_at: dt.datetime
    attempts: int
    last_error: str | None = None
    created_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: ApprovalOutboxRow) -> OutboxIntent:
        """Copy an outbox row."""
        return record_of(cls, row)


# ---------------------------------------------------------------------- planning (in the transition)


def _announces(row: ApprovalRequestRow) -> bool:
    return bool((row.notify or {}).get("channels"))


def _enqueue(session: Session, row: ApprovalRequestRow, *, event_type: str, key: str, due_at: dt.datetime) -> bool:
    # The caller holds the request's row lock (or just inserted it), so check-then-insert is
    # safe; the unique (request_id, dedupe_key) makes a duplicate impossible regardless.
    exists = session.scalar(
        select(ApprovalOutboxRow.id).where(ApprovalOutboxRow.request_id == row.id, ApprovalOutboxRow.dedupe_key == key)
    )
    if exists is not None:
        return False
    session.info[OUTBOX_QUEUED] = True
    session.add(
        ApprovalOutboxRow(
            id=str(uuid.uuid4()),
            request_id=row.id,
            event_type=event_type,
            dedupe_key=key,
            status=OutboxStatus.PENDING,
            due_at=due_at,
            attempts=0,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    return True


def next_reminder_at(row: ApprovalRequestRow, after: dt.datetime) -> dt.datetime | None:
    """When the next reminder is due after ``after``; None without ``remind_every`` or past the expiry."""
    every = (row.notify or {}).get("remind_every_seconds")
    if not every:
        return None
    at = after + dt.timedelta(seconds=float(every))
    if row.expires_at is not None and at >= row.expires_at:
        return None  # the timeout or escalation notice comes instead
    return at


def plan_reminder(session: Session, row: ApprovalRequestRow, after: dt.datetime) -> bool:
    """Queue the next reminder (at most one waits at a time); True when one was queued."""
    if not _announces(row) or row.state not in WAITING_STATES:
        return False
    o = ApprovalOutboxRow
    reminders = session.scalars(select(o.status).where(o.request_id == row.id, o.event_type == Event.REMINDER)).all()
    if OutboxStatus.PENDING in reminders:
        return False
    at = next_reminder_at(row, after)
    if at is None:
        return False
    return _enqueue(session, row, event_type=Event.REMINDER, key=f"reminder:{len(reminders) + 1}", due_at=at)


def plan_opened(session: Session, row: ApprovalRequestRow, now: dt.datetime) -> bool:
    """A gate opened: queue ``required`` (due now), the first reminder, and its SLA's notice (due at ``sla``)."""
    if row.sla_seconds:
        # Queued whether or not the gate tells anyone: the sender that takes it due records the
        # breach (airflow_hitl.sla), and a gate closed before then cancels it (plan_closed).
        due = row.requested_at + dt.timedelta(seconds=row.sla_seconds)
        _enqueue(session, row, event_type=Event.SLA_BREACHED, key=str(Event.SLA_BREACHED), due_at=due)
    if not _announces(row):
        return False
    _enqueue(session, row, event_type=Event.REQUIRED, key=str(Event.REQUIRED), due_at=now)
    plan_reminder(session, row, now)
    return True


def plan_escalated(session: Session, row: ApprovalRequestRow, now: dt.datetime) -> bool:
    """A gate escalated: queue ``escalated`` for this level, and a reminder against the new expiry."""
    if not _announces(row):
        return False
    _enqueue(session, row, event_type=Event.ESCALATED, key=f"{Event.ESCALATED}:{row.escalation_level}", due_at=now)
    plan_reminder(session, row, now)
    return True


def plan_standing_used(session: Session, row: ApprovalRequestRow, *, standing_id: str, now: dt.datetime) -> bool:
    """A standing approval cast its owner's vote on ``row``: queue the owner's notice (key names it)."""
    key = f"{STANDING_USED_PREFIX}{standing_id}:{row.escalation_level}"
    return _enqueue(session, row, event_type=Event.STANDING_USED, key=key, due_at=now)


def standing_of(dedupe_key: str) -> str | None:
    """The standing approval a ``standing_used`` notice is about, from its outbox key."""
    if not dedupe_key.startswith(STANDING_USED_PREFIX):
        return None
    return dedupe_key[len(STANDING_USED_PREFIX) :].rsplit(":", 1)[0] or None


def plan_closed(session: Session, row: ApprovalRequestRow, now: dt.datetime) -> bool:
    """A gate closed: settle what it still owed people, then queue how it ended.

    Notices asking for a decision that were never tried are no longer wanted (``cancelled``);
    those that failed and were waiting for a retry are recorded ``failed`` with the reason,
    and so are their per-recipient rows, so the request's detail shows who never heard.
    """
    if not _announces(row):
        # Only its SLA's notice can be queued: no longer due, with nobody told of the end either.
        if not row.sla_seconds:
            return False
        session.execute(
            update(ApprovalOutboxRow)
            .where(
                ApprovalOutboxRow.request_id == row.id,
                ApprovalOutboxRow.status == OutboxStatus.PENDING,
                ApprovalOutboxRow.event_type == Event.SLA_BREACHED,
            )
            .values(status=OutboxStatus.CANCELLED, last_error=f"the request was {row.state} first", updated_at=now)
        )
        return False
    reason = f"not delivered before the request was {row.state}"
    o = ApprovalOutboxRow
    open_intents = session.scalars(
        select(o).where(o.request_id == row.id, o.status == OutboxStatus.PENDING, o.event_type.in_(ACTION_EVENTS))
    ).all()
    for intent in open_intents:
        # A failed attempt left its error; one in flight right now may still succeed (its rows say so).
        tried = intent.last_error is not None and intent.event_type != Event.REMINDER
        intent.status = OutboxStatus.FAILED if tried else OutboxStatus.CANCELLED
        intent.last_error = f"{reason}; last error: {intent.last_error}" if intent.last_error else reason
        intent.lease_until = None
        intent.updated_at = now
    n = ApprovalNotificationRow
    undelivered = session.scalars(
        select(n).where(
            n.request_id == row.id,
            n.event_type.in_(ACTION_EVENTS),
            (n.status == NoticeStatus.PENDING) | ((n.status == NoticeStatus.FAILED) & n.next_attempt_at.is_not(None)),
        )
    ).all()
    for notice in undelivered:
        notice.error = f"{reason}; last error: {notice.error}" if notice.error else reason
        notice.status = NoticeStatus.FAILED
        notice.next_attempt_at = None
        notice.failed_at = now
        notice.updated_at = now
    if row.decision_source in AUTOMATIC_SOURCES:
        return True
    _enqueue(session, row, event_type=final_event(row.state), key=f"final:{row.state}", due_at=now)
    return True


# ---------------------------------------------------------------------- claiming (senders)


def default_owner() -> str:
    """Who claims: host, process and a random suffix (several senders may share a process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:200]


class Outbox:
    """Claim, settle and reschedule queued notices.

    :param store: The approval store.
    :param owner: Name written to ``claimed_by``; default host:pid:random.
    :param lease_seconds: How long a claim reserves a notice for this sender.
    :param clock: Current time (tests move it).
    """

    def __init__(
        self,
        *,
        store: ApprovalStore,
        owner: str | None = None,
        lease_seconds: float = 120.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.owner = owner or default_owner()
        self.lease = dt.timedelta(seconds=lease_seconds)
        self._clock = clock

    def claim(
        self,
        *,
        limit: int = 20,
        request_id: str | None = None,
        event_types: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[OutboxIntent]:
        """Take up to ``limit`` due notices nobody else holds (but ``exclude``); each counts one attempt."""
        now = self._clock()
        o = ApprovalOutboxRow
        query = (
            select(o)
            .where(o.status == OutboxStatus.PENDING, o.due_at <= now, o.lease_until.is_(None) | (o.lease_until < now))
            .order_by(o.due_at, o.id)
            .limit(limit)
        )
        if request_id is not None:
            query = query.where(o.request_id == str(request_id))
        if event_types:
            query = query.where(o.event_type.in_(list(event_types)))
        if exclude:
            query = query.where(o.id.not_in(list(exclude)))
        if self.store.is_postgres:
            # Two senders never wait for each other: each takes the rows the other has not locked.
            query = query.with_for_update(skip_locked=True)
        with self.store.begin() as session:
            rows = session.scalars(query).all()
            for row in rows:
                row.lease_until = now + self.lease
                row.claimed_by = self.owner
                row.attempts += 1
                row.updated_at = now
            session.flush()
            return [OutboxIntent.from_row(r) for r in rows]

    def _settle(self, intent_id: str, **values: object) -> bool:
        # Only while we still hold it: a lease that ran out may have passed it to another sender,
        # and a request that closed meanwhile has settled it already (plan_closed).
        o = ApprovalOutboxRow
        with self.store.begin() as session:
            result = session.execute(
                update(o)
                .where(o.id == intent_id, o.status == OutboxStatus.PENDING, o.claimed_by == self.owner)
                .values(lease_until=None, updated_at=self._clock(), **values)
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def complete(self, intent_id: str, *, status: str, error: str | None = None) -> bool:
        """The notice is done: ``sent``, ``failed`` (given up) or ``cancelled`` (no longer wanted)."""
        return self._settle(intent_id, status=status, last_error=error[:4000] if error else None)

    def retry(self, intent_id: str, *, at: dt.datetime, error: str) -> bool:
        """Release the notice to be tried again at ``at`` (by any sender)."""
        return self._settle(intent_id, due_at=at, last_error=error[:4000])

    def release(self, intent_id: str) -> bool:
        """Hand the notice back at once, e.g. to a sender that can resolve more recipients."""
        return self._settle(intent_id, due_at=self._clock())

    def plan_next_reminder(self, request_id: str, *, after: dt.datetime) -> bool:
        """After a reminder went out, queue the next one (under the request's row lock)."""
        with self.store.begin() as session:
            row = session.scalar(
                select(ApprovalRequestRow).where(ApprovalRequestRow.id == str(request_id)).with_for_update()
            )
            if row is None:
                return False
            return plan_reminder(session, row, after)

    def next_due(self) -> dt.datetime | None:
        """When the earliest pending notice can next be claimed (None: nothing is queued)."""
        o = ApprovalOutboxRow
        with self.store.session() as session:
            due = session.scalar(
                select(func.min(o.due_at)).where(o.status == OutboxStatus.PENDING, o.lease_until.is_(None))
            )
            leased = session.scalar(select(func.min(o.lease_until)).where(o.status == OutboxStatus.PENDING))
        times = [t for t in (due, leased) if t is not None]
        return min(times) if times else None

    def intents(self, request_id: str) -> list[OutboxIntent]:
        """The request's queued and settled notices, oldest first."""
        o = ApprovalOutboxRow
        with self.store.session() as session:
            rows = session.scalars(select(o).where(o.request_id == str(request_id)).order_by(o.created_at, o.id))
            return [OutboxIntent.from_row(r) for r in rows]

"""The transaction plumbing of every state transition.

One write transaction (:meth:`StoreTransactions._transaction`) locks what it changes
(:meth:`~StoreTransactions._lock`: ``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already did), queues its audit events, wake-ups and metrics in the
session, and seals them just before it commits (:meth:`~StoreTransactions._seal`): the
audit chain's turn is taken and its events appended in three short statements, the NOTIFYs
reach PostgreSQL's queue (delivered only if the transaction commits), and metrics are sent
only once it has. A store that is lost or times out is :class:`StoreUnavailable` while
nothing can have committed, :class:`StoreOutcomeUnknown` once COMMIT may have reached it.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session

from airflow_hitl import metrics
from airflow_hitl.audit import GENESIS_HASH, event_hash
from airflow_hitl.exceptions import ApprovalNotFound, NotAllowed, StoreOutcomeUnknown, StoreUnavailable
from airflow_hitl.models.store import NOTIFY_CHANNEL, OUTBOX_CHANNEL, OUTBOX_QUEUED, ApprovalStore
from airflow_hitl.models.tables import WAITING_PREDICATE, ApprovalEventRow, ApprovalRequestRow
from airflow_hitl.spec import DagAccess, json_safe

# Any constant works; it serialises appends to the audit chain across processes.
_AUDIT_LOCK_KEY = 0x41F1_A0D1
# Keys of ``Session.info``: what a transaction will append, wake and count when it seals.
_PENDING_EVENTS = "hitl_pending_events"
_PENDING_NOTIFY = "hitl_pending_notify"
_PENDING_METRICS = "hitl_pending_metrics"


class StoreTransactions:
    """Write transactions over the approval store, with their audit, NOTIFY and metrics."""

    store: ApprovalStore
    _clock: Callable[[], dt.datetime]

    def count_waiting(self) -> int:
        """How many requests wait for people, store-wide."""
        with self.store.session() as session:
            return int(
                session.scalar(select(func.count()).select_from(ApprovalRequestRow).where(text(WAITING_PREDICATE))) or 0
            )

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One write transaction whose audit events are appended just before it commits.

        A lost or timed-out store is :class:`StoreUnavailable` while nothing can have been
        committed, and :class:`StoreOutcomeUnknown` once COMMIT may have reached the server:
        a caller is never told "failed" about a change that later turns out applied.
        """
        committing = False
        try:
            with self.store.begin() as session:
                yield session
                self._seal(session)
                measured: builtins.list[Callable[[], None]] = session.info.pop(_PENDING_METRICS, [])
                committing = True
        except (OperationalError, InterfaceError, SQLAlchemyTimeoutError) as err:
            if committing:
                raise StoreOutcomeUnknown(f"the approval store stopped answering while committing: {err}") from err
            raise StoreUnavailable(f"the approval store is unavailable: {err}") from err
        # Only what committed is counted.
        for send in measured:
            send()
        if measured:
            metrics.waiting(self.count_waiting)

    @staticmethod
    def _measure(session: Session, send: Callable[[], None]) -> None:
        session.info.setdefault(_PENDING_METRICS, []).append(send)

    def _lock(self, session: Session, request_id: str, *, dag_access: DagAccess | None = None) -> ApprovalRequestRow:
        # Votes must NOT be joined into this statement: after waiting for the lock, PostgreSQL
        # re-reads the locked row but keeps the joined rows of the statement's older snapshot,
        # so the votes of the transaction we waited for would be missing. The relationship's
        # own SELECT runs next, with a fresh snapshot that sees them.
        row = session.scalar(
            select(ApprovalRequestRow).where(ApprovalRequestRow.id == str(request_id)).with_for_update()
        )
        if row is None:
            raise ApprovalNotFound(str(request_id))
        if dag_access is not None and (refusal := dag_access(row.dag_id)) is not None:
            raise NotAllowed(refusal)
        return row

    @staticmethod
    def _notify(session: Session, request_id: str) -> None:
        # Sent when the transaction seals, delivered by PostgreSQL only when it commits:
        # waiting triggers wake on a decision that is durable, never on one that rolls back.
        session.info.setdefault(_PENDING_NOTIFY, {})[request_id] = None

    @staticmethod
    def _audit(
        session: Session,
        *,
        request_id: str | None,
        event_type: str,
        actor: str | None,
        source: str,
        at: dt.datetime,
        comment: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        session.info.setdefault(_PENDING_EVENTS, []).append(
            {
                "request_id": request_id,
                "event_type": event_type,
                "actor": actor,
                "source": source,
                "comment": comment,
                "details": json_safe(details or {}),
                "created_at": at,
            }
        )

    def _seal(self, session: Session) -> None:
        """Append the transaction's audit events to the chain and queue its NOTIFYs."""
        events: builtins.list[dict[str, Any]] = session.info.pop(_PENDING_EVENTS, [])
        wake: dict[str, None] = session.info.pop(_PENDING_NOTIFY, {})
        # Rows the events speak of go first, before this transaction takes the chain's turn.
        session.flush()
        queued = session.info.pop(OUTBOX_QUEUED, False)
        if self.store.is_postgres and (events or wake or queued):
            # One round trip queues the wake-ups and waits for the chain's turn, which is
            # ours until commit. (On SQLite, BEGIN IMMEDIATE already made it ours.)
            calls = ["pg_advisory_xact_lock(:lock)"] if events else []
            params: dict[str, Any] = {"lock": _AUDIT_LOCK_KEY, "channel": NOTIFY_CHANNEL}
            for i, request_id in enumerate(wake):
                calls.append(f"pg_notify(:channel, :p{i})")
                params[f"p{i}"] = request_id
            if queued:
                calls.append("pg_notify(:outbox, '')")
                params["outbox"] = OUTBOX_CHANNEL
            session.execute(text(f"SELECT {', '.join(calls)}"), params)
        if not events:
            return
        prev = session.scalar(select(ApprovalEventRow.hash).order_by(ApprovalEventRow.seq.desc()).limit(1))
        prev = prev or GENESIS_HASH
        for event in events:
            digest = event_hash(prev_hash=prev, **event)
            event.update(prev_hash=prev, hash=digest)
            prev = digest
        # Inserted in chain order: the sequence numbers follow the list.
        session.execute(insert(ApprovalEventRow), events)

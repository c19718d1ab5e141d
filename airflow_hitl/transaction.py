"""The transaction plumbing of every state transition.

One write transaction (:meth:`StoreTransactions.transaction`) locks what it changes
(:meth:`~StoreTransactions.lock`: ``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already did), queues its audit events, wake-ups and metrics in the
session, and seals them just before it commits (:meth:`~StoreTransactions._seal`): the
audit chain's turn is taken and its events appended in three short statements, the NOTIFYs
reach PostgreSQL's queue (delivered only if the transaction commits), and metrics are sent
only once it has. A store that is lost or times out is :class:`StoreUnavailable` while
nothing can have committed, :class:`StoreOutcomeUnknown` once COMMIT may have reached it.

Each appended link is an HMAC under the writer's :class:`~airflow_hitl.audit.AuditKey` when it
has one (``[hitl] audit_key``, read once per manager), plain SHA-256 otherwise; a writer
refuses to append after a keyed event under anything but that event's key, since every
verification of the chain would fail from there on.

A locked request's votes are read as Core rows (:func:`votes_of`, which the list queries of
:mod:`airflow_hitl.queries` share) and a vote is one plain INSERT: the ORM's relationship
loader and unit of work cost more than the statements themselves on every decision.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, Column, Label, String, Table, Text, any_, bindparam, cast, func, insert, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session, raiseload

from airflow_hitl import metrics
from airflow_hitl.audit import GENESIS_HASH, AuditKey, event_hash, keyed_tail_problem
from airflow_hitl.exceptions import ApprovalNotFound, NotAllowed, StoreError, StoreOutcomeUnknown, StoreUnavailable
from airflow_hitl.models.store import NOTIFY_CHANNEL, OUTBOX_CHANNEL, OUTBOX_QUEUED, ApprovalStore
from airflow_hitl.models.tables import WAITING_PREDICATE, ApprovalEventRow, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.records import Vote, json_column
from airflow_hitl.spec import DagAccess, json_safe

log = logging.getLogger(__name__)

# Any constant works; it serialises appends to the audit chain across processes.
_AUDIT_LOCK_KEY = 0x41F1_A0D1
# Keys of ``Session.info``: what a transaction will append, wake and count when it seals.
_PENDING_EVENTS = "hitl_pending_events"
_PENDING_NOTIFY = "hitl_pending_notify"
_PENDING_METRICS = "hitl_pending_metrics"

# Built once: a statement object keeps its cache key, which SQLAlchemy otherwise derives
# again on every execution (a decision runs each of these once).
_EVENTS: Table = ApprovalEventRow.__table__  # type: ignore[assignment]
_HEAD = select(_EVENTS.c.seq, _EVENTS.c.hash, _EVENTS.c.key_id).order_by(_EVENTS.c.seq.desc()).limit(1)
_APPEND = insert(_EVENTS)
_VOTE_ROWS = insert(ApprovalVoteRow.__table__)  # type: ignore[arg-type]
# The votes are read by their own statement after the lock (see StoreTransactions.lock), never through the
# relationship: its ORM loader cost more than the statement itself.
_LOCK = (
    select(ApprovalRequestRow)
    .where(ApprovalRequestRow.id == bindparam("request_id"))
    .options(raiseload(ApprovalRequestRow.votes))
    .with_for_update()
)


def text_columns(table: Table) -> tuple[list[Column[Any] | Label[Any]], frozenset[str]]:
    """Every column of ``table``, its JSON ones read as their text, and the names of those.

    The driver's JSON decoder costs more per value than :func:`~airflow_hitl.records.json_column`,
    which skips the parser for the many empty objects.
    """
    json_names = frozenset(c.name for c in table.c if isinstance(c.type, JSON))
    columns = [cast(c, Text).label(c.name) if c.name in json_names else c for c in table.c]
    return columns, json_names


_VOTE_COLUMNS, _VOTE_JSON = text_columns(ApprovalVoteRow.__table__)  # type: ignore[arg-type]


def decoded(row: Any, json_names: frozenset[str]) -> dict[str, Any]:
    """A Core row of :func:`text_columns` as a dict, its JSON columns as values."""
    values = dict(row._mapping)
    for name in json_names:
        values[name] = json_column(values[name])
    return values


_VOTES = ApprovalVoteRow.__table__.c
# On PostgreSQL one array parameter: the statement's text is the same for any page, so the
# driver's query cache keeps it (100 expanded IN parameters made it too long to cache).
_VOTES_OF_PG = (
    select(*_VOTE_COLUMNS).where(_VOTES.request_id == any_(bindparam("ids", type_=ARRAY(String)))).order_by(_VOTES.id)
)


def votes_of(session: Session, request_ids: builtins.list[str], *, postgres: bool) -> dict[str, builtins.list[Vote]]:
    """The votes of ``request_ids`` (one query; batches on SQLite), each request's in the order cast."""
    found: dict[str, builtins.list[Vote]] = {}
    if not request_ids:
        return found
    # SQLite caps a statement's parameters, and a page may hold 10,000 requests.
    step = len(request_ids) if postgres else 500
    for start in range(0, len(request_ids), step):
        ids = request_ids[start : start + step]
        if postgres:
            rows = session.execute(_VOTES_OF_PG, {"ids": ids})
        else:
            rows = session.execute(select(*_VOTE_COLUMNS).where(_VOTES.request_id.in_(ids)).order_by(_VOTES.id))
        for row in rows:
            found.setdefault(row.request_id, []).append(Vote.from_columns(decoded(row, _VOTE_JSON)))
    return found


class StoreTransactions:
    """Write transactions over the approval store, with their audit, NOTIFY and metrics.

    The manager and each of its services that writes hold one over the same store: it keeps
    no state of its own between transactions (what one queues lives in its session).
    """

    def __init__(self, *, store: ApprovalStore, audit_key: AuditKey | None = None) -> None:
        self.store = store
        #: The key every link this writer appends is an HMAC under (None: plain SHA-256); read once.
        self.audit_key = audit_key

    def count_waiting(self) -> int:
        """How many requests wait for people, store-wide."""
        with self.store.session() as session:
            return int(
                session.scalar(select(func.count()).select_from(ApprovalRequestRow).where(text(WAITING_PREDICATE))) or 0
            )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
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
    def measure(session: Session, send: Callable[[], None]) -> None:
        """Send ``send``'s metric once the transaction of ``session`` has committed (never if it rolls back)."""
        session.info.setdefault(_PENDING_METRICS, []).append(send)

    def lock(
        self, session: Session, request_id: str, *, dag_access: DagAccess | None = None
    ) -> tuple[ApprovalRequestRow, builtins.list[Vote]]:
        """The request's row, locked until commit, and its votes read after the lock."""
        # Votes must NOT be joined into the locking statement: after waiting for the lock,
        # PostgreSQL re-reads the locked row but keeps the joined rows of the statement's older
        # snapshot, so the votes of the transaction we waited for would be missing. Their own
        # SELECT runs next, with a fresh snapshot that sees them.
        row = session.scalar(_LOCK, {"request_id": str(request_id)})
        if row is None:
            raise ApprovalNotFound(str(request_id))
        if dag_access is not None and (refusal := dag_access(row.dag_id)) is not None:
            raise NotAllowed(refusal)
        return row, votes_of(session, [row.id], postgres=self.store.is_postgres).get(row.id, [])

    @staticmethod
    def cast(session: Session, request: ApprovalRequestRow, vote: Vote) -> None:
        """Insert ``vote`` on the locked ``request``; IntegrityError when its voter has voted already."""
        # One plain INSERT: a vote row is never read back in this transaction, so building
        # and flushing an ORM object for it would only cost time.
        session.connection().execute(
            _VOTE_ROWS,
            {
                "request_id": request.id,
                # The request's own, never changed once it is opened: what the analytics read.
                "dag_id": request.dag_id,
                "task_id": request.task_id,
                "requested_at": request.requested_at,
                "user": vote.user,
                "delegate": vote.delegate,
                "user_roles": list(vote.user_roles),
                "vote": vote.vote,
                "comment": vote.comment,
                "reason": vote.reason,
                "source": vote.source,
                "escalation_level": vote.escalation_level,
                "metadata": vote.metadata,
                "inputs": vote.inputs,
                "created_at": vote.created_at,
                "content_digest": vote.content_digest,
            },
        )

    @staticmethod
    def notify(session: Session, request_id: str) -> None:
        """Wake whoever watches ``request_id`` once the transaction of ``session`` commits."""
        # Sent when the transaction seals, delivered by PostgreSQL only when it commits:
        # waiting triggers wake on a decision that is durable, never on one that rolls back.
        session.info.setdefault(_PENDING_NOTIFY, {})[request_id] = None

    @staticmethod
    def audit(
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
        """Queue an audit event in ``session``: it is linked into the chain when the transaction seals."""
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
        conn = session.connection()
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
            conn.execute(text(f"SELECT {', '.join(calls)}"), params)
        if not events:
            return
        key = self.audit_key
        head = conn.execute(_HEAD).first()
        if head is not None and (problem := keyed_tail_problem(head.key_id, key)):
            # Refused before anything is written: an unkeyed link (or one under another key)
            # after a keyed one would fail every verification of the chain from then on.
            raise StoreError(problem)
        prev = head.hash if head is not None else GENESIS_HASH
        key_id = key.key_id if key is not None else None
        if key is not None and (head is None or head.key_id is None):
            # Said outside the store, where whoever rewrites the keyed events as unkeyed cannot
            # unsay it: a second such line, at a later seq, is a downgrade (see audit's doc).
            log.warning(
                "the audit trail is keyed from here on: the events after seq %s are HMAC-SHA256 under key_id %s "
                "(`airflow hitl audit verify` reports the first of them as keyed_from)",
                head.seq if head is not None else 0,
                key_id,
            )
        for event in events:
            digest = event_hash(prev_hash=prev, key=key, **event)
            event.update(prev_hash=prev, hash=digest, key_id=key_id)
            prev = digest
        # Inserted in chain order: the sequence numbers follow the list.
        conn.execute(_APPEND, events)

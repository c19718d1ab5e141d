"""The audit trail's hash chain: each event commits to the one before it.

Editing, deleting or reordering any event breaks every hash after it, which
:func:`verify_chain` reports with the first sequence number that no longer matches.
Events are appended by :mod:`airflow_hitl.transaction` when a transaction seals, and read
back through :class:`AuditReader`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from airflow_hitl.models.tables import ApprovalEventRow
from airflow_hitl.records import record_of

if TYPE_CHECKING:
    from airflow_hitl.models.store import ApprovalStore

GENESIS_HASH = "0" * 64


def canonical_time(value: dt.datetime) -> str:
    """UTC, microsecond precision, one spelling on every backend."""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    *,
    prev_hash: str,
    request_id: str | None,
    event_type: str,
    actor: str | None,
    source: str,
    comment: str | None,
    details: dict[str, Any],
    created_at: dt.datetime,
) -> str:
    """SHA-256 over the event's content and the previous hash, as canonical JSON."""
    payload = json.dumps(
        {
            "prev": prev_hash,
            "request_id": request_id,
            "type": event_type,
            "actor": actor,
            "source": source,
            "comment": comment,
            "details": details,
            "at": canonical_time(created_at),
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ChainVerification:
    """Result of walking the audit chain."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(events: Iterable[Any]) -> ChainVerification:
    """Recompute every hash in ``seq`` order; events need the columns of ``approval_events``."""
    prev = GENESIS_HASH
    checked = 0
    for ev in events:
        if ev.prev_hash != prev:
            return ChainVerification(
                ok=False,
                checked=checked,
                first_bad_seq=ev.seq,
                problem="prev_hash does not match the event before",
            )
        expected = event_hash(
            prev_hash=ev.prev_hash,
            request_id=ev.request_id,
            event_type=ev.event_type,
            actor=ev.actor,
            source=ev.source,
            comment=ev.comment,
            details=ev.details,
            created_at=ev.created_at,
        )
        if expected != ev.hash:
            return ChainVerification(
                ok=False, checked=checked, first_bad_seq=ev.seq, problem="content does not match its hash"
            )
        prev = ev.hash
        checked += 1
    return ChainVerification(ok=True, checked=checked)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One audit trail entry."""

    seq: int
    request_id: str | None
    event_type: str
    actor: str | None
    source: str
    comment: str | None
    details: dict[str, Any]
    created_at: dt.datetime
    hash: str


class AuditReader:
    """Reads the audit trail of a store (a part of :class:`~airflow_hitl.manager.ApprovalManager`)."""

    store: ApprovalStore

    def events(self, request_id: str | None = None) -> list[AuditEvent]:
        """Audit events, oldest first; of one request when ``request_id`` is given."""
        query = select(ApprovalEventRow).order_by(ApprovalEventRow.seq)
        if request_id is not None:
            query = query.where(ApprovalEventRow.request_id == str(request_id))
        with self.store.session() as session:
            return [record_of(AuditEvent, e, details=dict(e.details or {})) for e in session.scalars(query)]

    def verify_audit_chain(self) -> ChainVerification:
        """Walk the whole audit trail and check every hash."""
        with self.store.session() as session:
            rows: Iterator[ApprovalEventRow] = iter(
                session.scalars(
                    select(ApprovalEventRow).order_by(ApprovalEventRow.seq).execution_options(yield_per=1000)
                )
            )
            return verify_chain(rows)

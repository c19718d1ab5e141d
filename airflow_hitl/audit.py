"""The audit trail's hash chain: each event commits to the one before it.

Editing, deleting or reordering any event breaks every hash after it, which
:func:`verify_chain` reports with the first sequence number that no longer matches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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

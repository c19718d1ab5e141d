"""audit: the hash chain on its own, then the store's chain as the manager writes it (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import select, text

from airflow_hitl.audit import GENESIS_HASH, canonical_time, event_hash, verify_chain
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalEventRow
from airflow_hitl.policy import Principal
from tests.helpers import spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])
T0 = dt.datetime(2026, 11, 30, 6, 43, 52, 123456, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class Event:
    """The columns of ``approval_events`` that the chain reads."""

    seq: int
    request_id: str | None
    event_type: str
    actor: str | None
    source: str
    comment: str | None
    details: dict[str, Any]
    created_at: dt.datetime
    prev_hash: str = ""
    hash: str = ""


def content(event: Event) -> dict[str, Any]:
    return {k: getattr(event, k) for k in ("request_id", "event_type", "actor", "source", "comment", "details")}


def chain(count: int) -> list[Event]:
    """``count`` events, each sealed onto the one before, as the store writes them."""
    events, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        event = Event(
            seq=seq,
            request_id="r1",
            event_type="vote",
            actor=f"user{seq}",
            source="api",
            comment="ünïcode ✓" if seq == 2 else None,
            details={"n": seq, "nested": {"b": 1, "a": [1, 2]}},
            created_at=T0 + dt.timedelta(seconds=seq),
            prev_hash=prev,
        )
        event.hash = prev = event_hash(prev_hash=prev, created_at=event.created_at, **content(event))
        events.append(event)
    return events


def test_one_spelling_of_a_time_whatever_its_offset() -> None:
    tokyo = T0.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert canonical_time(T0) == canonical_time(tokyo) == "2026-11-30T06:43:52.123456Z"


def test_the_hash_commits_to_every_field_and_the_one_before() -> None:
    base = chain(1)[0]
    original = event_hash(prev_hash=GENESIS_HASH, created_at=base.created_at, **content(base))
    assert original == base.hash and len(original) == 64
    # Key order in details does not matter (canonical JSON); any value does.
    reordered = {**content(base), "details": {"nested": {"a": [1, 2], "b": 1}, "n": 1}}
    assert event_hash(prev_hash=GENESIS_HASH, created_at=base.created_at, **reordered) == original
    changes = [
        {"prev_hash": "1" * 64},
        {"created_at": base.created_at + dt.timedelta(microseconds=1)},
        *({k: "other"} for k in ("request_id", "event_type", "actor", "source", "comment")),
        {"details": {"n": 2}},
    ]
    for change in changes:
        fields = {"prev_hash": GENESIS_HASH, "created_at": base.created_at, **content(base), **change}
        assert event_hash(**fields) != original, change


def test_an_intact_chain_verifies() -> None:
    result = verify_chain(chain(5))
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 5, None)
    assert verify_chain([]).ok


def test_an_edited_event_is_found_by_its_seq() -> None:
    events = chain(5)
    events[2].comment = "rewritten"
    result = verify_chain(events)
    assert (result.ok, result.checked, result.first_bad_seq) == (False, 2, 3)
    assert result.problem == "content does not match its hash"


def test_a_deleted_or_reordered_event_breaks_the_link() -> None:
    events = chain(5)
    deleted = verify_chain(events[:2] + events[3:])
    assert (deleted.ok, deleted.first_bad_seq, deleted.problem) == (
        False,
        4,
        "prev_hash does not match the event before",
    )
    swapped = verify_chain([events[0], events[2], events[1], *events[3:]])
    assert (swapped.ok, swapped.checked, swapped.first_bad_seq) == (False, 1, 3)


class TestStoredChain:
    def _trail(self, mgr: ApprovalManager) -> list[str]:
        a = mgr.create(spec(required_approvals=2))
        mgr.approve(a.id, user=ALICE, comment="ok")
        mgr.approve(a.id, user=BOB)
        b = mgr.create(spec())
        mgr.reject(b.id, user=CAROL, reason="no")
        return [a.id, b.id]

    def test_chain_verifies(self, mgr: ApprovalManager) -> None:
        self._trail(mgr)
        result = mgr.verify_audit_chain()
        assert result.ok
        assert result.checked == 7

    def test_edited_event_is_detected(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        self._trail(mgr)
        with store.engine.begin() as conn:
            seq = conn.execute(text("SELECT seq FROM approval_events WHERE comment = 'ok'")).scalar_one()
            conn.execute(text("UPDATE approval_events SET comment = 'forged' WHERE seq = :s"), {"s": seq})
        result = mgr.verify_audit_chain()
        assert not result.ok
        assert result.first_bad_seq == seq

    def test_deleted_event_is_detected(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        self._trail(mgr)
        with store.session() as s:
            seqs = list(s.scalars(select(ApprovalEventRow.seq).order_by(ApprovalEventRow.seq)))
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM approval_events WHERE seq = :s"), {"s": seqs[2]})
        result = mgr.verify_audit_chain()
        assert not result.ok
        assert result.first_bad_seq == seqs[3]

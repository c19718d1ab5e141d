"""audit: the chain on its own (SHA-256 and keyed links), then the store's chain as the manager writes it, and
the facts it vouches for: rows rewritten, deleted or inserted behind its back (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk import Param
from sqlalchemy import Table, delete, insert, select, text, update

from airflow_hitl import audit
from airflow_hitl.audit import (
    FACTS_KEY,
    FACTS_VERSION_KEY,
    GENESIS_HASH,
    VOTE_FACTS,
    AuditKey,
    canonical_time,
    event_hash,
    request_facts,
    verify_chain,
    vote_facts,
)
from airflow_hitl.exceptions import StoreError
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalEventRow, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.policy import EscalationLevel, Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])


def key_of(secret: str) -> AuditKey:
    found = AuditKey.of(secret)
    assert found is not None
    return found


KEY = key_of("the audit key, long and random in real life")
OTHER_KEY = key_of("a key the attacker chose")
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
    key_id: str | None = None


def content(event: Event) -> dict[str, Any]:
    return {k: getattr(event, k) for k in ("request_id", "event_type", "actor", "source", "comment", "details")}


def chain(count: int, *, keyed_from: int | None = None, key: AuditKey | None = KEY) -> list[Event]:
    """``count`` events, each sealed onto the one before, as the store writes them (keyed from ``keyed_from``)."""
    events: list[Event] = []
    prev = GENESIS_HASH
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
        link_key = key if keyed_from is not None and seq >= keyed_from else None
        event.key_id = link_key.key_id if link_key is not None else None
        event.hash = prev = event_hash(prev_hash=prev, created_at=event.created_at, key=link_key, **content(event))
        events.append(event)
    return events


def reseal(events: list[Event], start: int, key: AuditKey | None) -> None:
    """What a writer of the store does without the key: recompute every link from ``events[start]`` on."""
    prev = events[start - 1].hash if start else GENESIS_HASH
    for event in events[start:]:
        event.prev_hash = prev
        event.key_id = key.key_id if key is not None else None
        event.hash = prev = event_hash(prev_hash=prev, created_at=event.created_at, key=key, **content(event))


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
        result = mgr.audit.verify_audit_chain()
        assert result.ok
        assert result.checked == 7

    def test_edited_event_is_detected(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        self._trail(mgr)
        with store.engine.begin() as conn:
            seq = conn.execute(text("SELECT seq FROM approval_events WHERE comment = 'ok'")).scalar_one()
            conn.execute(text("UPDATE approval_events SET comment = 'forged' WHERE seq = :s"), {"s": seq})
        result = mgr.audit.verify_audit_chain()
        assert not result.ok
        assert result.first_bad_seq == seq

    def test_deleted_event_is_detected(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        self._trail(mgr)
        with store.session() as s:
            seqs = list(s.scalars(select(ApprovalEventRow.seq).order_by(ApprovalEventRow.seq)))
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM approval_events WHERE seq = :s"), {"s": seqs[2]})
        result = mgr.audit.verify_audit_chain()
        assert not result.ok
        assert result.first_bad_seq == seqs[3]

    def test_a_chain_that_breaks_early_leaves_no_cursor_open(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        self._trail(mgr)
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE approval_events SET comment = 'edited' WHERE seq = (SELECT MIN(seq) FROM approval_events)")
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            result = mgr.audit.verify_audit_chain()
            gc.collect()  # an unclosed cursor says so when it is collected
        assert not result.ok
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


class TestKeyedLinks:
    def test_a_key_is_its_stripped_text_and_known_by_a_fingerprint_that_is_not_the_key(self) -> None:
        assert AuditKey.of("") is None and AuditKey.of("  \n") is None and AuditKey.of(None) is None
        assert AuditKey.of(" the audit key, long and random in real life\n") == KEY
        assert len(KEY.key_id) == 16 and KEY.key_id != OTHER_KEY.key_id
        assert "long and random" not in repr(KEY) and KEY.key_id in repr(KEY)

    def test_a_keyed_link_is_an_hmac_over_the_content_and_the_key_id(self) -> None:
        event = chain(1)[0]
        fields: dict[str, Any] = {"prev_hash": GENESIS_HASH, "created_at": event.created_at, **content(event)}
        plain, keyed, other = event_hash(**fields), event_hash(**fields, key=KEY), event_hash(**fields, key=OTHER_KEY)
        assert len({plain, keyed, other}) == 3 and len(keyed) == 64
        assert event_hash(**fields, key=KEY) == keyed

    def test_unkeyed_events_then_keyed_ones_verify_and_say_where_the_key_starts(self) -> None:
        result = verify_chain(chain(6, keyed_from=4), key=KEY)
        assert (result.ok, result.checked, result.keyed_from, result.key_id) == (True, 6, 4, KEY.key_id)
        assert verify_chain(chain(3), key=None).to_dict()["keyed_from"] is None

    def test_a_keyed_chain_without_the_key_fails_naming_the_option(self) -> None:
        result = verify_chain(chain(4, keyed_from=3), key=None)
        assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
        assert "[hitl] audit_key" in (result.problem or "") and KEY.key_id in (result.problem or "")

    def test_a_chain_keyed_under_another_key_fails_naming_both_key_ids(self) -> None:
        result = verify_chain(chain(3, keyed_from=1, key=OTHER_KEY), key=KEY)
        assert (result.ok, result.first_bad_seq) == (False, 1)
        assert OTHER_KEY.key_id in (result.problem or "") and KEY.key_id in (result.problem or "")

    @pytest.mark.parametrize(
        "forger",
        [pytest.param(None, id="plain-sha256-keeping-key-id"), pytest.param(OTHER_KEY, id="hmac-under-another-key")],
    )
    def test_a_forger_without_the_key_is_caught(self, forger: AuditKey | None) -> None:
        events = chain(5, keyed_from=1)
        events[2].comment = "forged"
        reseal(events, 2, forger)
        for event in events[2:]:
            event.key_id = KEY.key_id  # claiming the real key changes nothing: the HMAC is not theirs
        result = verify_chain(events, key=KEY)
        assert (result.ok, result.first_bad_seq, result.problem) == (False, 3, "content does not match its hash")

    def test_an_unkeyed_event_after_a_keyed_one_fails(self) -> None:
        events = chain(5, keyed_from=2)
        events[3].comment = "forged"
        reseal(events, 3, None)  # the rewritten tail as plain SHA-256: a downgrade from seq 4 on
        result = verify_chain(events, key=KEY)
        assert (result.ok, result.first_bad_seq, result.keyed_from) == (False, 4, 2)
        assert "unkeyed event after keyed ones" in (result.problem or "")

    def test_a_wholly_downgraded_chain_fails_where_the_key_is_configured(self) -> None:
        events = chain(5, keyed_from=3)
        reseal(events, 2, None)  # every keyed event rewritten as an unkeyed one
        assert verify_chain(events).ok  # without the key nothing can tell
        result = verify_chain(events, key=KEY)
        assert (result.ok, result.first_bad_seq, result.checked) == (False, 5, 5)
        assert "ends with an unkeyed event although [hitl] audit_key is set" in (result.problem or "")


class TestFactShapes:
    def test_a_votes_facts_are_every_field_of_the_vote_as_json(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        vote = mgr.approve(a.id, user=ALICE, comment="ok", metadata={"ticket": 7}).votes[0]
        facts = vote_facts(vote)
        # Every field of a vote, in one order: a field added to Vote must be added to the facts too.
        assert tuple(facts) == VOTE_FACTS and set(VOTE_FACTS) == {f.name for f in dataclasses.fields(vote)}
        assert facts["created_at"] == canonical_time(vote.created_at)
        assert (facts["user"], facts["user_roles"], facts["metadata"]) == ("alice", ["op"], {"ticket": 7})
        event = next(e for e in mgr.audit.events(a.id) if e.event_type == "vote")
        assert event.details[FACTS_VERSION_KEY] == 1 and event.details[FACTS_KEY] == {"vote": facts}

    def test_a_request_records_its_content_once_and_its_state_at_every_transition(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(context={"model": "m1"}))
        mgr.approve(a.id, user=ALICE)
        requested, vote, approved = mgr.audit.events(a.id)
        created = requested.details[FACTS_KEY]["request"]
        assert created == request_facts(a, content=True)
        assert (created["context"], created["state"], created["decided_by"]) == ({"model": "m1"}, "pending", None)
        assert FACTS_KEY not in vote.details or "request" not in vote.details[FACTS_KEY]
        final = approved.details[FACTS_KEY]["request"]
        assert final == request_facts(mgr.queries.get(a.id)) and "context" not in final
        assert (final["state"], final["decided_by"]) == ("approved", "alice")


Tamper = Callable[[Table, dict[str, Any]], Any]
REQUESTS: Table = ApprovalRequestRow.__table__  # type: ignore[assignment]
VOTES: Table = ApprovalVoteRow.__table__  # type: ignore[assignment]
LATER = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)


def trail(mgr: ApprovalManager, clock: Clock) -> dict[str, str]:
    """A store with every kind of transition: quorum with form values, rejection, escalation, cancel, delegation."""
    quorum = mgr.create(
        spec(required_approvals=2, context={"model": "m1"}, inputs={"ticket": Param("CHG-1", type="string")})
    )
    mgr.decide(
        quorum.id,
        Decision(
            action="approve", user=ALICE, source="api", comment="ok", metadata={"k": 1}, inputs={"ticket": "CHG-7"}
        ),
    )
    clock.advance(seconds=1)
    mgr.decide(quorum.id, Decision(action="approve", user=BOB, source="ui"))
    rejected = mgr.create(spec())
    mgr.reject(rejected.id, user=CAROL, reason="no")
    escalating = mgr.create(
        spec(
            timeout=dt.timedelta(minutes=1),
            timeout_action="escalate",
            escalation_targets=[EscalationLevel(approvers=("dave",), timeout=dt.timedelta(hours=1))],
            escalation_final_action="reject",
        )
    )
    clock.advance(minutes=2)
    assert mgr.apply_timeout(escalating.id).escalated
    cancelled = mgr.create(spec())
    mgr.cancel(cancelled.id, actor="admin", reason="withdrawn")
    mgr.delegations.create_delegation(
        actor=ALICE,
        delegate="bob",
        starts_at=clock.now - dt.timedelta(minutes=1),
        ends_at=clock.now + dt.timedelta(hours=1),
    )
    return {"quorum": quorum.id, "rejected": rejected.id, "escalating": escalating.id, "cancelled": cancelled.id}


def vote_id(store: ApprovalStore, request_id: str, user: str) -> int:
    with store.session() as session:
        return int(
            session.scalar(
                select(ApprovalVoteRow.id).where(ApprovalVoteRow.request_id == request_id, ApprovalVoteRow.user == user)
            )
        )


def change(store: ApprovalStore, statement: Any) -> None:
    """Run one statement on the store behind the manager's back, as anyone with its credentials could."""
    with store.engine.begin() as conn:
        # One row (an INSERT with RETURNING reports no count on PostgreSQL).
        assert conn.execute(statement).rowcount in (1, -1)


# (what is rewritten, the request it belongs to, the field verify names, the store's and the chain's values)
VOTE_REWRITES = [
    pytest.param({"user": "carol"}, "user", "carol", "alice", id="vote-user"),
    pytest.param({"inputs": {"ticket": "CHG-666"}}, "inputs", {"ticket": "CHG-666"}, {"ticket": "CHG-7"}, id="inputs"),
    pytest.param({"comment": "rubber stamp"}, "comment", "rubber stamp", "ok", id="comment"),
    pytest.param({"source": "slack"}, "source", "slack", "api", id="source"),
    pytest.param({"created_at": LATER}, "created_at", canonical_time(LATER), None, id="created-at"),
    pytest.param({"delegate": "mallory"}, "delegate", "mallory", None, id="delegate"),
    pytest.param({"content_digest": "0" * 64}, "content_digest", "0" * 64, None, id="content-digest"),
    pytest.param({"metadata": {"k": 2}}, "metadata", {"k": 2}, {"k": 1}, id="metadata"),
    # Equal in Python (True == 1), a different fact in JSON.
    pytest.param({"metadata": {"k": True}}, "metadata", {"k": True}, {"k": 1}, id="metadata-type"),
    pytest.param({"user_roles": ["admin"]}, "user_roles", ["admin"], ["op"], id="roles"),
    # Its copies of the request's columns (what the analytics read) must be the request's.
    pytest.param({"dag_id": "elsewhere"}, "dag_id", "elsewhere", "release", id="copy-dag-id"),
    pytest.param({"task_id": None}, "task_id", None, "gate", id="copy-task-id"),
    pytest.param({"requested_at": LATER}, "requested_at", canonical_time(LATER), None, id="copy-requested-at"),
]
REQUEST_REWRITES = [
    pytest.param("quorum", {"decided_by": "carol"}, "decided_by", "carol", "bob", id="decided-by"),
    pytest.param("rejected", {"state": "approved"}, "state", "approved", "rejected", id="state"),
    pytest.param("rejected", {"decision": "approved"}, "decision", "approved", "rejected", id="decision"),
    pytest.param("quorum", {"decided_at": LATER}, "decided_at", canonical_time(LATER), None, id="decided-at"),
    pytest.param("quorum", {"title": "Something else"}, "title", "Something else", "Release model", id="title"),
    pytest.param("quorum", {"context": {"model": "m2"}}, "context", {"model": "m2"}, {"model": "m1"}, id="context"),
    pytest.param(
        "escalating",
        {"allowed_approvers": ["dave", "mallory"]},
        "allowed_approvers",
        ["dave", "mallory"],
        ["dave"],
        id="widened-circle",
    ),
    pytest.param("cancelled", {"comment": "fine"}, "comment", "fine", "withdrawn", id="cancel-reason"),
]


class TestFacts:
    """The chain vouches for the rows: replaying each request's events must give exactly its rows."""

    def test_an_untouched_store_verifies(self, mgr: ApprovalManager, clock: Clock) -> None:
        trail(mgr, clock)
        result = mgr.audit.verify_audit_chain()
        assert result.ok, result
        assert (result.requests_verified, result.requests_hash_only, result.row) == (4, 0, None)

    @pytest.mark.parametrize(("values", "field", "store_value", "chain_value"), VOTE_REWRITES)
    def test_a_rewritten_vote_fails_naming_its_row(
        self,
        mgr: ApprovalManager,
        clock: Clock,
        store: ApprovalStore,
        values: dict[str, Any],
        field: str,
        store_value: Any,
        chain_value: Any,
    ) -> None:
        ids = trail(mgr, clock)
        row_id = vote_id(store, ids["quorum"], "alice")
        vote = next(v for v in mgr.queries.get(ids["quorum"]).votes if v.user == "alice")
        change(store, update(VOTES).where(VOTES.c.id == row_id).values(**values))
        result = mgr.audit.verify_audit_chain()
        assert not result.ok and result.row is not None
        if field in {"created_at", "content_digest"}:  # what the vote was cast with
            chain_value = vote_facts(vote)[field]
        if field == "requested_at":  # the request's own
            chain_value = canonical_time(mgr.queries.get(ids["quorum"]).requested_at)
        assert result.row.to_dict() == {
            "table": "approval_votes",
            "id": row_id,
            "request_id": ids["quorum"],
            "field": field,
            "store": store_value,
            "chain": chain_value,
            "seq": next(
                e.seq for e in mgr.audit.events(ids["quorum"]) if e.event_type == "vote" and e.actor == "alice"
            ),
        }
        assert f"approval_votes row {row_id}: {field}" in (result.problem or "")
        assert result.checked == len(mgr.audit.events())  # every link held: only the row was changed

    @pytest.mark.parametrize(("request_name", "values", "field", "store_value", "chain_value"), REQUEST_REWRITES)
    def test_a_rewritten_request_fails_naming_its_row(
        self,
        mgr: ApprovalManager,
        clock: Clock,
        store: ApprovalStore,
        request_name: str,
        values: dict[str, Any],
        field: str,
        store_value: Any,
        chain_value: Any,
    ) -> None:
        ids = trail(mgr, clock)
        request_id = ids[request_name]
        if field == "decided_at":
            chain_value = canonical_time(mgr.queries.get(request_id).decided_at)  # type: ignore[arg-type]
        change(store, update(REQUESTS).where(REQUESTS.c.id == request_id).values(**values))
        row = mgr.audit.verify_audit_chain().row
        assert row is not None
        assert (row.table, row.id, row.request_id, row.field, row.store, row.chain) == (
            "approval_requests",
            request_id,
            request_id,
            field,
            store_value,
            chain_value,
        )

    def test_a_deleted_vote_fails_naming_the_vote_the_chain_records(
        self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore
    ) -> None:
        ids = trail(mgr, clock)
        change(store, delete(VOTES).where(VOTES.c.id == vote_id(store, ids["quorum"], "alice")))
        result = mgr.audit.verify_audit_chain()
        assert not result.ok and result.row is not None
        assert (result.row.table, result.row.id, result.row.request_id, result.row.store) == (
            "approval_votes",
            None,
            ids["quorum"],
            None,
        )
        assert result.row.chain["user"] == "alice" and "has no row" in (result.problem or "")

    def test_an_inserted_vote_fails_naming_its_row(
        self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore
    ) -> None:
        ids = trail(mgr, clock)
        request = mgr.queries.get(ids["rejected"])
        forged = {
            "request_id": ids["rejected"],
            "dag_id": request.dag_id,
            "task_id": request.task_id,
            "requested_at": request.requested_at,
            "user": "mallory",
            "user_roles": ["op"],
            "vote": "approve",
            "source": "api",
            "escalation_level": 0,
            "metadata": {},
            "inputs": {},
            "created_at": clock.now,
        }
        change(store, insert(VOTES).values(**forged))
        result = mgr.audit.verify_audit_chain()
        assert not result.ok and result.row is not None
        assert (result.row.table, result.row.request_id, result.row.field, result.row.chain) == (
            "approval_votes",
            ids["rejected"],
            None,
            None,
        )
        assert result.row.id == vote_id(store, ids["rejected"], "mallory") and result.row.store["user"] == "mallory"
        assert "no audit event records it" in (result.problem or "")

    def test_a_request_no_event_speaks_of_fails(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec())
        with store.engine.begin() as conn:
            conn.execute(delete(ApprovalEventRow.__table__).where(ApprovalEventRow.__table__.c.request_id == a.id))
        row = mgr.audit.verify_audit_chain().row
        assert row is not None and (row.table, row.id, row.field, row.seq) == ("approval_requests", a.id, None, None)

    def test_a_deleted_request_is_no_lie(self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore) -> None:
        ids = trail(mgr, clock)
        change(store, delete(REQUESTS).where(REQUESTS.c.id == ids["quorum"]))
        result = mgr.audit.verify_audit_chain()
        assert result.ok and result.requests_verified == 3

    def test_every_page_of_requests_is_compared(
        self, mgr: ApprovalManager, store: ApprovalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(audit, "_PAGE", 2)
        ids = [mgr.approve(mgr.create(spec()).id, user=ALICE).id for _ in range(5)]
        # Three pages of at most two requests, every one of them compared.
        assert mgr.audit.verify_audit_chain().requests_verified == 5
        for request_id in ids:
            change(store, update(REQUESTS).where(REQUESTS.c.id == request_id).values(decided_by="carol"))
            row = mgr.audit.verify_audit_chain().row
            assert row is not None and (row.id, row.field) == (request_id, "decided_by")
            change(store, update(REQUESTS).where(REQUESTS.c.id == request_id).values(decided_by="alice"))


def strip_facts(store: ApprovalStore) -> None:
    """Rewrite the whole chain as an airflow-hitl before facts wrote it (unkeyed: anyone could)."""
    events: Table = ApprovalEventRow.__table__  # type: ignore[assignment]
    with store.engine.begin() as conn:
        rows = conn.execute(select(events).order_by(events.c.seq)).all()
        prev = GENESIS_HASH
        for row in rows:
            details = {k: v for k, v in row.details.items() if k not in (FACTS_KEY, FACTS_VERSION_KEY)}
            link = event_hash(
                prev_hash=prev,
                request_id=row.request_id,
                event_type=row.event_type,
                actor=row.actor,
                source=row.source,
                comment=row.comment,
                details=details,
                created_at=row.created_at,
            )
            conn.execute(
                update(events).where(events.c.seq == row.seq).values(details=details, prev_hash=prev, hash=link)
            )
            prev = link


class TestEventsBeforeFacts:
    def test_requests_without_facts_are_checked_by_their_links_only(
        self, mgr: ApprovalManager, store: ApprovalStore
    ) -> None:
        old = mgr.approve(mgr.create(spec()).id, user=ALICE)
        strip_facts(store)
        result = mgr.audit.verify_audit_chain()
        assert (result.ok, result.requests_verified, result.requests_hash_only) == (True, 0, 1)
        change(store, update(VOTES).where(VOTES.c.request_id == old.id).values(user="carol"))
        assert mgr.audit.verify_audit_chain().ok  # the residual risk of older events (see audit's doc)

    def test_a_request_opened_before_facts_is_compared_for_what_came_after(
        self, mgr: ApprovalManager, store: ApprovalStore
    ) -> None:
        mixed = mgr.create(spec(required_approvals=2))
        mgr.approve(mixed.id, user=BOB)
        strip_facts(store)
        mgr.approve(mixed.id, user=ALICE)
        result = mgr.audit.verify_audit_chain()
        assert (result.ok, result.requests_verified) == (True, 1)
        change(store, update(REQUESTS).where(REQUESTS.c.id == mixed.id).values(decided_by="carol"))
        row = mgr.audit.verify_audit_chain().row
        assert row is not None and (row.field, row.store, row.chain) == ("decided_by", "carol", "alice")

    def test_facts_of_an_unknown_version_fail(self, store: ApprovalStore) -> None:
        mgr = ApprovalManager(store=store, audit_key="")
        a = mgr.create(spec())
        with mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
            mgr.transactions.audit(
                session,
                request_id=a.id,
                event_type="note",
                actor=None,
                source="system",
                at=mgr._clock(),
                details={FACTS_VERSION_KEY: 99, FACTS_KEY: {}},
            )
        result = mgr.audit.verify_audit_chain()
        assert not result.ok and "version 99" in (result.problem or "")


class TestKeyedStore:
    """A keyed chain in the store: HMAC links from a recorded point on."""

    @staticmethod
    def keyed(
        store: ApprovalStore, clock: Clock, secret: str = "the audit key, long and random in real life"
    ) -> ApprovalManager:
        return ApprovalManager(store=store, clock=clock, audit_key=secret)

    def test_a_keyed_store_verifies_and_reports_its_key(self, store: ApprovalStore, clock: Clock) -> None:
        mgr = self.keyed(store, clock)
        trail(mgr, clock)
        result = mgr.audit.verify_audit_chain()
        assert result.ok, result
        assert (result.keyed_from, result.key_id) == (mgr.audit.events()[0].seq, KEY.key_id)
        assert {e.key_id for e in mgr.audit.events()} == {KEY.key_id}

    def test_legacy_unkeyed_events_then_keyed_ones_verify(self, store: ApprovalStore, clock: Clock) -> None:
        before = ApprovalManager(store=store, clock=clock, audit_key="")
        before.approve(before.create(spec()).id, user=ALICE)
        unkeyed = len(before.audit.events())
        mgr = self.keyed(store, clock)
        mgr.approve(mgr.create(spec()).id, user=ALICE)
        result = mgr.audit.verify_audit_chain()
        assert result.ok, result
        assert result.keyed_from == mgr.audit.events()[unkeyed].seq
        assert [e.key_id for e in mgr.audit.events()] == [None] * unkeyed + [KEY.key_id] * unkeyed

    @pytest.mark.parametrize(
        ("forger", "caught"),
        [
            pytest.param("", True, id="plain-sha256"),
            pytest.param("a key the attacker chose", True, id="another-key"),
            # The residual risk (audit's doc): whoever holds the key forges a consistent chain.
            pytest.param("the audit key, long and random in real life", False, id="holder-of-the-key"),
        ],
    )
    def test_a_forger_who_rewrites_and_reseals_an_event_is_caught_without_the_key(
        self, store: ApprovalStore, clock: Clock, forger: str, caught: bool
    ) -> None:
        mgr = self.keyed(store, clock)
        ids = trail(mgr, clock)
        # Rewrite who voted in the row and in its event, and recompute every link from there on.
        events: Table = ApprovalEventRow.__table__  # type: ignore[assignment]
        forging_key = AuditKey.of(forger)
        change(store, update(VOTES).where(VOTES.c.id == vote_id(store, ids["quorum"], "alice")).values(user="carol"))
        with store.engine.begin() as conn:
            rows = conn.execute(select(events).order_by(events.c.seq)).all()
            target = next(r.seq for r in rows if r.event_type == "vote" and r.actor == "alice")
            prev = GENESIS_HASH
            for row in rows:
                if row.seq >= target:
                    details = dict(row.details)
                    if row.seq == target:
                        details[FACTS_KEY] = {"vote": {**details[FACTS_KEY]["vote"], "user": "carol"}}
                    link = event_hash(
                        prev_hash=prev,
                        request_id=row.request_id,
                        event_type=row.event_type,
                        actor="carol" if row.seq == target else row.actor,
                        source=row.source,
                        comment=row.comment,
                        details=details,
                        created_at=row.created_at,
                        key=forging_key,
                    )
                    conn.execute(
                        update(events)
                        .where(events.c.seq == row.seq)
                        .values(
                            actor="carol" if row.seq == target else row.actor,
                            details=details,
                            prev_hash=prev,
                            hash=link,
                            key_id=KEY.key_id,
                        )
                    )
                    prev = link
                else:
                    prev = row.hash
        result = mgr.audit.verify_audit_chain()
        if caught:
            assert (result.ok, result.first_bad_seq, result.problem) == (
                False,
                target,
                "content does not match its hash",
            )
        else:
            assert result.ok, result

    def test_verifying_a_keyed_store_needs_the_key(self, store: ApprovalStore, clock: Clock) -> None:
        mgr = self.keyed(store, clock)
        mgr.create(spec())
        unkeyed = ApprovalManager(store=store, audit_key="").audit.verify_audit_chain()
        assert not unkeyed.ok and "set [hitl] audit_key" in (unkeyed.problem or "")
        wrong = self.keyed(store, clock, "a key the attacker chose").audit.verify_audit_chain()
        assert not wrong.ok and OTHER_KEY.key_id in (wrong.problem or "")

    def test_an_unkeyed_store_fails_once_a_key_is_configured_until_a_keyed_event(
        self, store: ApprovalStore, clock: Clock
    ) -> None:
        ApprovalManager(store=store, clock=clock, audit_key="").create(spec())
        mgr = self.keyed(store, clock)
        tail = mgr.audit.verify_audit_chain()
        assert not tail.ok and "ends with an unkeyed event" in (tail.problem or "")
        mgr.create(spec())
        assert mgr.audit.verify_audit_chain().ok

    @pytest.mark.parametrize(
        ("secret", "named"),
        [
            pytest.param("", r"has no \[hitl\] audit_key", id="no-key"),
            pytest.param("another", "is another", id="other-key"),
        ],
    )
    def test_a_writer_refuses_to_append_after_a_keyed_event_under_anything_else(
        self, store: ApprovalStore, clock: Clock, secret: str, named: str
    ) -> None:
        mgr = self.keyed(store, clock)
        a = mgr.create(spec())
        count = len(mgr.audit.events())
        other = ApprovalManager(store=store, clock=clock, audit_key=secret)
        with pytest.raises(StoreError, match=named):
            other.approve(a.id, user=ALICE)
        assert (len(mgr.audit.events()), mgr.queries.get(a.id).votes) == (
            count,
            (),
        )  # nothing of the refused vote was written
        assert mgr.audit.verify_audit_chain().ok

    def test_the_writer_that_starts_the_keyed_suffix_says_so_outside_the_store(
        self, store: ApprovalStore, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        ApprovalManager(store=store, clock=clock, audit_key="").create(spec())
        mgr = self.keyed(store, clock)
        with caplog.at_level(logging.WARNING, logger="airflow_hitl.transaction"):
            mgr.create(spec())
            mgr.create(spec())
        unkeyed_tail, first_keyed, _ = mgr.audit.events()
        said = [r.getMessage() for r in caplog.records if "keyed from here on" in r.getMessage()]
        assert len(said) == 1 and f"after seq {unkeyed_tail.seq} " in said[0] and KEY.key_id in said[0]
        assert mgr.audit.verify_audit_chain().keyed_from == first_keyed.seq

    def test_the_key_is_read_from_the_option_once(self, store: ApprovalStore, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__AUDIT_KEY", "the audit key, long and random in real life")
        mgr = ApprovalManager(store=store)
        monkeypatch.delenv("AIRFLOW__HITL__AUDIT_KEY")
        mgr.create(spec())
        assert [e.key_id for e in mgr.audit.events()] == [KEY.key_id]

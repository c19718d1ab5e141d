"""ApprovalManager: state machine, policies, audit — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text

from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalNotFound,
    ApprovalNotPending,
    InvalidInput,
    NotAllowed,
)
from airflow_hitl.manager import ApprovalFilter, ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalEventRow, ApprovalVoteRow
from airflow_hitl.policy import EscalationLevel, Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])
RICKY = Principal.of("ricky", ["op"])  # the requester in tests.helpers.spec
MALLORY = Principal.of("mallory", ["viewer"])


def vote_count(store: ApprovalStore, request_id: str) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).where(ApprovalVoteRow.request_id == request_id)) or 0


class TestCreate:
    def test_create_then_get(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(context={"accuracy": 0.97}, metadata={"risk": "high"}))
        got = mgr.get(created.id)
        assert got.state == "pending"
        assert got.context == {"accuracy": 0.97}
        assert got.metadata == {"risk": "high"}
        assert got.requested_by == "ricky"
        assert [e.event_type for e in mgr.events(created.id)] == ["requested"]

    def test_same_try_is_idempotent(self, mgr: ApprovalManager) -> None:
        s = spec()
        first = mgr.create(s)
        again = mgr.create(s)
        assert again.id == first.id
        assert mgr.list()[1] == 1

    def test_new_try_supersedes_the_waiting_one(self, mgr: ApprovalManager) -> None:
        first = mgr.create(spec(run_id="r1", try_number=1))
        second = mgr.create(spec(run_id="r1", try_number=2))
        assert second.id != first.id
        old = mgr.get(first.id)
        assert old.state == "cancelled"
        assert "superseded by try 2" in (old.comment or "")
        assert mgr.get(second.id).state == "pending"

    def test_unknown_id(self, mgr: ApprovalManager) -> None:
        with pytest.raises(ApprovalNotFound):
            mgr.get("00000000-0000-0000-0000-000000000000")

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            pytest.param({"title": ""}, "title", id="empty-title"),
            pytest.param({"required_approvals": 0}, "required_approvals", id="zero-approvals"),
            pytest.param({"timeout_action": "explode", "timeout": dt.timedelta(1)}, "timeout_action", id="bad-action"),
            pytest.param({"timeout_action": "approve"}, "timeout", id="action-without-timeout"),
            pytest.param({"require_all": True}, "require_all", id="require-all-without-list"),
            pytest.param(
                {"allowed_approvers": ["a"], "required_approvals": 2}, "required_approvals", id="quorum-too-big"
            ),
            pytest.param({"context": {"x": object()}}, "context", id="context-not-json"),
        ],
    )
    def test_invalid_spec_writes_nothing(self, mgr: ApprovalManager, overrides: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.create(spec(**overrides))
        assert err.value.field == field
        assert mgr.list()[1] == 0


class TestVoting:
    def test_single_approval_approves(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        done = mgr.approve(a.id, user=ALICE, comment="lgtm")
        assert done.state == "approved"
        assert done.decision == "approved"
        assert done.decided_by == "alice"
        assert done.decision_source == "api"
        assert done.approvers == ["alice"]
        assert [e.event_type for e in mgr.events(a.id)] == ["requested", "vote", "approved"]

    def test_quorum_two_of_three(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob", "carol"], required_approvals=2))
        first = mgr.approve(a.id, user=ALICE)
        assert first.state == "pending"
        assert first.approvers == ["alice"]
        second = mgr.approve(a.id, user=BOB, source="ui")
        assert second.state == "approved"
        assert second.approvers == ["alice", "bob"]
        assert second.decision_source == "ui"

    def test_require_all(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"], require_all=True))
        assert mgr.approve(a.id, user=ALICE).state == "pending"
        assert mgr.approve(a.id, user=BOB).state == "approved"

    def test_one_rejection_vetoes(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(required_approvals=3))
        mgr.approve(a.id, user=ALICE)
        mgr.approve(a.id, user=BOB)
        done = mgr.reject(a.id, user=CAROL, reason="metrics regressed on EU")
        assert done.state == "rejected"
        assert done.decided_by == "carol"
        assert "metrics regressed" in (done.comment or "")

    def test_reject_needs_a_reason(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec())
        with pytest.raises(InvalidInput) as err:
            mgr.reject(a.id, user=ALICE, reason="  ")
        assert err.value.field == "reason"
        assert mgr.get(a.id).state == "pending"
        assert vote_count(store, a.id) == 0

    def test_self_approval_refused_by_default(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec())
        with pytest.raises(NotAllowed) as err:
            mgr.approve(a.id, user=RICKY)
        assert "triggered this run" in err.value.reason
        assert vote_count(store, a.id) == 0
        assert mgr.can_approve(RICKY, mgr.get(a.id)).code == "self_approval"

    def test_self_approval_when_allowed(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allow_self_approval=True))
        assert mgr.approve(a.id, user=RICKY).state == "approved"

    def test_requester_does_not_count_towards_require_all(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["ricky", "alice"], require_all=True))
        assert mgr.approve(a.id, user=ALICE).state == "approved"

    def test_duplicate_vote_refused(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec(required_approvals=2))
        mgr.approve(a.id, user=ALICE)
        with pytest.raises(AlreadyVoted):
            mgr.approve(a.id, user=ALICE)
        with pytest.raises(AlreadyVoted):
            mgr.reject(a.id, user=ALICE, reason="changed my mind")
        assert vote_count(store, a.id) == 1
        assert mgr.get(a.id).state == "pending"

    def test_allowed_users_and_roles(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec(allowed_approvers=["alice"], allowed_roles=["ml-leads"], required_approvals=2))
        with pytest.raises(NotAllowed, match="not an allowed approver"):
            mgr.approve(a.id, user=MALLORY)
        with pytest.raises(NotAllowed):
            mgr.reject(a.id, user=BOB, reason="no")
        assert vote_count(store, a.id) == 0
        mgr.approve(a.id, user=ALICE)
        done = mgr.approve(a.id, user=Principal.of("lead", ["ml-leads"]))
        assert done.state == "approved"
        assert done.approvers == ["alice", "lead"]

    @pytest.mark.parametrize("final", ["approve", "reject", "cancel"])
    def test_no_vote_after_decision(self, mgr: ApprovalManager, store: ApprovalStore, final: str) -> None:
        a = mgr.create(spec())
        if final == "approve":
            mgr.approve(a.id, user=ALICE)
        elif final == "reject":
            mgr.reject(a.id, user=ALICE, reason="no")
        else:
            mgr.cancel(a.id, actor="admin", reason="withdrawn")
        with pytest.raises(ApprovalNotPending):
            mgr.approve(a.id, user=BOB)
        assert vote_count(store, a.id) == (0 if final == "cancel" else 1)

    def test_vote_after_expiry_refused(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=5), timeout_action="reject"))
        clock.advance(minutes=5)
        with pytest.raises(ApprovalNotPending, match="expired"):
            mgr.approve(a.id, user=ALICE)
        assert mgr.can_approve(ALICE, mgr.get(a.id)).code == "expired"

    def test_vote_on_unknown_request(self, mgr: ApprovalManager) -> None:
        with pytest.raises(ApprovalNotFound):
            mgr.approve("5b0f7a3e-0000-4000-8000-000000000000", user=ALICE)


class TestTimeout:
    @pytest.mark.parametrize(("action", "decision"), [("approve", "approved"), ("reject", "rejected")])
    def test_timeout_action(self, mgr: ApprovalManager, clock: Clock, action: str, decision: str) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=10), timeout_action=action))
        assert mgr.apply_timeout(a.id).applied is False
        clock.advance(minutes=10)
        outcome = mgr.apply_timeout(a.id)
        assert outcome.applied
        assert outcome.approval.state == "timeout"
        assert outcome.approval.decision == decision
        assert outcome.approval.decision_source == "timeout"
        again = mgr.apply_timeout(a.id)
        assert again.applied is False
        assert [e.event_type for e in mgr.events(a.id)].count("timeout") == 1

    def test_timeout_after_decision_changes_nothing(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=1), timeout_action="reject"))
        mgr.approve(a.id, user=ALICE)
        clock.advance(minutes=2)
        outcome = mgr.apply_timeout(a.id)
        assert outcome.applied is False
        assert outcome.approval.state == "approved"

    def test_escalation_levels_then_final_action(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=10),
                timeout_action="escalate",
                escalation_targets=[
                    EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=30)),
                    EscalationLevel(roles=("admin",), timeout=dt.timedelta(hours=1), required_approvals=1),
                ],
                escalation_final_action="approve",
            )
        )
        with pytest.raises(NotAllowed):
            mgr.approve(a.id, user=CAROL)
        clock.advance(minutes=10)
        first = mgr.apply_timeout(a.id)
        assert first.escalated
        assert first.approval.state == "escalated"
        assert first.approval.escalation_level == 1
        assert first.approval.allowed_approvers == ("bob", "carol")
        assert first.approval.expires_at == clock.now + dt.timedelta(minutes=30)
        clock.advance(minutes=30)
        second = mgr.apply_timeout(a.id)
        assert second.escalated
        assert second.approval.allowed_roles == ("admin",)
        clock.advance(hours=1)
        final = mgr.apply_timeout(a.id)
        assert final.escalated is False
        assert final.approval.state == "timeout"
        assert final.approval.decision == "approved"
        kinds = [e.event_type for e in mgr.events(a.id)]
        assert kinds == ["requested", "escalated", "escalated", "timeout"]

    def test_escalation_approver_decides(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=1)
        mgr.apply_timeout(a.id)
        done = mgr.approve(a.id, user=CAROL)
        assert done.state == "approved"
        assert done.decided_by == "carol"


class TestCancel:
    def test_cancel_pending(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        done = mgr.cancel(a.id, actor="admin", reason="release postponed")
        assert done.state == "cancelled"
        assert done.comment == "release postponed"

    def test_cancel_twice(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.cancel(a.id, actor="admin", reason="x")
        with pytest.raises(ApprovalNotPending):
            mgr.cancel(a.id, actor="admin", reason="x")


class TestQueries:
    def test_list_filters_pagination_and_order(self, mgr: ApprovalManager, clock: Clock) -> None:
        ids = []
        for i in range(5):
            clock.advance(seconds=1)
            ids.append(mgr.create(spec(dag_id="etl" if i % 2 else "ml", requested_by=f"u{i}")).id)
        mgr.approve(ids[0], user=ALICE)
        items, total = mgr.list(ApprovalFilter(dag_id="ml"))
        assert total == 3
        assert {a.dag_id for a in items} == {"ml"}
        page, total = mgr.list(limit=2, offset=1, order_by="requested_at")
        assert total == 5
        assert [a.id for a in page] == ids[1:3]
        newest, _ = mgr.list(limit=1)
        assert newest[0].id == ids[-1]
        pending, total = mgr.pending()
        assert total == 4
        assert ids[0] not in {a.id for a in pending}
        history, total = mgr.history()
        assert [a.id for a in history] == [ids[0]]
        assert mgr.list(ApprovalFilter(requested_by="u3"))[1] == 1
        assert mgr.list(ApprovalFilter(decided_by="alice"))[1] == 1

    def test_history_date_range(self, mgr: ApprovalManager, clock: Clock) -> None:
        early = mgr.create(spec())
        mgr.approve(early.id, user=ALICE)
        cut = clock.advance(hours=1)
        late = mgr.create(spec())
        clock.advance(minutes=1)
        mgr.reject(late.id, user=ALICE, reason="no")
        assert [a.id for a in mgr.history(ApprovalFilter(since=cut))[0]] == [late.id]
        assert [a.id for a in mgr.history(ApprovalFilter(until=cut))[0]] == [early.id]
        assert [a.id for a in mgr.history(ApprovalFilter(states=["rejected"]))[0]] == [late.id]

    def test_a_page_beyond_one_batch_of_votes_keeps_every_vote(self, mgr: ApprovalManager) -> None:
        # SQLite reads a page's votes 500 requests at a time: both ends of a 501-request page.
        ids = [mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2)).id for _ in range(501)]
        for request_id in (ids[0], ids[-1]):
            mgr.approve(request_id, user=BOB)
        page, total = mgr.list(limit=1000, order_by="requested_at")
        assert total == 501
        voted = {a.id: [v.user for v in a.votes] for a in page if a.votes}
        assert voted == {ids[0]: ["bob"], ids[-1]: ["bob"]}

    def test_a_listed_request_is_the_request_got_alone(self, mgr: ApprovalManager) -> None:
        # Pages are read as plain rows with JSON columns as text; one request through the ORM.
        # Both must give the same record: every field, votes in the order they were cast.
        rich = mgr.create(
            spec(
                context={"rows": 3, "nested": {"ok": [1, 2.5, None, "x"]}, "empty": {}},
                metadata={"risk": "high"},
                allowed_approvers=["alice", "bob", "carol"],
                allowed_roles=["op"],
                required_approvals=3,
                escalation_targets=(EscalationLevel(approvers=("dave",), timeout=dt.timedelta(hours=1)),),
                timeout=dt.timedelta(hours=2),
                timeout_action="escalate",
                escalation_final_action="reject",
            )
        )
        mgr.approve(rich.id, user=BOB, comment="first", metadata={"ticket": 7})
        mgr.approve(rich.id, user=ALICE)
        plain = mgr.create(spec())
        listed = {a.id: a for a in mgr.pending()[0]}
        assert listed[rich.id] == mgr.get(rich.id)
        assert [v.user for v in listed[rich.id].votes] == ["bob", "alice"]
        assert listed[rich.id].votes[0].metadata == {"ticket": 7}
        assert listed[rich.id].context == {"rows": 3, "nested": {"ok": [1, 2.5, None, "x"]}, "empty": {}}
        assert listed[plain.id] == mgr.get(plain.id)
        assert listed[plain.id].votes == ()
        assert listed[rich.id].to_dict() == mgr.get(rich.id).to_dict()

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [({"limit": -1}, "limit"), ({"offset": -5}, "offset"), ({"order_by": "password"}, "order_by")],
    )
    def test_bad_paging(self, mgr: ApprovalManager, kwargs: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.list(**kwargs)
        assert err.value.field == field

    def test_pending_for_says_who_can_approve(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2))
        mgr.approve(a.id, user=BOB)
        flags = {user.name: mgr.pending_for(user)[0][0][1] for user in (ALICE, BOB, MALLORY)}
        assert flags["alice"].allowed
        assert flags["bob"].code == "already_voted"
        assert flags["mallory"].code == "not_allowed"

    def test_wait_states_in_one_query(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        ids = [mgr.create(spec()).id for _ in range(3)]
        mgr.approve(ids[1], user=ALICE)
        many = ids + [f"00000000-0000-4000-8000-{i:012d}" for i in range(40_000)]
        statements: list[str] = []
        from sqlalchemy import event

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(store.engine, "before_cursor_execute", count)
        try:
            states = mgr.wait_states(many)
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
        assert set(states) == set(ids)
        assert states[ids[1]].state == "approved"
        assert states[ids[0]].is_waiting


class TestAutomatic:
    def test_decide_automatically(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(approval_type="auto"))
        done = mgr.decide_automatically(a.id, source="auto", comment="auto")
        assert done.approved
        assert done.decided_by is None
        assert done.decision_source == "auto"


class TestAudit:
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

    def test_every_event_names_actor_and_source(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.approve(a.id, user=ALICE, source="slack", client={"client_address": "10.0.0.1"})
        vote = next(e for e in mgr.events(a.id) if e.event_type == "vote")
        assert vote.actor == "alice"
        assert vote.source == "slack"
        assert vote.details["client_address"] == "10.0.0.1"
        assert vote.details["vote"] == "approve"

"""Delegation: who may create and end one, validation, and deciding as a delegate (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from airflow_hitl.delegation import AmbiguousDelegation, DelegationNotFound
from airflow_hitl.exceptions import AlreadyVoted, InvalidInput, NotAllowed
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalVoteRow
from airflow_hitl.policy import Principal
from airflow_hitl.records import decision_summary
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["viewer"])
CAROL = Principal.of("carol", ["op"])
RICKY = Principal.of("ricky", ["op"])  # the requester in tests.helpers.spec
ADMIN = Principal.of("root", ["admin"])
ROLES = {"alice": {"op", "finance"}, "bob": {"viewer"}, "carol": {"op"}, "ricky": {"op"}}


def delegate(mgr: ApprovalManager, clock: Clock, actor: Principal = ALICE, to: str = "bob", **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "starts_at": clock.now - dt.timedelta(minutes=1),
        "ends_at": clock.now + dt.timedelta(hours=8),
    }
    fields.update(kw)
    return mgr.delegations.create_delegation(actor=actor, delegate=to, **fields)


def roles_of(name: str) -> set[str] | None:
    return ROLES.get(name)


def decide(mgr: ApprovalManager, request_id: str, user: Principal, action: str = "approve", **kw: Any) -> Any:
    if action == "reject":
        kw.setdefault("reason", "no")
    return mgr.decide(request_id, Decision(action=action, user=user, source="api", delegator_roles=roles_of, **kw))


class TestCreate:
    def test_create_lists_and_audits(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = delegate(mgr, clock, dag_ids=["release", "billing", "release"])
        assert (made.delegator, made.delegate, made.created_by) == ("alice", "bob", "alice")
        assert made.dag_ids == ("billing", "release")
        assert made.state_at(clock.now) == "active"
        for who in ("alice", "bob"):
            items, total = mgr.delegations.list_delegations(involving=who)
            assert total == 1 and items[0].id == made.id
        assert mgr.delegations.list_delegations(involving="carol") == ([], 0)
        event = mgr.audit.events()[-1]
        assert event.event_type == "delegation_created" and event.request_id is None
        assert event.actor == "alice" and event.details["delegation_id"] == made.id
        assert mgr.audit.verify_audit_chain().ok

    def test_every_bad_field_named_at_once(self, mgr: ApprovalManager, clock: Clock) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.delegations.create_delegation(
                actor=ALICE,
                delegate="  ",
                starts_at=dt.datetime(2026, 1, 1),  # naive
                ends_at="tomorrow",
                dag_ids=["ok", 3],
            )
        fields = {f for f, _ in err.value.problems}
        assert fields == {"delegate", "starts_at", "ends_at", "dag_ids"}
        assert mgr.delegations.list_delegations() == ([], 0)
        assert mgr.audit.events() == []

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            pytest.param({"to": "alice"}, "delegate", id="self"),
            pytest.param({"ends_at_minutes": -30}, "ends_at", id="in-the-past"),
            pytest.param({"starts_at_minutes": 120, "ends_at_minutes": 60}, "ends_at", id="before-start"),
            pytest.param({"dag_ids": []}, "dag_ids", id="empty-dags"),
            pytest.param({"dag_ids": "release"}, "dag_ids", id="dags-as-string"),
        ],
    )
    def test_refused(self, mgr: ApprovalManager, clock: Clock, changes: dict[str, Any], field: str) -> None:
        kw: dict[str, Any] = {"to": changes.get("to", "bob")}
        if "dag_ids" in changes:
            kw["dag_ids"] = changes["dag_ids"]
        if "starts_at_minutes" in changes:
            kw["starts_at"] = clock.now + dt.timedelta(minutes=changes["starts_at_minutes"])
        if "ends_at_minutes" in changes:
            kw["ends_at"] = clock.now + dt.timedelta(minutes=changes["ends_at_minutes"])
        with pytest.raises(InvalidInput) as err:
            delegate(mgr, clock, **kw)
        assert err.value.field == field
        assert mgr.delegations.list_delegations() == ([], 0)

    def test_unknown_delegate_refused_when_the_auth_manager_can_tell(self, mgr: ApprovalManager, clock: Clock) -> None:
        with pytest.raises(InvalidInput, match="no user 'ghost'"):
            delegate(mgr, clock, to="ghost", user_known=lambda name: name in ROLES)
        assert delegate(mgr, clock, to="ghost", user_known=lambda name: None).delegate == "ghost"

    def test_only_an_admin_delegates_for_someone_else(self, mgr: ApprovalManager, clock: Clock) -> None:
        with pytest.raises(NotAllowed, match="only an admin"):
            delegate(mgr, clock, actor=CAROL, delegator="alice")
        assert mgr.delegations.list_delegations() == ([], 0)
        made = delegate(mgr, clock, actor=ADMIN, delegator="alice", admin=True)
        assert (made.delegator, made.created_by) == ("alice", "root")
        assert mgr.audit.events()[-1].details["admin"] is True

    def test_overlapping_delegations_are_allowed(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, to="bob")
        delegate(mgr, clock, to="carol")
        delegate(mgr, clock, to="bob", dag_ids=["release"])
        assert mgr.delegations.list_delegations(involving="alice")[1] == 3


class TestEnd:
    def test_delegator_ends_it_now_and_it_is_audited(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = delegate(mgr, clock)
        clock.advance(minutes=5)
        ended = mgr.delegations.end_delegation(made.id, actor=ALICE)
        assert ended.state_at(clock.now) == "ended"
        assert (ended.ended_at, ended.ended_by) == (clock.now, "alice")
        assert mgr.delegations.delegations_to("bob") == []
        assert mgr.delegations.list_delegations(active_only=True) == ([], 0)
        assert [e.event_type for e in mgr.audit.events()] == ["delegation_created", "delegation_ended"]
        # Ending it again changes nothing.
        assert mgr.delegations.end_delegation(made.id, actor=ALICE) == ended
        assert len(mgr.audit.events()) == 2
        assert mgr.audit.verify_audit_chain().ok

    def test_only_the_delegator_or_an_admin_ends_it(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = delegate(mgr, clock)
        for who in (BOB, CAROL):
            with pytest.raises(NotAllowed, match="only the delegator or an admin"):
                mgr.delegations.end_delegation(made.id, actor=who)
        assert mgr.delegations.get_delegation(made.id).ended_at is None
        assert mgr.delegations.end_delegation(made.id, actor=ADMIN, admin=True).ended_by == "root"

    def test_unknown_id(self, mgr: ApprovalManager) -> None:
        with pytest.raises(DelegationNotFound):
            mgr.delegations.end_delegation("00000000-0000-4000-8000-000000000000", actor=ALICE)

    def test_states_over_time(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = delegate(
            mgr, clock, starts_at=clock.now + dt.timedelta(hours=1), ends_at=clock.now + dt.timedelta(hours=2)
        )
        assert made.state_at(clock.now) == "scheduled"
        assert made.state_at(clock.now + dt.timedelta(minutes=90)) == "active"
        assert made.state_at(clock.now + dt.timedelta(hours=2)) == "expired"


class TestDecideAsDelegate:
    def test_vote_counts_once_as_the_delegators(self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore) -> None:
        made = delegate(mgr, clock)
        request = mgr.create(spec(allowed_approvers=["alice", "carol"], required_approvals=2))
        after = decide(mgr, request.id, BOB, comment="covering for alice")
        assert [(v.user, v.delegate) for v in after.votes] == [("alice", "bob")]
        assert after.votes[0].cast_by == "bob for alice"
        assert after.votes[0].user_roles == ("finance", "op")  # the delegator's roles, not bob's
        assert after.approvers == ["alice"] and after.state == "pending"
        # Alice counts once: neither she nor bob may cast her vote again.
        with pytest.raises(AlreadyVoted, match="alice"):
            decide(mgr, request.id, ALICE)
        # One who voted gets 409 (already voted) on every way in, as the API documents, not 403.
        with pytest.raises(AlreadyVoted, match="already voted on this request for alice"):
            decide(mgr, request.id, BOB)
        done = decide(mgr, request.id, CAROL)
        assert done.state == "approved" and done.approvers == ["alice", "carol"]
        vote_event = next(e for e in mgr.audit.events(request.id) if e.event_type == "vote")
        assert vote_event.actor == "alice"
        assert vote_event.details["delegate"] == "bob"
        assert vote_event.details["delegation_id"] == made.id
        summary = decision_summary(done)
        assert [(v["user"], v["delegate"]) for v in summary["votes"]] == [("alice", "bob"), ("carol", None)]
        with store.session() as s:
            assert s.scalars(select(ApprovalVoteRow.delegate).order_by(ApprovalVoteRow.id)).all() == ["bob", None]
        assert mgr.audit.verify_audit_chain().ok

    def test_refused_when_the_delegator_already_voted(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(allowed_approvers=["alice", "carol"], required_approvals=2))
        decide(mgr, request.id, ALICE)
        with pytest.raises(AlreadyVoted, match="'alice' has already voted"):
            decide(mgr, request.id, BOB, on_behalf_of="alice")
        with pytest.raises(NotAllowed, match="alice has already voted"):
            decide(mgr, request.id, BOB)
        assert [v.user for v in mgr.queries.get(request.id).votes] == ["alice"]

    def test_the_deciding_vote_by_a_delegate(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(allowed_approvers=["alice"]))
        done = decide(mgr, request.id, BOB, "reject", reason="not today")
        assert (done.state, done.decided_by) == ("rejected", "alice")
        finish = mgr.audit.events(request.id)[-1]
        assert finish.event_type == "rejected" and finish.details["delegate"] == "bob"

    def test_refused_after_the_delegation_ended(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = delegate(mgr, clock)
        request = mgr.create(spec(allowed_approvers=["alice"]))
        mgr.delegations.end_delegation(made.id, actor=ALICE)
        with pytest.raises(NotAllowed, match="not an allowed approver"):
            decide(mgr, request.id, BOB)
        with pytest.raises(NotAllowed, match="no active delegation from 'alice'"):
            decide(mgr, request.id, BOB, on_behalf_of="alice")
        assert mgr.queries.get(request.id).votes == ()

    def test_refused_after_its_period_and_before_it(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, starts_at=clock.now + dt.timedelta(hours=1), ends_at=clock.now + dt.timedelta(hours=2))
        request = mgr.create(spec(allowed_approvers=["alice"], timeout=dt.timedelta(days=1), timeout_action="reject"))
        with pytest.raises(NotAllowed):
            decide(mgr, request.id, BOB)
        clock.advance(hours=3)
        with pytest.raises(NotAllowed):
            decide(mgr, request.id, BOB)
        clock.advance(hours=-1.5)
        assert decide(mgr, request.id, BOB).state == "approved"

    def test_refused_outside_its_dags(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, dag_ids=["billing"])
        request = mgr.create(spec(dag_id="release", allowed_approvers=["alice"]))
        with pytest.raises(NotAllowed, match="covers DAG 'release'"):
            decide(mgr, request.id, BOB, on_behalf_of="alice")
        billing = mgr.create(spec(dag_id="billing", allowed_approvers=["alice"]))
        assert decide(mgr, billing.id, BOB).votes[0].delegate == "bob"

    def test_delegators_roles_decide_role_policies(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(allowed_roles=["finance"]))
        assert decide(mgr, request.id, BOB).votes[0].user == "alice"

    def test_self_approval_binds_the_delegator(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, actor=RICKY)
        request = mgr.create(spec())  # requested by ricky
        with pytest.raises(NotAllowed, match="ricky triggered this run"):
            decide(mgr, request.id, BOB, on_behalf_of="ricky")
        # Bob's own vote is another matter: he is allowed (nobody is named).
        assert decide(mgr, request.id, BOB).votes[0].user == "bob"

    def test_self_approval_binds_the_delegate(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, to="ricky")
        request = mgr.create(spec(allowed_approvers=["alice"]))
        with pytest.raises(NotAllowed, match="not even for alice"):
            decide(mgr, request.id, RICKY)
        # Rejecting is no self-approval.
        assert decide(mgr, request.id, RICKY, "reject").votes[0].delegate == "ricky"

    def test_self_approval_allowed_when_the_gate_allows_it(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, to="ricky")
        request = mgr.create(spec(allowed_approvers=["alice"], allow_self_approval=True))
        assert decide(mgr, request.id, RICKY).state == "approved"

    def test_one_person_counts_once_own_vote_first(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(required_approvals=2))
        assert decide(mgr, request.id, BOB).votes[0].user == "bob"
        # Bob's own vote and alice's through him would be two approvals from one human.
        with pytest.raises(AlreadyVoted, match="already voted on this request yourself"):
            decide(mgr, request.id, BOB, on_behalf_of="alice")
        after = mgr.queries.get(request.id)
        assert (after.state, [v.cast_by for v in after.votes]) == ("pending", ["bob"])
        listed = mgr.delegations.can_decide(
            BOB, after, mgr.queries.can_approve(BOB, after), mgr.delegations.delegations_to("bob"), roles_of=roles_of
        )
        assert not listed.allowed

    def test_one_person_counts_once_delegated_vote_first(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(required_approvals=2))
        assert decide(mgr, request.id, BOB, on_behalf_of="alice").votes[0].cast_by == "bob for alice"
        with pytest.raises(AlreadyVoted, match="already voted on this request for alice"):
            decide(mgr, request.id, BOB)
        after = mgr.queries.get(request.id)
        assert (after.state, [v.cast_by for v in after.votes]) == ("pending", ["bob for alice"])
        listed = mgr.delegations.can_decide(
            BOB, after, mgr.queries.can_approve(BOB, after), mgr.delegations.delegations_to("bob"), roles_of=roles_of
        )
        assert (listed.allowed, listed.code) == (False, "counted_once")

    def test_two_delegators_need_on_behalf_of(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        delegate(mgr, clock, actor=CAROL)
        request = mgr.create(spec(allowed_approvers=["alice", "carol"], required_approvals=2))
        with pytest.raises(AmbiguousDelegation, match="alice and carol"):
            decide(mgr, request.id, BOB)
        assert decide(mgr, request.id, BOB, on_behalf_of="carol").votes[0].user == "carol"
        # Bob has cast carol's vote: he may not also cast alice's (one person counts once).
        with pytest.raises(AlreadyVoted, match="for carol"):
            decide(mgr, request.id, BOB, on_behalf_of="alice")
        assert decide(mgr, request.id, ALICE).state == "approved"

    def test_the_delegators_access_now_is_asked_as_the_vote_is_cast(self, mgr: ApprovalManager, clock: Clock) -> None:
        # Alice delegated while she could decide; her access is asked when bob votes, not when she delegated.
        delegate(mgr, clock)
        request = mgr.create(spec(allowed_approvers=["alice", "carol"], required_approvals=2))
        asked: list[tuple[str, str]] = []

        def demoted(name: str, dag_id: str) -> str | None:
            asked.append((name, dag_id))
            return "she is a viewer now" if name == "alice" else None

        for on_behalf_of in (None, "alice"):
            with pytest.raises(NotAllowed, match="alice may not decide it now: she is a viewer now"):
                decide(mgr, request.id, BOB, on_behalf_of=on_behalf_of, delegator_access=demoted)
        assert asked == [("alice", "release")] * 2
        assert mgr.queries.get(request.id).votes == ()
        listed = mgr.queries.get(request.id)
        verdict = mgr.delegations.can_decide(
            BOB,
            listed,
            mgr.queries.can_approve(BOB, listed),
            mgr.delegations.delegations_to("bob"),
            roles_of=roles_of,
            access=demoted,
        )
        assert verdict.allowed is False
        # With her access back, bob's vote counts, as hers.
        assert (
            decide(mgr, request.id, BOB, delegator_access=lambda name, dag_id: None).votes[0].cast_by == "bob for alice"
        )

    def test_one_who_voted_is_409_even_with_a_delegation(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock)
        request = mgr.create(spec(required_approvals=3))
        decide(mgr, request.id, BOB)
        with pytest.raises(AlreadyVoted) as err:
            decide(mgr, request.id, BOB, "reject")
        assert err.value.status_code == 409

    def test_can_decide_marks_the_pending_list(self, mgr: ApprovalManager, clock: Clock) -> None:
        delegate(mgr, clock, dag_ids=["release"])
        mine = mgr.create(spec(allowed_approvers=["alice"]))
        other = mgr.create(spec(dag_id="billing", allowed_approvers=["alice"]))
        delegations = mgr.delegations.delegations_to("bob")
        verdicts = {
            a.id: mgr.delegations.can_decide(BOB, a, mgr.queries.can_approve(BOB, a), delegations, roles_of=roles_of)
            for a in (mgr.queries.get(mine.id), mgr.queries.get(other.id))
        }
        assert (verdicts[mine.id].allowed, verdicts[mine.id].reason) == (True, "for alice")
        assert verdicts[other.id].allowed is False

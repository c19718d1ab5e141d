"""Four eyes across a run (``distinct_from``): the one decision path and eligibility, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_hitl.exceptions import InvalidInput, NotAllowed
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from airflow_hitl.vocabulary import Origin
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])
ROLES = {"alice": {"op"}, "bob": {"op"}, "carol": {"op"}}
REFUSAL = "alice already voted on gate 'review' of this run; this gate needs someone else"


def gates(mgr: ApprovalManager, run_id: str = "run-1", **deploy: Any) -> tuple[Approval, Approval]:
    """A run's ``review`` gate and its ``deploy`` gate, which needs someone else."""
    review = mgr.create(spec(run_id=run_id, task_id="review"))
    deploy_gate = mgr.create(spec(run_id=run_id, task_id="deploy", distinct_from=["review"], **deploy))
    return review, deploy_gate


def decide(mgr: ApprovalManager, request_id: str, user: Principal, action: str = "approve", **kw: Any) -> Approval:
    if action == "reject":
        kw.setdefault("reason", "no")
    return mgr.decide(request_id, Decision(action=action, user=user, source="api", delegator_roles=ROLES.get, **kw))


class TestDecide:
    def test_a_voter_on_a_named_gate_is_refused_naming_it(self, mgr: ApprovalManager) -> None:
        review, deploy = gates(mgr)
        assert mgr.queries.get(deploy.id).distinct_from == ("review",)
        decide(mgr, review.id, ALICE)
        with pytest.raises(NotAllowed) as refused:
            decide(mgr, deploy.id, ALICE)
        assert refused.value.status_code == 403
        assert refused.value.reason == REFUSAL
        assert mgr.queries.get(deploy.id).votes == ()
        assert decide(mgr, deploy.id, BOB).state == "approved"

    def test_a_rejection_is_a_vote_too(self, mgr: ApprovalManager) -> None:
        review, deploy = gates(mgr)
        # Alice's rejection closed review; it is her vote there all the same.
        decide(mgr, review.id, ALICE, "reject")
        with pytest.raises(NotAllowed, match="gate 'review'"):
            decide(mgr, deploy.id, ALICE, "reject")

    def test_another_run_is_another_matter(self, mgr: ApprovalManager) -> None:
        review, _ = gates(mgr, run_id="run-1")
        _, other = gates(mgr, run_id="run-2")
        decide(mgr, review.id, ALICE)
        assert decide(mgr, other.id, ALICE).state == "approved"

    def test_a_gate_without_the_option_is_unaffected(self, mgr: ApprovalManager) -> None:
        review = mgr.create(spec(run_id="run-1", task_id="review"))
        plain = mgr.create(spec(run_id="run-1", task_id="deploy"))
        decide(mgr, review.id, ALICE)
        assert decide(mgr, plain.id, ALICE).state == "approved"

    @pytest.mark.parametrize(("map_index", "try_number"), [(3, 1), (-1, 2)], ids=["map-index", "try"])
    def test_any_map_index_and_any_try_of_the_named_gate(
        self, mgr: ApprovalManager, map_index: int, try_number: int
    ) -> None:
        earlier = mgr.create(spec(run_id="run-1", task_id="review", map_index=map_index, try_number=try_number))
        deploy = mgr.create(spec(run_id="run-1", task_id="deploy", distinct_from=["review"]))
        decide(mgr, earlier.id, ALICE)
        with pytest.raises(NotAllowed, match="gate 'review'"):
            decide(mgr, deploy.id, ALICE)

    def test_a_request_opened_over_the_api_is_no_gate_of_the_run(self, mgr: ApprovalManager) -> None:
        posing = mgr.create(spec(run_id="run-1", task_id="review", try_number=None), origin=Origin.API)
        deploy = mgr.create(spec(run_id="run-1", task_id="deploy", distinct_from=["review"]))
        decide(mgr, posing.id, ALICE)
        assert decide(mgr, deploy.id, ALICE).state == "approved"

    def test_several_named_gates(self, mgr: ApprovalManager) -> None:
        build = mgr.create(spec(run_id="run-1", task_id="build"))
        review = mgr.create(spec(run_id="run-1", task_id="review"))
        deploy = mgr.create(spec(run_id="run-1", task_id="deploy", distinct_from=["build", "review"]))
        decide(mgr, build.id, BOB)
        decide(mgr, review.id, ALICE)
        with pytest.raises(NotAllowed, match="bob already voted on gate 'build'"):
            decide(mgr, deploy.id, BOB)
        with pytest.raises(NotAllowed, match="gate 'review'"):
            decide(mgr, deploy.id, ALICE)
        assert decide(mgr, deploy.id, CAROL).state == "approved"


class TestDelegates:
    def delegate(self, mgr: ApprovalManager, clock: Clock, actor: Principal, to: str) -> None:
        mgr.delegations.create_delegation(
            actor=actor,
            delegate=to,
            starts_at=clock.now - dt.timedelta(minutes=1),
            ends_at=clock.now + dt.timedelta(hours=1),
        )

    def test_a_delegate_voting_for_someone_who_voted_there_is_refused(self, mgr: ApprovalManager, clock: Clock) -> None:
        review, deploy = gates(mgr)
        decide(mgr, review.id, ALICE)
        self.delegate(mgr, clock, ALICE, "bob")
        with pytest.raises(NotAllowed, match="alice already voted on gate 'review'"):
            decide(mgr, deploy.id, BOB, on_behalf_of="alice")
        # Bob's own vote is his to cast.
        assert decide(mgr, deploy.id, BOB).votes[0].delegate is None

    def test_whoever_voted_for_someone_there_counts_as_both(self, mgr: ApprovalManager, clock: Clock) -> None:
        review, deploy = gates(mgr, required_approvals=2)
        self.delegate(mgr, clock, ALICE, "bob")
        assert decide(mgr, review.id, BOB, on_behalf_of="alice").votes[0].delegate == "bob"
        with pytest.raises(NotAllowed, match="alice already voted on gate 'review'"):
            decide(mgr, deploy.id, ALICE)
        with pytest.raises(NotAllowed, match="bob already voted on gate 'review'"):
            decide(mgr, deploy.id, BOB)

    def test_eligibility_of_a_delegated_vote(self, mgr: ApprovalManager, clock: Clock) -> None:
        review, deploy = gates(mgr, allowed_approvers=["alice", "carol"])
        decide(mgr, review.id, ALICE)
        self.delegate(mgr, clock, ALICE, "bob")
        fresh = mgr.queries.get(deploy.id)
        own = mgr.queries.can_approve(BOB, fresh)
        assert own.code == "not_allowed"
        delegated = mgr.delegations.can_decide(
            BOB, fresh, own, mgr.delegations.delegations_to("bob"), roles_of=ROLES.get
        )
        assert delegated.allowed and delegated.on_behalf_of == "alice"
        apart = mgr.queries.apart(fresh, "bob", delegated)
        assert (apart.allowed, apart.code, apart.reason) == (False, "distinct_from", REFUSAL)


class TestEligibility:
    def test_can_approve_says_why_not(self, mgr: ApprovalManager) -> None:
        review, deploy = gates(mgr)
        decide(mgr, review.id, ALICE)
        fresh = mgr.queries.get(deploy.id)
        refused = mgr.queries.can_approve(ALICE, fresh)
        assert (refused.allowed, refused.code, refused.reason) == (False, "distinct_from", REFUSAL)
        assert mgr.queries.can_approve(ALICE, fresh, action="reject").code == "distinct_from"
        assert mgr.queries.can_approve(BOB, fresh).allowed
        pending = dict((a.id, e) for a, e in mgr.queries.pending_for(ALICE)[0])
        assert pending[deploy.id].code == "distinct_from" and review.id not in pending

    def test_the_record_and_its_json_carry_the_names(self, mgr: ApprovalManager) -> None:
        _, deploy = gates(mgr)
        assert deploy.to_dict()["distinct_from"] == ["review"]
        listed = {a.id: a for a in mgr.queries.list()[0]}
        assert listed[deploy.id].distinct_from == ("review",)
        plain = mgr.create(spec())
        assert plain.to_dict()["distinct_from"] == []


class TestSpec:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (["deploy"], "names the gate itself ('deploy')"),
            ([""], "must be a list of non-empty strings"),
            ([1], "must be a list of non-empty strings"),
            (["x" * 251], "task ids are at most 250 characters"),
            ([f"g{i}" for i in range(101)], "names at most 100 gates"),
            (["bad\x00"], "distinct_from[0]"),
        ],
    )
    def test_bad_names_are_refused_naming_the_field(self, mgr: ApprovalManager, value: Any, message: str) -> None:
        with pytest.raises(InvalidInput) as refused:
            mgr.create(spec(task_id="deploy", distinct_from=value))
        assert any(field.startswith("distinct_from") for field, _ in refused.value.problems)
        assert message in str(refused.value)

    def test_one_name_is_a_one_item_list(self, mgr: ApprovalManager) -> None:
        assert mgr.create(spec(task_id="deploy", distinct_from="review")).distinct_from == ("review",)

"""Pure policy rules: eligibility, quorum, escalation levels, and how a closed gate ends its task."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.policy import (
    EscalationLevel,
    GateOutcome,
    PolicyView,
    Principal,
    check_vote,
    gate_opened,
    gate_outcome,
    quorum_reached,
)
from airflow_hitl.vocabulary import Action, OnReject, State, TaskEnd


def view(**overrides: object) -> PolicyView:
    fields: dict = {
        "requested_by": "ricky",
        "allowed_approvers": (),
        "allowed_roles": (),
        "allow_self_approval": False,
        "required_approvals": 1,
        "require_all": False,
    }
    fields.update(overrides)
    return PolicyView(**fields)


class TestCheckVote:
    @pytest.mark.parametrize(
        ("policy", "user", "action", "voters", "code"),
        [
            pytest.param(view(), Principal.of("alice"), "approve", [], None, id="open-gate"),
            pytest.param(view(), Principal.of("ricky"), "approve", [], "self_approval", id="self-approve"),
            pytest.param(view(), Principal.of("ricky"), "reject", [], None, id="requester-may-reject"),
            pytest.param(view(allow_self_approval=True), Principal.of("ricky"), "approve", [], None, id="self-ok"),
            pytest.param(view(), Principal.of("alice"), "approve", ["alice"], "already_voted", id="twice"),
            pytest.param(
                view(allowed_approvers=("bob",)), Principal.of("alice"), "approve", [], "not_allowed", id="not-named"
            ),
            pytest.param(
                view(allowed_roles=("leads",)), Principal.of("alice", ["leads"]), "approve", [], None, id="by-role"
            ),
        ],
    )
    def test_rules(self, policy: PolicyView, user: Principal, action: str, voters: list, code: str | None) -> None:
        result = check_vote(policy, user, action=action, voters=voters)
        assert result.code == code
        assert result.allowed is (code is None)
        if code:
            assert result.reason


class TestQuorum:
    def test_votes_of_people_no_longer_allowed_do_not_count(self) -> None:
        policy = view(allowed_approvers=("bob",), required_approvals=1)
        assert not quorum_reached(policy, [("alice", (), "approve")])
        assert quorum_reached(policy, [("bob", (), "approve")])

    def test_requester_never_counts_without_self_approval(self) -> None:
        assert not quorum_reached(view(), [("ricky", (), "approve")])


class TestEscalationLevel:
    def test_round_trip(self) -> None:
        level = EscalationLevel(approvers=("a",), roles=("r",), timeout=dt.timedelta(minutes=3), required_approvals=2)
        assert EscalationLevel.from_json(level.to_json()) == level

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            pytest.param({"approvers": ["a"]}, "escalate_to[0].timeout", id="no-timeout"),
            pytest.param({"timeout": dt.timedelta(1)}, "escalate_to[0]", id="nobody"),
            pytest.param({"approvers": ["a"], "timeout": dt.timedelta(0)}, "escalate_to[0].timeout", id="zero"),
            pytest.param({"approvers": "a", "timeout": dt.timedelta(1), "when": 1}, "escalate_to[0]", id="unknown-key"),
            pytest.param(42, "escalate_to[0]", id="not-a-level"),
        ],
    )
    def test_invalid(self, value: object, field: str) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            EscalationLevel.parse(value)
        assert err.value.field == field
        assert field in str(err.value)


SUCCESS = GateOutcome(end=TaskEnd.SUCCESS)
FAILED = GateOutcome(end=TaskEnd.FAILED)
SKIPPED = GateOutcome(end=TaskEnd.SKIPPED)
FOLLOW_APPROVE = GateOutcome(end=TaskEnd.SUCCESS, follow=Action.APPROVE)
FOLLOW_REJECT = GateOutcome(end=TaskEnd.SUCCESS, follow=Action.REJECT)

#: (state, decision) of every way a request closes, and what a plain gate with on_reject
#: fail / skip and a branch gate do then.
CLOSED = [
    # approved by people
    ("approved", "approved", SUCCESS, SUCCESS, FOLLOW_APPROVE),
    # rejected by people
    ("rejected", "rejected", FAILED, SKIPPED, FOLLOW_REJECT),
    # the timeout action approved / rejected
    ("timeout", "approved", SUCCESS, SUCCESS, FOLLOW_APPROVE),
    ("timeout", "rejected", FAILED, SKIPPED, FOLLOW_REJECT),
    # cancelled (by a person, Airflow, a later try, break-glass): fails, never skips, takes no branch
    ("cancelled", None, FAILED, FAILED, FAILED),
    # A state and decision that disagree never open the gate.
    ("approved", None, FAILED, SKIPPED, FOLLOW_REJECT),
    ("rejected", "approved", FAILED, SKIPPED, FOLLOW_REJECT),
]


class TestGateOutcome:
    @pytest.mark.parametrize(("state", "decision", "on_fail", "on_skip", "branch"), CLOSED)
    def test_every_closed_request(
        self,
        state: str,
        decision: str | None,
        on_fail: GateOutcome,
        on_skip: GateOutcome,
        branch: GateOutcome,
    ) -> None:
        for on_reject, expected in (("fail", on_fail), ("skip", on_skip)):
            assert gate_outcome(state=state, decision=decision, on_reject=on_reject, branching=False) == expected
            # ``on_reject`` does not apply to a branch gate.
            assert gate_outcome(state=state, decision=decision, on_reject=on_reject, branching=True) == branch

    def test_members_and_plain_words_give_the_same_outcome(self) -> None:
        assert gate_outcome(
            state=State.TIMEOUT, decision=State.REJECTED, on_reject=OnReject.SKIP, branching=False
        ) == gate_outcome(state="timeout", decision="rejected", on_reject="skip", branching=False)

    @pytest.mark.parametrize("state", ["pending", "escalated"])
    @pytest.mark.parametrize("branching", [False, True])
    def test_a_waiting_request_ends_no_task(self, state: str, branching: bool) -> None:
        with pytest.raises(ValueError, match=f"a {state} request ends no task yet"):
            gate_outcome(state=state, decision=None, on_reject="fail", branching=branching)

    @pytest.mark.parametrize(
        ("state", "decision", "opened"),
        [
            ("approved", "approved", True),
            ("timeout", "approved", True),
            ("timeout", "rejected", False),
            ("rejected", "rejected", False),
            ("cancelled", None, False),
            ("pending", None, False),
            ("cancelled", "approved", False),
        ],
    )
    def test_gate_opened(self, state: str, decision: str | None, opened: bool) -> None:
        assert gate_opened(state=state, decision=decision) is opened

"""Pure policy rules: eligibility, quorum, escalation levels."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.policy import EscalationLevel, PolicyView, Principal, check_vote, quorum_reached


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

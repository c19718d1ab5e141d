"""records: the one JSON form of an approval (every output derives from it) and the gate's XCom."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from airflow_hitl.api.datamodels import ApprovalResponse, VoteResponse
from airflow_hitl.api.routes.approvals import CALLER_FIELDS, HIDDEN_FIELDS, _csv, _item
from airflow_hitl.canonical import canonical_json
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.records import (
    SHOWN_FIELDS,
    Approval,
    Vote,
    content_digest_of,
    decision_summary,
    jsonable,
    read_decision,
)

T0 = dt.datetime(2026, 11, 30, 6, 43, 52, tzinfo=dt.timezone.utc)
FORM = {
    "ticket": {"value": "T-1", "schema": {"type": "string"}, "description": "Change ticket", "required": False},
    "replicas": {"value": 3, "schema": {"type": "integer", "minimum": 1}, "description": None, "required": False},
}


def make_approval(**overrides: Any) -> Approval:
    """A decided two-vote request with an escalation level, every field set."""
    votes = (
        Vote(
            user="alice",
            vote="approve",
            comment="fine",
            reason=None,
            source="ui",
            escalation_level=0,
            created_at=T0 + dt.timedelta(minutes=1),
            user_roles=("Op",),
            metadata={"ticket": 7},
        ),
        Vote(
            user="bob",
            vote="approve",
            comment=None,
            reason=None,
            source="api",
            escalation_level=1,
            created_at=T0 + dt.timedelta(minutes=2),
        ),
    )
    fields: dict[str, Any] = dict(
        id="0b7c5e3e-55f4-4b0c-9f0e-6a1d6f1e2a10",
        dag_id="release",
        run_id="manual__1",
        task_id="gate",
        map_index=-1,
        try_number=1,
        origin="task",
        title="=SUM(A1:A9)",
        description="Release 2.4",
        reason=None,
        context={"metrics": {"auc": 0.91}, "when": [T0]},
        approval_type="single",
        state="approved",
        requested_by="carol",
        requested_at=T0,
        expires_at=T0 + dt.timedelta(hours=1),
        timeout_action="reject",
        escalation_level=1,
        escalation_targets=(EscalationLevel(approvers=("bob",), timeout=dt.timedelta(minutes=30)),),
        escalation_final_action=None,
        required_approvals=2,
        require_all=False,
        allowed_approvers=("alice", "bob"),
        allowed_roles=(),
        allow_self_approval=False,
        on_reject="fail",
        decided_by="bob",
        decided_at=T0 + dt.timedelta(minutes=2),
        decision="approved",
        decision_source="api",
        comment="-looks good",
        metadata={"k": "v"},
        notify={"channels": ["email"]},
        created_at=T0,
        updated_at=T0 + dt.timedelta(minutes=2),
        votes=votes,
    )
    fields.update(overrides)
    return Approval(**fields)


def test_to_dict_is_every_field_json_ready():
    approval = make_approval()
    data = approval.to_dict()
    # The form the XCom, webhooks, CLI and pages had from dataclasses.asdict, built field by field now.
    expected = jsonable(dataclasses.asdict(approval))
    expected["escalation_targets"] = [t.to_json() for t in approval.escalation_targets]
    expected["approvers"] = ["alice", "bob"]
    expected["approvals_needed"] = 2
    expected["content_digest"] = approval.content_digest
    assert data == expected
    assert list(data) == [f.name for f in dataclasses.fields(Approval)] + [
        "approvers",
        "approvals_needed",
        "content_digest",
    ]
    assert data["requested_at"] == "2026-11-30T06:43:52+00:00"
    assert data["context"] == {"metrics": {"auc": 0.91}, "when": ["2026-11-30T06:43:52+00:00"]}
    assert data["votes"][0] == {
        "user": "alice",
        "vote": "approve",
        "comment": "fine",
        "reason": None,
        "source": "ui",
        "escalation_level": 0,
        "created_at": "2026-11-30T06:44:52+00:00",
        "user_roles": ["Op"],
        "metadata": {"ticket": 7},
        "delegate": None,
        "inputs": {},
        "content_digest": None,
    }
    json.dumps(data)  # JSON-ready all the way down


def test_to_dict_copies_what_it_returns():
    approval = make_approval()
    data = approval.to_dict()
    data["context"]["metrics"]["auc"] = 0
    data["votes"][0]["metadata"]["ticket"] = 0
    assert approval.context["metrics"]["auc"] == 0.91
    assert approval.votes[0].metadata["ticket"] == 7


def test_the_api_model_names_every_field_of_the_record():
    # A field added to the records reaches the API only through the response model: forgetting
    # the model (or HIDDEN_FIELDS, for a field the API must not show) fails here, naming it.
    record = set(make_approval().to_dict()) - HIDDEN_FIELDS
    model = set(ApprovalResponse.model_fields) - set(CALLER_FIELDS)
    assert record - model == set(), "fields of Approval missing from ApprovalResponse"
    assert model - record == set(), "fields of ApprovalResponse that Approval does not have"
    assert {f.name for f in dataclasses.fields(Vote)} == set(VoteResponse.model_fields)


def test_the_api_item_is_the_record_in_the_model_order():
    approval = make_approval()
    item = _item(approval)
    full = approval.to_dict()
    assert list(item) == [*(n for n in ApprovalResponse.model_fields if n not in CALLER_FIELDS), *CALLER_FIELDS]
    assert {k: v for k, v in item.items() if k not in CALLER_FIELDS} == {
        k: v for k, v in full.items() if k not in HIDDEN_FIELDS
    }
    assert item["can_approve"] is item["can_approve_reason"] is item["notices"] is None
    assert ApprovalResponse.model_validate(item).model_dump(mode="json", exclude_none=True)["id"] == approval.id


def test_the_csv_export_reads_the_record():
    header, row = csv.reader(_csv([make_approval()]).splitlines())
    cells = dict(zip(header, row, strict=True))
    assert cells["map_index"] == "-1"  # our number, never quoted as a formula
    assert cells["comment"] == "'-looks good"  # user text that starts like a formula is
    assert cells["requested_at"] == "2026-11-30T06:43:52+00:00"
    assert cells["approvers"] == "alice;bob"
    assert cells["votes"] == "alice:approve;bob:approve"
    assert cells["title"] == "'=SUM(A1:A9)"
    assert cells["expires_at"] == "2026-11-30T07:43:52+00:00"


def test_the_decision_summary_is_the_gate_xcom():
    approval = make_approval()
    assert decision_summary(approval) == {
        "request_id": approval.id,
        "state": "approved",
        "decision": "approved",
        "approved": True,
        "decided_by": "bob",
        "decided_at": "2026-11-30T06:45:52+00:00",
        "decision_source": "api",
        "comment": "-looks good",
        "approvers": ["alice", "bob"],
        "requested_by": "carol",
        "requested_at": "2026-11-30T06:43:52+00:00",
        "escalation_level": 1,
        "inputs": {},
        "votes": [
            {
                "user": "alice",
                "vote": "approve",
                "comment": "fine",
                "reason": None,
                "source": "ui",
                "delegate": None,
                "at": "2026-11-30T06:44:52+00:00",
                "inputs": {},
            },
            {
                "user": "bob",
                "vote": "approve",
                "comment": None,
                "reason": None,
                "source": "api",
                "delegate": None,
                "at": "2026-11-30T06:45:52+00:00",
                "inputs": {},
            },
        ],
    }
    undecided = decision_summary(make_approval(state="pending", decision=None, decided_at=None, decided_by=None))
    assert undecided["approved"] is False and undecided["decided_at"] is None


# read_decision

SUMMARY = {"state": "approved", "approvers": ["alice"], "decision_source": "api"}


@pytest.mark.parametrize("value", [SUMMARY, json.dumps(SUMMARY)], ids=["pushed-by-worker", "pushed-by-trigger"])
def test_both_forms_read_the_same(value):
    assert read_decision(value) == SUMMARY


@pytest.mark.parametrize("value", [None, 3, "[1, 2]"], ids=["none", "number", "list"])
def test_anything_else_is_refused(value):
    with pytest.raises(TypeError, match="not an approval decision"):
        read_decision(value)


def test_notices_show_a_delegated_decision_as_bob_for_alice():
    from airflow_hitl.notifications.channels import outcome_line
    from airflow_hitl.notifications.templates import render, template_context

    plain = make_approval()
    assert (plain.decider, plain.approvers_shown()) == ("bob", ["alice", "bob"])
    alice, bob = plain.votes
    delegated = make_approval(votes=(alice, dataclasses.replace(bob, delegate="carol")))
    assert delegated.decider == "carol for bob"
    assert delegated.approvers_shown() == ["alice", "carol for bob"]
    assert outcome_line(delegated) == "Approved by alice, carol for bob"
    context = template_context(
        delegated, event="decided", recipient="carol", links={"details": "http://airflow.test/x"}
    )
    text = render("decided", context).text
    assert "Approver: carol for bob (approvals: alice, carol for bob)" in text
    assert make_approval(decided_by=None, votes=()).decider is None


class TestContentDigest:
    """Approval.content_digest: SHA-256 of the RFC 8785 JSON of what approvers are shown."""

    def test_it_is_the_digest_of_the_items_shown_fields(self):
        # Anyone holding an item recomputes it from the item alone, with any RFC 8785 library.
        item = json.loads(json.dumps(make_approval(inputs=FORM).to_dict()))
        shown = {name: item[name] for name in SHOWN_FIELDS}
        assert item["content_digest"] == hashlib.sha256(canonical_json(shown)).hexdigest()
        assert len(item["content_digest"]) == 64

    def test_it_is_stable(self):
        # Same content, however built: the key order of the context and the form does not matter.
        one = make_approval(context={"a": 1, "b": [1.0, {"y": 2, "x": 1}]}, inputs=FORM)
        two = make_approval(context={"b": [1, {"x": 1, "y": 2}], "a": 1.0}, inputs=dict(reversed(FORM.items())))
        assert one.content_digest == two.content_digest
        assert one.content_digest == make_approval(context=one.context, inputs=FORM).content_digest

    @pytest.mark.parametrize(
        "change",
        [
            {"title": "Release 2.5"},
            {"description": None},
            {"reason": "hotfix"},
            {"context": {"metrics": {"auc": 0.92}, "when": [T0]}},
            {"inputs": {**FORM, "ticket": {**FORM["ticket"], "value": "T-2"}}},
            {"allowed_approvers": ("alice", "bob", "dave")},
            {"allowed_roles": ("Op",)},
            {"required_approvals": 1},
            {"require_all": True},
        ],
        ids=lambda change: next(iter(change)),
    )
    def test_what_approvers_are_shown_changes_it(self, change):
        assert make_approval(**{"inputs": FORM, **change}).content_digest != make_approval(inputs=FORM).content_digest

    @pytest.mark.parametrize(
        "change",
        [
            {"state": "pending", "decided_by": None, "decided_at": None, "decision": None},
            {"votes": ()},
            {"expires_at": None, "updated_at": T0},
            {"escalation_level": 0},
            {"metadata": {"other": 1}, "notify": {}},
        ],
        ids=["state", "votes", "times", "escalation_level", "metadata"],
    )
    def test_votes_state_and_times_do_not(self, change):
        # Another approver's vote does not change what this one is asked.
        assert make_approval(**change).content_digest == make_approval().content_digest

    def test_a_row_and_its_record_agree(self, store):
        from airflow_hitl.manager import ApprovalManager, ApprovalSpec
        from airflow_hitl.models.tables import ApprovalRequestRow

        manager = ApprovalManager(store=store)
        created = manager.create(
            ApprovalSpec(
                dag_id="release",
                title="Ship",
                context={"n": 2**60, "f": 0.1, "nested": {"b": 1, "a": [True, None]}},
                allowed_approvers=("alice",),
                inputs={"ticket": {"value": "T-1", "schema": {"type": "string"}}},
            )
        )
        with store.session() as session:
            row = session.get(ApprovalRequestRow, created.id)
            assert content_digest_of(row) == created.content_digest
        assert manager.queries.get(created.id).content_digest == created.content_digest

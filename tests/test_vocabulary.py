"""The vocabulary is declared once: the pages and templates use the server's words, not copies."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from enum import Enum
from pathlib import Path
from typing import get_args

import pytest
from jinja2 import Environment

from airflow_hitl import vocabulary
from airflow_hitl.audit import event_hash, request_facts
from airflow_hitl.canonical import canonical_json, content_digest
from airflow_hitl.vocabulary import (
    Action,
    ApprovalType,
    Channel,
    Event,
    OnReject,
    Origin,
    Source,
    State,
)

UI = Path(__file__).resolve().parents[1] / "airflow_hitl" / "ui"
SCRIPT = (UI / "static" / "hitl.js").read_text()


def test_pages_receive_the_vocabulary_as_json():
    words = json.loads(json.dumps(vocabulary.for_pages()))
    assert words["waiting_states"] == list(vocabulary.WAITING_STATES)
    assert words["states"] == list(vocabulary.STATES)
    assert words["events"] == list(vocabulary.EVENTS)


def test_the_script_reads_states_from_the_server():
    assert "document.body.dataset.vocabulary" in SCRIPT
    # No list of states of its own: a new state must not need a JavaScript change.
    assert not re.search(r"new Set\(\[\s*\"(pending|escalated|approved)", SCRIPT)


def test_the_scripts_event_labels_cover_exactly_the_events():
    block = re.search(r"const EVENT_WORDS = \{(.*?)\};", SCRIPT, re.S)
    assert block, "EVENT_WORDS not found in hitl.js"
    labelled = re.findall(r"^\s*(\w+):", block.group(1), re.M)
    assert sorted(labelled) == sorted(vocabulary.EVENTS)


def test_template_state_filters_offer_only_known_states():
    for template in ("inbox.html", "history.html"):
        html = (UI / "templates" / template).read_text()
        select = re.search(r'<select[^>]*name="state"[^>]*>(.*?)</select>', html, re.S)
        assert select, f"no state filter in {template}"
        values = [v for v in re.findall(r'<option value="([^"]*)"', select.group(1)) if v]
        assert values and set(values) <= set(vocabulary.STATES), (template, values)


def test_final_event_of_every_terminal_state():
    assert {vocabulary.final_event(s) for s in vocabulary.TERMINAL_STATES} <= set(vocabulary.FINAL_EVENTS)


# ---------------------------------------------------------------------- the words as enums

#: Every word enum of the vocabulary.
WORDS: tuple[type[Enum], ...] = (
    State,
    Action,
    ApprovalType,
    Origin,
    OnReject,
    Source,
    Channel,
    Event,
    vocabulary.NoticeStatus,
    vocabulary.OutboxStatus,
    vocabulary.AuditType,
    vocabulary.TaskEnd,
)
MEMBERS = [member for word in WORDS for member in word]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_every_text_form_of_a_word_is_its_value(member: Enum) -> None:
    value = member.value
    assert isinstance(member, str) and member == value and hash(member) == hash(value)
    texts = (str(member), f"{member}", format(member), "%s" % (member,))  # noqa: UP031 (as logging formats)
    assert texts == (value,) * 4 and f"{member:>12}" == f"{value:>12}"
    assert repr(member) == repr(value) and repr([member]) == repr([value])
    assert json.dumps({member: [member]}) == json.dumps({value: [value]})
    assert Environment(autoescape=True).from_string("{{ w }}|{{ w | e }}").render(w=member) == f"{value}|{value}"
    assert type(member)(value) is member


def test_a_log_record_carries_the_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tests.vocabulary"):
        logging.getLogger("tests.vocabulary").info("request is %s", State.PENDING)
    assert caplog.records[-1].getMessage() == "request is pending"


#: Each Literal alias and the words it must name, exactly.
LITERALS = [
    (vocabulary.StateWord, tuple(State)),
    (vocabulary.DecisionWord, vocabulary.DECISIONS),
    (vocabulary.ActionWord, tuple(Action)),
    (vocabulary.VoteWord, vocabulary.VOTES),
    (vocabulary.DecisionActionWord, vocabulary.ACTIONS),
    (vocabulary.TimeoutActionWord, vocabulary.TIMEOUT_ACTIONS),
    (vocabulary.FinalActionWord, vocabulary.FINAL_ACTIONS),
    (vocabulary.ApprovalTypeWord, tuple(ApprovalType)),
    (vocabulary.OriginWord, tuple(Origin)),
    (vocabulary.OnRejectWord, tuple(OnReject)),
    (vocabulary.SourceWord, tuple(Source)),
    (vocabulary.RestSourceWord, vocabulary.REST_SOURCES),
    (vocabulary.ChannelWord, tuple(Channel)),
    (vocabulary.EventWord, tuple(Event)),
]


@pytest.mark.parametrize(("literal", "words"), LITERALS, ids=lambda v: str(v)[:40])
def test_each_literal_names_exactly_its_words(literal: object, words: tuple[Enum, ...]) -> None:
    assert get_args(literal) == tuple(w.value for w in words)


def test_the_word_lists_keep_their_values_and_order() -> None:
    # What the check constraints, the migrations, the pages and the error messages were built from.
    assert vocabulary.STATES == ("pending", "approved", "rejected", "timeout", "escalated", "cancelled")
    assert vocabulary.WAITING_STATES == ("pending", "escalated")
    assert vocabulary.TERMINAL_STATES == ("approved", "rejected", "timeout", "cancelled")
    assert vocabulary.VOTES == ("approve", "reject")
    assert vocabulary.ACTIONS == ("approve", "reject", "cancel")
    assert vocabulary.TIMEOUT_ACTIONS == ("approve", "reject", "escalate")
    assert vocabulary.FINAL_ACTIONS == ("approve", "reject")
    assert vocabulary.APPROVAL_TYPES == ("manual", "auto", "conditional")
    assert vocabulary.ORIGINS == ("task", "api")
    assert vocabulary.ON_REJECT == ("fail", "skip")
    assert vocabulary.VOTE_SOURCES == ("api", "ui", "email", "slack", "bulk", "cli", "standing")
    assert vocabulary.SYSTEM_SOURCES == ("timeout", "auto", "condition", "airflow", "system", "operator")
    assert (*vocabulary.VOTE_SOURCES, "break-glass", *vocabulary.SYSTEM_SOURCES) == vocabulary.SOURCES
    assert vocabulary.REST_SOURCES == ("api", "cli")
    assert vocabulary.CHANNELS == ("email", "slack", "webhook", "in_app", "teams")
    assert vocabulary.EVENTS == (
        "required",
        "reminder",
        "escalated",
        "timed_out",
        "decided",
        "cancelled",
        "standing_used",
        "sla_breached",
    )
    assert vocabulary.ACTION_EVENTS == ("required", "reminder", "escalated", "sla_breached")
    assert vocabulary.FINAL_EVENTS == ("decided", "timed_out", "cancelled")
    assert vocabulary.NOTIFICATION_STATUSES == ("pending", "sent", "failed", "read")
    assert vocabulary.OUTBOX_STATUSES == ("pending", "sent", "failed", "cancelled")
    assert vocabulary.DELEGATION_EVENTS == ("delegation_created", "delegation_ended")
    assert vocabulary.STANDING_EVENTS == ("standing_created", "standing_revoked")
    assert vocabulary.STANDING_DUE_STATUSES == ("due", "used", "skipped")
    # The messages that list allowed words read as they did with plain strings.
    assert f"must be one of {list(vocabulary.TIMEOUT_ACTIONS)}" == "must be one of ['approve', 'reject', 'escalate']"


def test_the_pages_receive_plain_strings() -> None:
    for words in vocabulary.for_pages().values():
        assert words and all(type(w) is str for w in words)


def test_final_event_of_each_state() -> None:
    assert [vocabulary.final_event(s) for s in vocabulary.TERMINAL_STATES] == [
        "decided",
        "decided",
        "timed_out",
        "cancelled",
    ]
    assert vocabulary.final_event("approved") is Event.DECIDED


AT = dt.datetime(2026, 5, 4, 12, 30, tzinfo=dt.timezone.utc)


def _facts(state: str, decision: str, source: str, vote: str) -> dict[str, object]:
    return {
        "from_state": state,
        "decision": decision,
        "vote": vote,
        "votes": [{"vote": vote, "source": source}],
        state: {"keyed by": decision},
    }


def test_audit_links_and_digests_of_members_equal_those_of_plain_strings() -> None:
    # The chain of existing rows (written with plain strings) must still verify when facts carry members.
    with_members = _facts(State.APPROVED, State.APPROVED, Source.EMAIL, Action.APPROVE)
    with_strings = _facts("approved", "approved", "email", "approve")
    assert canonical_json(with_members) == canonical_json(with_strings)
    assert content_digest(with_members) == content_digest(with_strings)
    link = {"prev_hash": "0" * 64, "request_id": "r1", "actor": "alice", "comment": None, "created_at": AT}
    assert event_hash(event_type=State.APPROVED, source=Source.EMAIL, details=with_members, **link) == event_hash(
        event_type="approved", source="email", details=with_strings, **link
    )


def test_request_facts_of_a_row_with_members_equal_those_of_a_stored_row() -> None:
    from airflow_hitl.models.tables import ApprovalRequestRow

    def row(**words: str) -> ApprovalRequestRow:
        return ApprovalRequestRow(
            id="r1",
            dag_id="d",
            title="t",
            map_index=-1,
            escalation_level=0,
            escalation_targets=[],
            allowed_approvers=[],
            allowed_roles=[],
            required_approvals=1,
            require_all=False,
            allow_self_approval=False,
            decided_by="alice",
            decided_at=AT,
            expires_at=None,
            updated_at=AT,
            **words,
        )

    members = row(state=State.TIMEOUT, decision=State.REJECTED, decision_source=Source.TIMEOUT)
    strings = row(state="timeout", decision="rejected", decision_source="timeout")
    assert canonical_json(request_facts(members)) == canonical_json(request_facts(strings))

"""The notices' templates of :mod:`airflow_hitl.notifications.templates`, over requests of a real store.

The words that say how long is left, what the run does next and what expiry will do; the
variables every template sees; rendering with per-gate overrides (HTML autoescaped, the
sandbox closed, an undefined name an error); and the check of ``notify_templates``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.templates import (
    humanize,
    next_action,
    render,
    template_context,
    timeout_action_text,
    validate_overrides,
)
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")
LINKS = {"approve": "http://hitl.test/a", "reject": "http://hitl.test/r", "details": "http://hitl.test/d"}


@pytest.fixture
def timed(sqlite_manager: ApprovalManager, clock: Clock) -> ApprovalManager:
    """A manager over the test's SQLite store on a clock the test moves (for expiry)."""
    return ApprovalManager(store=sqlite_manager.store, clock=clock)


def context_of(approval: Approval, event: str = "required", **kwargs: Any) -> dict[str, Any]:
    """The template variables of ``approval`` for alice, with the three links."""
    return template_context(approval, event=event, recipient="alice", links=LINKS, **kwargs)


class TestHumanize:
    @pytest.mark.parametrize(
        ("delta", "text"),
        [
            pytest.param(dt.timedelta(0), "less than a minute", id="zero"),
            pytest.param(dt.timedelta(seconds=59), "less than a minute", id="seconds"),
            pytest.param(dt.timedelta(seconds=-30), "less than a minute", id="past"),
            pytest.param(dt.timedelta(minutes=1), "1 minute", id="one-minute"),
            pytest.param(dt.timedelta(hours=2, minutes=5, seconds=59), "2 hours 5 minutes", id="hours-minutes"),
            pytest.param(dt.timedelta(days=3), "3 days", id="days"),
            pytest.param(dt.timedelta(days=1, minutes=5), "1 day 5 minutes", id="zero-hours-left-out"),
            pytest.param(dt.timedelta(days=1, hours=1, minutes=1), "1 day 1 hour", id="two-parts-at-most"),
            pytest.param(dt.timedelta(hours=10), "10 hours", id="ten-is-not-zero"),
        ],
    )
    def test_durations_in_words(self, delta: dt.timedelta, text: str) -> None:
        assert humanize(delta) == text


class TestNextAction:
    def test_waiting_then_approved(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec())
        assert next_action(gate) == "keep waiting for approvers"
        assert next_action(sqlite_manager.approve(gate.id, user=ALICE)) == "continue with the downstream tasks"

    @pytest.mark.parametrize(
        ("on_reject", "text"),
        [("fail", "stop: the gate fails"), ("skip", "skip the gate and its downstream tasks")],
    )
    def test_a_rejection_follows_on_reject(self, sqlite_manager: ApprovalManager, on_reject: str, text: str) -> None:
        gate = sqlite_manager.create(spec(on_reject=on_reject))
        assert next_action(sqlite_manager.reject(gate.id, user=ALICE, reason="no")) == text

    def test_a_cancelled_gate_fails_even_with_on_reject_skip(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(on_reject="skip"))
        assert next_action(sqlite_manager.cancel(gate.id, actor="admin", reason="gone")) == "stop: the gate fails"

    @pytest.mark.parametrize(
        ("action", "text"),
        [("approve", "continue with the downstream tasks"), ("reject", "skip the gate and its downstream tasks")],
    )
    def test_a_timeout_follows_its_decision(self, timed: ApprovalManager, clock: Clock, action: str, text: str) -> None:
        gate = timed.create(spec(timeout=dt.timedelta(minutes=5), timeout_action=action, on_reject="skip"))
        clock.advance(minutes=6)
        assert next_action(timed.apply_timeout(gate.id).approval) == text


class TestTimeoutActionText:
    def test_without_a_timeout_it_waits(self, sqlite_manager: ApprovalManager) -> None:
        assert timeout_action_text(sqlite_manager.create(spec())) == "wait"

    @pytest.mark.parametrize(("action", "text"), [("approve", "be approved automatically"), ("reject", "be rejected")])
    def test_approve_or_reject(self, sqlite_manager: ApprovalManager, action: str, text: str) -> None:
        gate = sqlite_manager.create(spec(timeout=dt.timedelta(hours=1), timeout_action=action))
        assert timeout_action_text(gate) == text

    def test_escalation_then_the_final_action_at_the_last_level(self, timed: ApprovalManager, clock: Clock) -> None:
        gate = timed.create(
            spec(
                allowed_approvers=("bob",),
                timeout=dt.timedelta(minutes=5),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5))],
                escalation_final_action="reject",
            )
        )
        assert timeout_action_text(gate) == "escalate to the next approvers"
        clock.advance(minutes=6)
        escalated = timed.apply_timeout(gate.id).approval
        assert escalated.escalation_level == 1
        assert timeout_action_text(escalated) == "be rejected"


class TestTemplateContext:
    def test_the_variables_of_a_waiting_gate(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(timeout=dt.timedelta(hours=2), timeout_action="reject"))
        assert gate.expires_at is not None
        context = context_of(gate, now=gate.expires_at - dt.timedelta(hours=1, minutes=30))
        assert context == {
            "approval": gate,
            "event": "required",
            "recipient": "alice",
            "links": LINKS,
            "expires_in": "1 hour 30 minutes",
            "timeout_action": "be rejected",
            "next_action": "keep waiting for approvers",
            "action_taken": "",
            "opened_over_api": False,
        }

    def test_no_expiry_no_time_left(self, sqlite_manager: ApprovalManager) -> None:
        assert context_of(sqlite_manager.create(spec()))["expires_in"] == ""

    def test_a_timeout_says_what_was_done(self, timed: ApprovalManager, clock: Clock) -> None:
        gate = timed.create(spec(timeout=dt.timedelta(minutes=5), timeout_action="approve"))
        clock.advance(minutes=6)
        context = context_of(timed.apply_timeout(gate.id).approval, "timed_out")
        assert context["action_taken"] == "approved automatically (timeout_action)"


class TestRender:
    def test_the_default_templates(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(title="Release churn", reason="accuracy 96%", context={"m": {"b": 1}}))
        message = render("required", context_of(gate))
        assert message.subject == "Approval required: Release churn"
        assert message.text.startswith("Your approval is required: Release churn\n")
        assert "Reason: accuracy 96%" in message.text
        assert '  - m: {"b": 1}' in message.text
        assert message.text.endswith("\n") and not message.text.endswith("\n\n")
        assert message.html is None

    def test_html_is_escaped_and_text_is_not(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(title="<script>x()</script>", context={"note": "<b>bold</b>"}))
        message = render("required", context_of(gate), html=True)
        assert message.html is not None
        assert "<script>" not in message.html and "<b>bold</b>" not in message.html
        assert "&lt;script&gt;x()&lt;/script&gt;" in message.html
        assert "&lt;b&gt;bold&lt;/b&gt;" in message.html
        assert 'href="http://hitl.test/a"' in message.html
        # Subject and text are not markup: they keep what was typed.
        assert message.subject == "Approval required: <script>x()</script>"
        assert "note: <b>bold</b>" in message.text

    @pytest.mark.parametrize("event", ["required", "reminder", "escalated"])
    def test_bound_values_are_shown_whole_in_text_and_html(self, sqlite_manager: ApprovalManager, event: str) -> None:
        sha = "9f2c" * 16
        gate = sqlite_manager.create(spec(title="Release", bound={"model": sha, "data": "<s3://b>"}))
        message = render(event, context_of(gate, event), html=True)
        lines = message.text.splitlines()
        assert f"Approving exactly: model = {sha}" in lines
        assert "Approving exactly: data = <s3://b>" in lines  # plain text keeps what was bound
        assert message.html is not None
        assert f"<strong>model</strong> = <code>{sha}</code>" in message.html
        assert "<strong>data</strong> = <code>&lt;s3://b&gt;</code>" in message.html

    def test_a_gate_without_bind_says_nothing_of_it(self, sqlite_manager: ApprovalManager) -> None:
        message = render("required", context_of(sqlite_manager.create(spec(title="Release"))), html=True)
        assert message.html is not None
        assert "Approving exactly" not in message.text + message.html

    def test_overrides_of_the_event_replace_each_part(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(title="Release <v2>"))
        overrides = {
            "required": {
                "subject": "  Look\n at {{ approval.title }}  ",
                "text": "Hi {{ recipient }}",
                "html": "<h1>{{ subject }}</h1><pre>{{ summary }}</pre>",
            }
        }
        message = render("required", context_of(gate), overrides=overrides, html=True)
        assert message.subject == "Look at Release <v2>", "white space collapsed to one line"
        assert message.text == "Hi alice\n"
        assert message.html == "<h1>Look at Release &lt;v2&gt;</h1><pre>Hi alice\n</pre>"

    def test_overrides_of_another_event_change_nothing(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(title="Release"))
        plain = render("required", context_of(gate))
        assert render("required", context_of(gate), overrides={"decided": {"subject": "Done"}}) == plain

    def test_an_undefined_name_is_an_error_not_blank(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec())
        with pytest.raises(UndefinedError, match="nope"):
            render("required", context_of(gate), overrides={"required": {"subject": "{{ nope }}"}})

    def test_the_sandbox_keeps_templates_from_python_internals(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec())
        escape = "{{ approval.__class__.__init__.__globals__ }}"
        with pytest.raises(SecurityError):
            render("required", context_of(gate), overrides={"required": {"text": escape}})


class TestValidateOverrides:
    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(None, id="none"),
            pytest.param({}, id="empty"),
            pytest.param({"required": {"subject": "{{ approval.title }}"}}, id="one-part"),
            pytest.param({"decided": {"subject": "s", "text": "t", "html": "<p>{{ summary }}</p>"}}, id="every-part"),
        ],
    )
    def test_fine(self, value: Any) -> None:
        assert validate_overrides(value) is None

    @pytest.mark.parametrize(
        ("value", "said"),
        [
            pytest.param(["required"], "must be a dict of event -> {subject, text, html}", id="not-a-dict"),
            pytest.param({"approved": {"subject": "s"}}, "unknown event 'approved'", id="unknown-event"),
            pytest.param({"required": "s"}, "'required' must be a dict with any of", id="event-not-a-dict"),
            pytest.param({"required": {}}, "'required' must be a dict with any of", id="event-empty"),
            pytest.param({"required": {"body": "s"}}, "'required' has unknown part 'body'", id="unknown-part"),
            pytest.param({"required": {"text": 3}}, "required.text must be a template string", id="not-a-string"),
            pytest.param(
                {"reminder": {"html": "{% if %}"}}, "reminder.html is not a valid Jinja2 template", id="bad-syntax"
            ),
        ],
    )
    def test_wrong_says_why(self, value: Any, said: str) -> None:
        problem = validate_overrides(value)
        assert problem is not None and said in problem, problem

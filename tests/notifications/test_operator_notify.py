"""The gate's notification options: parse-time validation, the stored options, and reminders.

Reminders are outbox intents queued with the gate; triggers of older releases still wake the
task with a "remind" event (kept for gates deferred before an upgrade).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.outbox import Outbox
from airflow_hitl.policy import Principal
from airflow_hitl.triggers.approval import ApprovalTrigger
from tests.helpers import first_event, spec


def gate(**kwargs: Any) -> ApprovalOperator:
    """An operator outside a DAG, as the parser builds it."""
    return ApprovalOperator(task_id="gate", title="Release", **kwargs)


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            pytest.param({"notify_channels": "email"}, "notify_channels", id="channels-string"),
            pytest.param({"notify_channels": ["email", "pigeon"]}, "notify_channels", id="unknown-channel"),
            pytest.param({"notify_users": ["alice"]}, "notify_channels", id="users-without-channels"),
            pytest.param({"notify_channels": ["email"], "notify_users": [1]}, "notify_users", id="users-not-names"),
            pytest.param({"notify_channels": ["email"], "notify_roles": [""]}, "notify_roles", id="empty-role"),
            pytest.param(
                {"notify_channels": ["email"], "slack_channel": "#x"}, "slack_channel", id="slack-target-no-slack"
            ),
            pytest.param(
                {"notify_channels": ["slack"], "slack_channel": ""}, "slack_channel", id="empty-slack-channel"
            ),
            pytest.param(
                {"notify_channels": ["email"], "webhook_conn_id": "w"}, "webhook_conn_id", id="webhook-no-webhook"
            ),
            pytest.param({"notify_channels": ["slack"], "smtp_conn_id": "s"}, "smtp_conn_id", id="smtp-no-email"),
            pytest.param({"notify_channels": ["email"], "remind_every": 60}, "remind_every", id="remind-not-timedelta"),
            pytest.param(
                {"notify_channels": ["email"], "remind_every": dt.timedelta(0)}, "remind_every", id="remind-zero"
            ),
            pytest.param({"remind_every": dt.timedelta(hours=1)}, "remind_every", id="remind-without-channels"),
            pytest.param(
                {"notify_channels": ["email"], "notify_templates": {"approved": {"subject": "x"}}},
                "notify_templates",
                id="template-unknown-event",
            ),
            pytest.param(
                {"notify_channels": ["email"], "notify_templates": {"required": {"footer": "x"}}},
                "notify_templates",
                id="template-unknown-part",
            ),
            pytest.param(
                {"notify_channels": ["email"], "notify_templates": {"required": {"subject": "{% if %}"}}},
                "notify_templates",
                id="template-syntax",
            ),
        ],
    )
    def test_wrong_option_names_the_field(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidApprovalConfig, match=f"`{field}`"):
            gate(**kwargs)

    def test_options_are_stored_on_the_request(self) -> None:
        operator = gate(
            allowed_approvers=["alice"],
            notify_channels=["email", "slack", "webhook", "in_app", "email"],
            notify_users=["alice", "bob"],
            notify_roles=["leads"],
            slack_channel="#approvals",
            webhook_conn_id="ops_webhook",
            webhook_endpoint="/hooks/approvals",
            remind_every=dt.timedelta(minutes=30),
            notify_templates={"required": {"subject": "Look at {{ approval.title }}"}},
        )
        assert operator._spec(dag_id="d").notify == {
            "channels": ["email", "slack", "webhook", "in_app"],
            "users": ["alice", "bob"],
            "roles": ["leads"],
            "slack_channel": "#approvals",
            "webhook_conn_id": "ops_webhook",
            "webhook_endpoint": "/hooks/approvals",
            "remind_every_seconds": 1800.0,
            "templates": {"required": {"subject": "Look at {{ approval.title }}"}},
        }

    def test_no_channels_no_notify_options(self) -> None:
        assert gate()._spec(dag_id="d").notify == {}


class TestReminderSchedule:
    def test_first_reminder_is_queued_with_the_gate_never_after_expiry(self, manager: ApprovalManager) -> None:
        notify = {"channels": ["in_app"], "remind_every_seconds": 1800.0}
        short = manager.create(spec(timeout=dt.timedelta(minutes=10), timeout_action="reject", notify=notify))
        long = manager.create(spec(timeout=dt.timedelta(hours=2), timeout_action="reject", notify=notify))
        silent = manager.create(spec(timeout=dt.timedelta(hours=2), timeout_action="reject"))
        outbox = Outbox(store=manager.store)
        assert [i.event_type for i in outbox.intents(short.id)] == ["required"]
        reminders = [i for i in outbox.intents(long.id) if i.event_type == "reminder"]
        assert len(reminders) == 1
        assert abs((reminders[0].due_at - long.requested_at).total_seconds() - 1800) < 1
        assert outbox.intents(silent.id) == []


@pytest.mark.usefixtures("store_url")
class TestTriggerRemind:
    def test_serialize_keeps_remind_at(self) -> None:
        trigger = ApprovalTrigger(request_id="abc", poll_interval=1.0, remind_at=1_800_000_000.0)
        classpath, kwargs = trigger.serialize()
        assert kwargs["remind_at"] == 1_800_000_000.0
        assert ApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_remind_event_when_remind_at_passes(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec(timeout=dt.timedelta(hours=1), timeout_action="reject"))
        started = time.monotonic()
        payload = asyncio.run(
            first_event(ApprovalTrigger(request_id=approval.id, poll_interval=5, remind_at=time.time() + 0.5))
        )
        assert payload == {"request_id": approval.id, "status": "remind", "state": "pending"}
        assert time.monotonic() - started < 3, "the trigger wakes for the reminder, not at its next poll"
        assert manager.notices.list_notifications(request_id=approval.id) == [], "the trigger itself sends nothing"

    def test_a_decision_before_the_reminder_wins(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        manager.approve(approval.id, user=Principal.of("alice"))
        payload = asyncio.run(
            first_event(ApprovalTrigger(request_id=approval.id, poll_interval=0.2, remind_at=time.time() - 10))
        )
        assert payload["status"] == "decided"

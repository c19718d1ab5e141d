"""The delivery layer against real local channels: rows, retries, recipients, templates.

Runs on SQLite and PostgreSQL (the ``manager`` fixture): every send is a row in
``approval_notifications`` written through the manager.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from airflow_hitl.retry import RetryPolicy
from tests.helpers import spec
from tests.standins import SlackApi, SmtpSink, WebhookReceiver

ALL_CHANNELS = ["email", "slack", "webhook", "in_app"]


def open_gate(manager: ApprovalManager, **notify: Any) -> Approval:
    """A pending gate with ``notify`` options, approvers alice and bob, one hour to decide."""
    options: dict[str, Any] = {"channels": ALL_CHANNELS}
    options.update(notify)
    return manager.create(
        spec(
            allowed_approvers=("alice", "bob"),
            timeout=dt.timedelta(hours=1),
            timeout_action="reject",
            reason="Accuracy above 95%",
            context={"metrics": {"accuracy": 0.962}, "model": "churn"},
            notify=options,
        )
    )


def dispatcher(manager: ApprovalManager, **kwargs: Any) -> NotificationDispatcher:
    """A dispatcher with the test environment's settings and no real sleeping."""
    return NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=lambda s: None, **kwargs)


@pytest.mark.usefixtures("notify_env")
class TestDispatch:
    def test_every_channel_delivers_and_records_a_row(
        self, manager: ApprovalManager, smtp_server: SmtpSink, slack_api: SlackApi, webhook_receiver: WebhookReceiver
    ) -> None:
        gate = open_gate(manager)
        rows = dispatcher(manager).dispatch(gate, "required")

        by_channel = {(r.channel, r.recipient): r for r in rows}
        assert set(by_channel) == {
            ("email", "alice"),
            ("email", "bob"),
            ("slack", "alice"),
            ("slack", "bob"),
            ("webhook", "hitl_webhook"),
            ("in_app", "alice"),
            ("in_app", "bob"),
        }
        assert all(r.status == "sent" and r.retry_count == 0 for r in rows), rows
        stored = manager.notices.list_notifications(request_id=gate.id)
        assert {r.id for r in stored} == {r.id for r in rows}

        mails = smtp_server.wait(2)
        assert sorted(str(m["To"]) for m in mails) == ["alice@example.com", "bob@example.com"]
        mail = smtp_server.to("alice@example.com")[0]
        assert mail["Subject"] == f"Approval required: {gate.title}"
        assert mail.get_body(("plain",)) is not None and mail.get_body(("html",)) is not None
        assert "Accuracy above 95%" in mail.get_body(("plain",)).get_content()

        posts = slack_api.of("chat.postMessage")
        assert sorted(p.params["channel"] for p in posts) == ["UALICE001", "UBOB00001"]
        actions = next(b for b in posts[0].params["blocks"] if b["type"] == "actions")
        assert [e["action_id"] for e in actions["elements"]][:2] == ["hitl_approve", "hitl_reject"]
        assert actions["elements"][0]["value"] == f"{gate.id}:{gate.content_digest}"
        assert all(r.metadata.get("ts") for r in rows if r.channel == "slack")

        assert len(webhook_receiver.deliveries) == 1
        delivery = webhook_receiver.deliveries[0]
        assert delivery["valid"]
        assert delivery["body"]["event"] == "required"
        assert delivery["body"]["approval"]["id"] == gate.id
        assert delivery["body"]["approval"]["content_digest"] == gate.content_digest

        assert manager.notices.unread_count("alice") == 1

    def test_the_stored_body_never_holds_working_links(self, manager: ApprovalManager, smtp_server: SmtpSink) -> None:
        gate = open_gate(manager, channels=["email"])
        rows = dispatcher(manager).dispatch(gate, "required")
        mail = smtp_server.wait(2)[0]
        assert "/hitl/links?token=" in mail.get_body(("plain",)).get_content()
        assert all("/hitl/links?token=" not in (r.body or "") for r in rows)
        assert all("[link]" in (r.body or "") for r in rows)

    def test_webhook_500_twice_then_200_ends_sent_with_two_retries(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver
    ) -> None:
        webhook_receiver.statuses[:] = [500, 500, 200]
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "sent"
        assert row.retry_count == 2
        assert row.error is None
        assert [d["status"] for d in webhook_receiver.deliveries] == [500, 500, 200]
        assert all(d["valid"] for d in webhook_receiver.deliveries)
        # Each attempt is a fresh timestamp and signature, but one message id.
        assert len({d["headers"]["webhook-id"] for d in webhook_receiver.deliveries}) == 1

    def test_retries_are_bounded_and_the_row_ends_failed(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver
    ) -> None:
        webhook_receiver.statuses[:] = [500] * 10
        delays: list[float] = []
        gate = open_gate(manager, channels=["webhook"])
        [row] = NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=delays.append).dispatch(
            gate, "required"
        )
        assert row.status == "failed"
        assert row.retry_count == 3
        assert "HTTP 500" in (row.error or "")
        assert len(webhook_receiver.deliveries) == 4
        # Exponential backoff with full jitter: attempt n waits between the floor and floor * 2**n.
        settings = NotifySettings.load()
        policy = RetryPolicy(first=settings.retry_backoff, cap=settings.retry_max_backoff)
        assert [policy.bounds(n) for n in (1, 2, 3)] == [(0.01, 0.02), (0.01, 0.04), (0.01, 0.08)]
        assert len(delays) == 3
        for attempt, delay in enumerate(delays, start=1):
            low, high = policy.bounds(attempt)
            assert low <= delay <= high, (attempt, delay)

    def test_a_broken_channel_does_not_block_the_others_or_the_approval(
        self, manager: ApprovalManager, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SLACK_API_DEFAULT",
            '{"conn_type": "slack", "password": "xoxb-test-token", "extra": {"base_url": "http://127.0.0.1:9/api/"}}',
        )
        gate = open_gate(manager, channels=["slack", "email"])
        rows = dispatcher(manager).dispatch(gate, "required")
        status = {(r.channel, r.recipient): r.status for r in rows}
        assert status[("slack", "alice")] == "failed"
        assert status[("email", "alice")] == "sent"
        assert len(smtp_server.wait(2)) == 2
        decided = manager.approve(gate.id, user=Principal.of("alice"))
        assert decided.state == "approved"

    def test_unknown_recipients_are_recorded_failed_not_crashed_on(
        self, manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate = open_gate(manager, channels=["email", "slack"], users=["alice", "stranger"], roles=["ghosts"])
        rows = dispatcher(manager).dispatch(gate, "required")
        failed = {(r.channel, r.recipient) for r in rows if r.status == "failed"}
        assert failed == {
            ("email", "stranger"),
            ("email", "nobody-knows"),
            ("slack", "stranger"),
            ("slack", "nobody-knows"),
        }
        assert all("no " in r.metadata.get("error", "") for r in rows if r.status == "failed")
        assert [str(m["To"]) for m in smtp_server.wait(1)] == ["alice@example.com"]

    def test_roles_resolve_to_members(self, manager: ApprovalManager, smtp_server: SmtpSink) -> None:
        gate = open_gate(manager, channels=["email"], users=[], roles=["leads"])
        dispatcher(manager).dispatch(gate, "required")
        assert sorted(str(m["To"]) for m in smtp_server.wait(2)) == ["alice@example.com", "bob@example.com"]

    def test_slack_channel_target_and_update_after_decision(
        self, manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate = open_gate(manager, channels=["slack"], slack_channel="#approvals")
        [posted] = dispatcher(manager).dispatch(gate, "required")
        assert posted.recipient == "#approvals"
        decided = manager.approve(gate.id, user=Principal.of("alice"), comment="ok")
        [updated] = dispatcher(manager).dispatch(decided, "decided")
        assert updated.status == "sent"
        [call] = slack_api.of("chat.update")
        assert call.params["ts"] == posted.metadata["ts"]
        footer = call.params["blocks"][-1]["elements"][0]["text"]
        assert "Approved by alice" in footer
        assert not any(b["type"] == "actions" and len(b["elements"]) > 1 for b in call.params["blocks"])

    def test_template_overrides_per_gate(self, manager: ApprovalManager, smtp_server: SmtpSink) -> None:
        gate = open_gate(
            manager,
            channels=["email", "in_app"],
            templates={
                "required": {"subject": "Please look at {{ approval.context.model }}", "text": "Hi {{ recipient }}"}
            },
        )
        rows = dispatcher(manager).dispatch(gate, "required")
        assert smtp_server.wait(2)[0]["Subject"] == "Please look at churn"
        assert {r.body.strip() for r in rows if r.channel == "in_app"} == {"Hi alice", "Hi bob"}

    def test_no_channels_no_rows(self, manager: ApprovalManager) -> None:
        gate = open_gate(manager, channels=[])
        assert dispatcher(manager).dispatch(gate, "required") == []
        assert manager.notices.list_notifications(request_id=gate.id) == []


class TestInApp:
    def test_unread_count_and_mark_read(self, manager: ApprovalManager) -> None:
        gate = manager.create(spec(allowed_approvers=("alice",)))
        first = manager.notices.record_notification(
            request_id=gate.id, channel="in_app", recipient="alice", event_type="required", status="sent"
        )
        manager.notices.record_notification(
            request_id=gate.id, channel="in_app", recipient="alice", event_type="reminder", status="sent"
        )
        assert manager.notices.unread_count("alice") == 2
        assert manager.notices.unread_count("bob") == 0
        assert manager.notices.mark_read("bob", [first.id]) == 0
        assert manager.notices.mark_read("alice", [first.id]) == 1
        assert manager.notices.unread_count("alice") == 1
        assert manager.notices.get_notification(first.id).status == "read"
        assert manager.notices.mark_read("alice") == 1
        assert manager.notices.unread_count("alice") == 0


@pytest.mark.usefixtures("notify_env")
class TestEveryEvent:
    """Every event's default templates render and deliver, in the state the gate is in then."""

    @pytest.mark.parametrize("event", ["required", "reminder", "escalated", "timed_out", "decided", "cancelled"])
    def test_event_renders_and_is_delivered(
        self, manager: ApprovalManager, smtp_server: SmtpSink, webhook_receiver: WebhookReceiver, event: str
    ) -> None:
        gate = open_gate(manager, channels=["email", "webhook", "in_app"], users=["alice"])
        if event == "timed_out":
            gate = manager.create(
                spec(
                    allowed_approvers=("alice",),
                    timeout=dt.timedelta(milliseconds=1),
                    timeout_action="approve",
                    notify={"channels": ["email", "webhook", "in_app"], "users": ["alice"]},
                )
            )
            import time

            time.sleep(0.01)
            gate = manager.apply_timeout(gate.id).approval
            assert gate.state == "timeout"
        elif event == "decided":
            gate = manager.reject(gate.id, user=Principal.of("alice"), reason="not <yet>")
        elif event == "cancelled":
            gate = manager.cancel(gate.id, actor="admin", reason="superseded")
        rows = dispatcher(manager).dispatch(gate, event)
        # The requester (ricky) hears the outcome too, but has no email address: recorded failed.
        failed = {(r.channel, r.recipient) for r in rows if r.status != "sent"}
        assert failed == ({("email", "ricky")} if event in ("decided", "timed_out", "cancelled") else set())
        assert [d["body"]["event"] for d in webhook_receiver.deliveries] == [event]
        mails = smtp_server.wait(1)
        text = mails[0].get_body(("plain",)).get_content()
        actionable = event in ("required", "reminder", "escalated")
        assert ("/hitl/links?token=" in text) is actionable
        if event == "timed_out":
            assert "approved automatically" in text
            assert "continue with the downstream tasks" in text
        if event == "decided":
            assert "not <yet>" in text
            assert "stop: the gate fails" in text

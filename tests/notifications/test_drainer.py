"""The notification outbox and its drainer against a real store and a real SMTP server.

Runs on SQLite and PostgreSQL (the ``manager`` fixture). Transitions queue their notices in
their own transaction; drainers (several at once) claim them, send each to each recipient
once, retry through an SMTP outage reusing the same row and message id, and record what was
never delivered when the request closes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_hitl.exceptions import NotAllowed
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.drainer import DrainerService, OutboxDrainer
from airflow_hitl.notifications.signing import read_token, signing_key
from airflow_hitl.outbox import Outbox
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval
from airflow_hitl.settings import HitlSettings
from tests.e2e.mail import MailServer
from tests.helpers import spec
from tests.standins import notify_environment, wait_for

ALICE = Principal.of("alice")


def open_gate(manager: ApprovalManager, *, channels: tuple[str, ...] = ("email",), **overrides: Any) -> Approval:
    """A waiting gate for alice and bob that announces itself by email."""
    notify: dict[str, Any] = {"channels": list(channels)}
    notify.update(overrides.pop("notify", {}))
    fields: dict[str, Any] = {
        "allowed_approvers": ("alice", "bob"),
        "timeout": dt.timedelta(hours=1),
        "timeout_action": "reject",
        "notify": notify,
    }
    fields.update(overrides)
    return manager.create(spec(**fields))


def events_of(manager: ApprovalManager, request_id: str) -> list[tuple[str, str]]:
    return [(i.dedupe_key, i.status) for i in Outbox(store=manager.store).intents(request_id)]


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailServer]:
    """An SMTP server, down until the test starts it, wired into ``smtp_default``."""
    server = MailServer()
    for key, value in notify_environment(smtp_port=server.sink.port).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_MAX_BACKOFF", "0.2")
    yield server
    server.stop()


def drain_until(drainer: OutboxDrainer, check: Any, what: str, timeout: float = 30.0) -> Any:
    """Drain repeatedly (retries come due) until ``check`` holds."""

    def step() -> Any:
        drainer.drain()
        return check()

    return wait_for(step, timeout, what)


class TestPlanning:
    def test_each_transition_queues_its_notice_once(self, manager: ApprovalManager) -> None:
        gate = open_gate(manager)
        assert events_of(manager, gate.id) == [("required", "pending")]
        manager.approve(gate.id, user=ALICE)
        # "Please decide" was never tried and is no longer wanted; how it ended is queued.
        assert events_of(manager, gate.id) == [("required", "cancelled"), ("final:approved", "pending")]

    def test_escalation_and_timeout_queue_their_notices(self, manager: ApprovalManager) -> None:
        clock_start = manager._clock()
        gate = open_gate(
            manager,
            timeout=dt.timedelta(seconds=1),
            timeout_action="escalate",
            escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(seconds=1))],
            escalation_final_action="reject",
        )
        manager._clock = lambda: clock_start + dt.timedelta(seconds=2)
        assert manager.apply_timeout(gate.id).escalated
        manager._clock = lambda: clock_start + dt.timedelta(seconds=4)
        assert manager.apply_timeout(gate.id).applied
        keys = [k for k, _ in events_of(manager, gate.id)]
        assert keys == ["required", "escalated:1", "final:timeout"]
        assert [i.event_type for i in Outbox(store=manager.store).intents(gate.id)][-1] == "timed_out"

    def test_cancel_queues_cancelled(self, manager: ApprovalManager) -> None:
        gate = open_gate(manager)
        manager.cancel(gate.id, actor="ops", reason="withdrawn")
        assert Outbox(store=manager.store).intents(gate.id)[-1].event_type == "cancelled"

    def test_a_refused_decision_queues_nothing(self, manager: ApprovalManager) -> None:
        gate = open_gate(manager)
        with pytest.raises(NotAllowed):
            manager.approve(gate.id, user=Principal.of("mallory"))
        assert events_of(manager, gate.id) == [("required", "pending")]

    def test_gates_without_channels_and_automatic_decisions_queue_nothing_final(self, manager: ApprovalManager) -> None:
        silent = manager.create(spec())
        assert events_of(manager, silent.id) == []
        auto = open_gate(manager)
        manager.decide_automatically(auto.id, source="auto", comment="auto")
        assert events_of(manager, auto.id) == [("required", "cancelled")]


@pytest.mark.usefixtures("smtp")
class TestDelivery:
    def test_each_recipient_gets_the_notice_once(self, manager: ApprovalManager, smtp: MailServer) -> None:
        smtp.start()
        gate = open_gate(manager)
        drainer = OutboxDrainer(manager=manager)
        assert drainer.drain() == 1
        assert drainer.drain() == 0
        messages = smtp.sink.wait(2)
        assert sorted(str(m["To"]) for m in messages) == ["alice@example.com", "bob@example.com"]
        rows = manager.notices.list_notifications(request_id=gate.id)
        intent = Outbox(store=manager.store).intents(gate.id)[0]
        assert {(r.recipient, r.status, r.outbox_id) for r in rows} == {
            ("alice", "sent", intent.id),
            ("bob", "sent", intent.id),
        }
        assert intent.status == "sent"

    def test_concurrent_drainers_send_every_notice_exactly_once(
        self, manager: ApprovalManager, smtp: MailServer
    ) -> None:
        smtp.start()
        gates = [open_gate(manager) for _ in range(12)]
        barrier = threading.Barrier(4)

        def run() -> None:
            drainer = OutboxDrainer(manager=manager)
            barrier.wait()
            drainer.drain(limit=2)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        messages = smtp.sink.wait(24, timeout=30)
        ids = [str(m["X-Hitl-Notification-Id"]) for m in messages]
        assert len(ids) == len(set(ids)) == 24
        per_gate = {g.id: [m for m in messages if str(m["X-Hitl-Request-Id"]) == g.id] for g in gates}
        assert {len(v) for v in per_gate.values()} == {2}

    def test_smtp_outage_is_retried_with_the_same_row_and_link(
        self, manager: ApprovalManager, smtp: MailServer
    ) -> None:
        gate = open_gate(manager)
        drainer = OutboxDrainer(manager=manager)
        drainer.drain()  # SMTP is down
        failed = {r.recipient: r for r in manager.notices.list_notifications(request_id=gate.id)}
        assert {r.status for r in failed.values()} == {"failed"}
        assert all(r.next_attempt_at is not None for r in failed.values()), "a retry is planned"
        drain_until(
            drainer, lambda: manager.notices.list_notifications(request_id=gate.id)[0].retry_count >= 2, "retries"
        )
        smtp.start()
        drain_until(drainer, lambda: len(smtp.sink.messages) >= 2, "delivery after the outage")
        drainer.drain()
        assert len(smtp.sink.messages) == 2, "each approver gets the email once"
        rows = {r.recipient: r for r in manager.notices.list_notifications(request_id=gate.id)}
        assert set(rows) == {"alice", "bob"}, "one row per recipient, reused by every retry"
        assert {r.id for r in rows.values()} == {r.id for r in failed.values()}
        assert all(r.status == "sent" and r.retry_count >= 2 for r in rows.values())
        key = signing_key()
        for message in smtp.sink.messages:
            recipient = "alice" if "alice" in str(message["To"]) else "bob"
            assert str(message["X-Hitl-Notification-Id"]) == rows[recipient].id
            body = message.get_body(("plain",))
            assert body is not None
            token = next(w.split("?token=", 1)[1] for w in body.get_content().split() if "/hitl/links?token=" in w)
            claims = read_token(token, key=key)
            assert claims.notification_id == rows[recipient].id

    def test_closing_records_undelivered_notices_as_failed(self, manager: ApprovalManager, smtp: MailServer) -> None:
        gate = open_gate(manager)
        OutboxDrainer(manager=manager).drain()  # SMTP is down
        manager.approve(gate.id, user=ALICE)
        rows = manager.notices.list_notifications(request_id=gate.id, event_type="required")
        assert {r.status for r in rows} == {"failed"}
        assert all(r.next_attempt_at is None for r in rows)
        assert all((r.error or "").startswith("not delivered before the request was approved") for r in rows)
        assert all("last error" in (r.error or "") for r in rows)
        assert events_of(manager, gate.id) == [("required", "failed"), ("final:approved", "pending")]

    def test_worker_fast_path_leaves_unknown_users_to_the_api_server(
        self, manager: ApprovalManager, smtp: MailServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        smtp.start()
        gate = open_gate(manager, notify={"users": ["alice", "dora"]})
        worker = OutboxDrainer(manager=manager, defer_unresolved=True)
        worker.drain(request_id=gate.id, event_types=["required"])
        assert [(r.recipient, r.status) for r in manager.notices.list_notifications(request_id=gate.id)] == [
            ("alice", "sent")
        ]
        assert events_of(manager, gate.id) == [("required", "pending")], "handed back for the api-server"
        # The api-server knows dora (an auth-manager user there; here through user_emails).
        emails = json.loads(notify_environment()["AIRFLOW__HITL__USER_EMAILS"])
        monkeypatch.setenv("AIRFLOW__HITL__USER_EMAILS", json.dumps({**emails, "dora": "dora@example.com"}))
        OutboxDrainer(manager=manager).drain()
        smtp.sink.wait(2)
        assert sorted(str(m["To"]) for m in smtp.sink.messages) == ["alice@example.com", "dora@example.com"]
        assert events_of(manager, gate.id) == [("required", "sent")]


@pytest.mark.usefixtures("smtp")
class TestReminders:
    def test_reminders_come_while_waiting_and_never_after_expiry(
        self, manager: ApprovalManager, smtp: MailServer
    ) -> None:
        smtp.start()
        # Seconds, not minutes, but with room: a loaded machine must not make a reminder late.
        gate = open_gate(
            manager, timeout=dt.timedelta(seconds=6), notify={"users": ["alice"], "remind_every_seconds": 1.5}
        )
        service = DrainerService(manager_factory=lambda: manager, settings=_fast_settings())
        service.start()
        try:
            wait_for(lambda: manager.apply_timeout(gate.id).applied, 30, "the timeout")
            wait_for(
                lambda: manager.notices.list_notifications(request_id=gate.id, event_type="timed_out", status="sent"),
                30,
                "the timeout notice",
            )
        finally:
            service.stop()
        closed = manager.queries.get(gate.id)
        reminders = manager.notices.list_notifications(request_id=gate.id, event_type="reminder")
        assert 1 <= len(reminders) <= 4
        assert all(r.status == "sent" for r in reminders)
        assert closed.expires_at is not None
        # Every reminder was due before the expiry; none is ever planned after it.
        planned = [i for i in Outbox(store=manager.store).intents(gate.id) if i.dedupe_key.startswith("reminder")]
        assert planned and all(i.due_at < closed.expires_at for i in planned)
        keys = [k for k, _ in events_of(manager, gate.id)]
        assert keys[0] == "required" and keys[-1] == "final:timeout"
        assert [s for k, s in events_of(manager, gate.id) if k.startswith("reminder")][-1] in ("sent", "cancelled")

    def test_a_decision_stops_the_reminders(self, manager: ApprovalManager, smtp: MailServer) -> None:
        smtp.start()
        gate = open_gate(manager, notify={"users": ["alice"], "remind_every_seconds": 600})
        manager.approve(gate.id, user=ALICE)
        assert ("reminder:1", "cancelled") in events_of(manager, gate.id)


def _fast_settings() -> HitlSettings:
    settings = HitlSettings.load()
    return HitlSettings(**{**settings.__dict__, "outbox_poll_interval": 0.1})

"""outbox: what a transition owes is queued with it; senders claim, settle and retry it.

On SQLite and PostgreSQL; the delivery on top of it (recipients, channels) is tested in
tests/notifications/test_drainer.py.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from typing import Any

import pytest
from sqlalchemy import select

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalOutboxRow, ApprovalRequestRow
from airflow_hitl.outbox import Outbox, OutboxIntent, default_owner, listen_conninfo, next_reminder_at
from airflow_hitl.policy import Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")
EVERY = 600.0  # seconds between reminders


def open_gate(mgr: ApprovalManager, **notify: Any) -> str:
    """A gate that announces itself by email, reminds every ten minutes and expires in an hour."""
    fields = {"channels": ["email"], "remind_every_seconds": EVERY, **notify}
    gate = mgr.create(spec(notify=fields, timeout=dt.timedelta(hours=1), timeout_action="reject"))
    return gate.id


def keyed(outbox: Outbox, request_id: str) -> dict[str, OutboxIntent]:
    """The request's intents by dedupe key."""
    return {i.dedupe_key: i for i in outbox.intents(request_id)}


@pytest.fixture
def outbox(store: ApprovalStore, clock: Clock) -> Outbox:
    """A sender on the test's clock."""
    return Outbox(store=store, owner="sender-a", lease_seconds=60, clock=clock)


@pytest.fixture
def other(store: ApprovalStore, clock: Clock) -> Outbox:
    """A second sender sharing the work."""
    return Outbox(store=store, owner="sender-b", lease_seconds=60, clock=clock)


class TestHelpers:
    def test_listen_conninfo_names_what_psycopg_takes(self) -> None:
        url = "postgresql+psycopg://hitl:p%40ss@db.example:6543/approvals?sslmode=require&options=a&options=b"
        assert listen_conninfo(url) == {
            "host": "db.example",
            "port": 6543,
            "user": "hitl",
            "password": "p@ss",
            "dbname": "approvals",
            "sslmode": "require",
        }
        assert listen_conninfo("postgresql://db/approvals") == {"host": "db", "dbname": "approvals"}

    def test_default_owner_is_host_process_and_unique(self) -> None:
        first, second = default_owner(), default_owner()
        assert first.startswith(f"{socket.gethostname()}:{os.getpid()}:")
        assert first != second

    def test_next_reminder_at(self) -> None:
        now = dt.datetime(2026, 11, 30, 9, tzinfo=dt.timezone.utc)
        row = ApprovalRequestRow(notify={"remind_every_seconds": 600}, expires_at=now + dt.timedelta(minutes=25))
        assert next_reminder_at(row, now) == now + dt.timedelta(minutes=10)
        assert next_reminder_at(row, now + dt.timedelta(minutes=10)) == now + dt.timedelta(minutes=20)
        # One that would come at or after the expiry gives way to the timeout's notice.
        assert next_reminder_at(row, now + dt.timedelta(minutes=15)) is None
        assert next_reminder_at(ApprovalRequestRow(notify={}, expires_at=None), now) is None
        forever = ApprovalRequestRow(notify={"remind_every_seconds": 60}, expires_at=None)
        assert next_reminder_at(forever, now) == now + dt.timedelta(minutes=1)


class TestPlanning:
    def test_opening_queues_required_now_and_the_first_reminder(
        self, mgr: ApprovalManager, outbox: Outbox, clock: Clock
    ) -> None:
        gate = open_gate(mgr)
        intents = keyed(outbox, gate)
        assert set(intents) == {"required", "reminder:1"}
        assert (intents["required"].event_type, intents["required"].due_at) == ("required", clock.now)
        assert intents["reminder:1"].due_at == clock.now + dt.timedelta(seconds=EVERY)
        assert all(i.status == "pending" and i.attempts == 0 for i in intents.values())

    def test_a_gate_without_channels_queues_nothing(self, mgr: ApprovalManager, outbox: Outbox) -> None:
        gate = mgr.create(spec(notify={"remind_every_seconds": EVERY}))
        mgr.approve(gate.id, user=ALICE)
        assert outbox.intents(gate.id) == []

    def test_one_reminder_waits_at_a_time_and_none_after_the_decision(
        self, mgr: ApprovalManager, outbox: Outbox, clock: Clock
    ) -> None:
        gate = open_gate(mgr)
        assert outbox.plan_next_reminder(gate, after=clock.now) is False  # reminder:1 still waits
        clock.advance(seconds=EVERY)
        [reminder] = outbox.claim(event_types=["reminder"])
        assert outbox.complete(reminder.id, status="sent")
        assert outbox.plan_next_reminder(gate, after=clock.now)
        second = keyed(outbox, gate)["reminder:2"]
        assert (second.status, second.due_at) == ("pending", clock.now + dt.timedelta(seconds=EVERY))
        mgr.approve(gate, user=ALICE)
        assert outbox.plan_next_reminder(gate, after=clock.now) is False
        assert outbox.plan_next_reminder("00000000-0000-4000-8000-000000000000", after=clock.now) is False

    def test_closing_settles_what_was_owed_and_queues_how_it_ended(
        self, mgr: ApprovalManager, outbox: Outbox, clock: Clock
    ) -> None:
        gate = open_gate(mgr)
        [required] = outbox.claim()
        assert outbox.retry(required.id, at=clock.now + dt.timedelta(minutes=1), error="smtp down")
        mgr.notices.record_notification(
            request_id=gate, channel="email", recipient="alice", event_type="required", status="pending"
        )
        retrying = mgr.notices.record_notification(
            request_id=gate, channel="email", recipient="bob", event_type="required", status="pending"
        )
        mgr.notices.mark_notification_failed(retrying.id, error="451 try later", next_attempt_at=clock.now)
        delivered = mgr.notices.record_notification(
            request_id=gate, channel="email", recipient="carol", event_type="required", status="sent"
        )
        mgr.cancel(gate, actor="admin", reason="not needed")
        reason = "not delivered before the request was cancelled"
        intents = keyed(outbox, gate)
        # Tried and failing: failed with its error; never tried: no longer wanted.
        assert (intents["required"].status, intents["required"].last_error) == (
            "failed",
            f"{reason}; last error: smtp down",
        )
        assert (intents["reminder:1"].status, intents["reminder:1"].last_error) == ("cancelled", reason)
        assert (intents["final:cancelled"].event_type, intents["final:cancelled"].status) == ("cancelled", "pending")
        rows = {n.recipient: n for n in mgr.notices.list_notifications(request_id=gate)}
        assert (rows["alice"].status, rows["alice"].error) == ("failed", reason)
        assert (rows["bob"].status, rows["bob"].error) == ("failed", f"{reason}; last error: 451 try later")
        assert rows["bob"].next_attempt_at is None
        assert rows["carol"] == delivered  # a delivered notice is left as it was
        # A sender still holding a settled intent cannot settle it again.
        assert outbox.complete(required.id, status="sent") is False


class TestClaim:
    def test_due_notices_go_to_one_sender_until_the_lease_runs_out(
        self, mgr: ApprovalManager, outbox: Outbox, other: Outbox, clock: Clock
    ) -> None:
        gate = open_gate(mgr)
        [mine] = outbox.claim()  # the reminder is not due yet
        assert (mine.dedupe_key, mine.attempts) == ("required", 1)
        assert other.claim() == []
        clock.advance(seconds=61)
        [theirs] = other.claim(event_types=["required"])
        assert (theirs.id, theirs.attempts) == (mine.id, 2)
        # The first sender lost it: it can no longer settle it; the holder can.
        assert outbox.complete(mine.id, status="sent") is False
        assert other.complete(theirs.id, status="sent")
        assert keyed(outbox, gate)["required"].status == "sent"

    def test_filters_limit_and_due_order(self, mgr: ApprovalManager, outbox: Outbox, clock: Clock) -> None:
        first = open_gate(mgr)
        clock.advance(seconds=1)
        second = open_gate(mgr)
        clock.advance(seconds=1)
        third = open_gate(mgr)
        [only] = outbox.claim(request_id=second)
        assert only.request_id == second
        assert [i.request_id for i in outbox.claim(limit=1)] == [first]
        assert outbox.claim(event_types=["escalated"]) == []
        third_required = keyed(outbox, third)["required"].id
        assert outbox.claim(exclude=[third_required]) == []
        assert [i.id for i in outbox.claim()] == [third_required]

    def test_retry_and_release(self, mgr: ApprovalManager, outbox: Outbox, other: Outbox, clock: Clock) -> None:
        gate = open_gate(mgr)
        [intent] = outbox.claim()
        at = clock.now + dt.timedelta(minutes=2)
        assert outbox.retry(intent.id, at=at, error="e" * 5000)
        [again] = [i for i in outbox.intents(gate) if i.id == intent.id]
        assert (again.due_at, len(again.last_error or "")) == (at, 4000)
        assert other.claim(event_types=["required"]) == []
        clock.advance(minutes=2)
        [taken] = other.claim(event_types=["required"])
        assert other.release(taken.id)
        # Handed back at once: anyone may take it now, lease or not.
        assert [i.id for i in outbox.claim(event_types=["required"])] == [intent.id]

    def test_next_due(self, mgr: ApprovalManager, outbox: Outbox, clock: Clock) -> None:
        assert outbox.next_due() is None
        start = clock.now
        open_gate(mgr)
        assert outbox.next_due() == start
        outbox.claim()
        # required is leased for a minute; the reminder is due in ten.
        assert outbox.next_due() == start + dt.timedelta(seconds=60)

    def test_intent_is_a_copy_of_its_row(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        gate = open_gate(mgr)
        with store.session() as session:
            row = session.scalars(select(ApprovalOutboxRow).where(ApprovalOutboxRow.request_id == gate)).first()
            assert row is not None
            intent = OutboxIntent.from_row(row)
            assert (intent.id, intent.dedupe_key, intent.due_at) == (row.id, row.dedupe_key, row.due_at)

    def test_senders_skip_what_another_holds_without_waiting(self, pg_store: ApprovalStore, clock: Clock) -> None:
        mgr = ApprovalManager(store=pg_store, clock=clock)
        held, free = open_gate(mgr), open_gate(mgr)
        sender = Outbox(store=pg_store, owner="b", clock=clock)
        claimed: list[OutboxIntent] = []
        with pg_store.begin() as session:
            # Another sender mid-claim holds the row lock of one notice.
            session.scalar(
                select(ApprovalOutboxRow)
                .where(ApprovalOutboxRow.request_id == held, ApprovalOutboxRow.dedupe_key == "required")
                .with_for_update()
            )
            thread = threading.Thread(target=lambda: claimed.extend(sender.claim()))
            thread.start()
            thread.join(timeout=120)
            blocked = thread.is_alive()
        thread.join()
        assert not blocked, "claim waited for a lock another sender held"
        assert [i.request_id for i in claimed] == [free]


def test_the_outbox_takes_its_event_sets_from_the_vocabulary() -> None:
    from airflow_hitl import outbox, vocabulary

    assert outbox.ACTION_EVENTS is vocabulary.ACTION_EVENTS
    assert outbox.AUTOMATIC_SOURCES is vocabulary.AUTOMATIC_SOURCES
    assert not hasattr(outbox, "FINAL_EVENTS")  # how a request ended is vocabulary.final_event

"""notices: the notices of a request as rows (record, deliver, list, read, use a link), SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from airflow_hitl.exceptions import InvalidInput, LinkAlreadyUsed
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.records import Notification
from tests.helpers import Clock, spec


@pytest.fixture
def request_id(mgr: ApprovalManager) -> str:
    """A waiting request the notices speak of."""
    return mgr.create(spec()).id


def notice(mgr: ApprovalManager, request_id: str, recipient: str = "alice", **kw: object) -> Notification:
    fields: dict[str, object] = {"channel": "in_app", "event_type": "required", "status": "sent"}
    fields.update(kw)
    return mgr.notices.record_notification(request_id=request_id, recipient=recipient, **fields)  # type: ignore[arg-type]


class TestRecord:
    def test_a_sent_notice(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        at = dt.datetime(2026, 11, 30, 9, tzinfo=dt.timezone.utc)
        made = notice(mgr, request_id, channel="email", subject="Approve?", metadata={"at": at})
        got = mgr.notices.get_notification(made.id)
        assert got == made
        assert (got.status, got.sent_at, got.failed_at, got.retry_count) == ("sent", clock.now, None, 0)
        assert got.metadata == {"at": "2026-11-30T09:00:00+00:00"}

    def test_a_failed_notice_and_a_pending_one(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        failed = notice(mgr, request_id, channel="slack", status="failed")
        assert (failed.failed_at, failed.sent_at) == (clock.now, None)
        pending = notice(mgr, request_id, channel="webhook", status="pending")
        assert (pending.failed_at, pending.sent_at) == (None, None)

    def test_the_caller_may_choose_the_id(self, mgr: ApprovalManager, request_id: str) -> None:
        chosen = "0f0f0f0f-0000-4000-8000-000000000001"
        assert notice(mgr, request_id, notification_id=chosen, outbox_id="o-1").id == chosen
        assert mgr.notices.get_notification(chosen).outbox_id == "o-1"

    def test_long_recipient_and_subject_are_cut_to_their_columns(self, mgr: ApprovalManager, request_id: str) -> None:
        made = notice(mgr, request_id, recipient="r" * 400, subject="s" * 600, channel="email")
        got = mgr.notices.get_notification(made.id)
        assert (len(got.recipient), len(got.subject or "")) == (320, 500)

    @pytest.mark.parametrize(("kw", "field"), [({"channel": "pigeon"}, "channel"), ({"status": "lost"}, "status")])
    def test_unknown_channel_or_status(self, mgr: ApprovalManager, request_id: str, kw: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            notice(mgr, request_id, **kw)
        assert err.value.field == field
        assert mgr.notices.list_notifications(request_id=request_id) == []

    def test_unknown_notification(self, mgr: ApprovalManager) -> None:
        for call in (
            lambda: mgr.notices.get_notification("nope"),
            lambda: mgr.notices.mark_notification_sent("nope"),
            lambda: mgr.notices.mark_notification_failed("nope", error="x"),
        ):
            with pytest.raises(InvalidInput) as err:
                call()
            assert err.value.field == "notification_id"


class TestDelivery:
    def test_failed_then_sent(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        made = notice(mgr, request_id, channel="slack", status="pending", metadata={"channel": "C1"})
        retry_at = clock.advance(minutes=1) + dt.timedelta(minutes=5)
        failed = mgr.notices.mark_notification_failed(
            made.id, error="x" * 5000, retry_count=1, next_attempt_at=retry_at
        )
        assert (failed.status, failed.failed_at, failed.next_attempt_at) == ("failed", clock.now, retry_at)
        assert (len(failed.error or ""), failed.retry_count) == (4000, 1)
        clock.advance(minutes=5)
        sent = mgr.notices.mark_notification_sent(made.id, retry_count=2, metadata={"ts": "171.5"})
        # Sent clears the error and the retry; the channel's metadata is merged, not replaced.
        assert (sent.status, sent.sent_at, sent.error, sent.next_attempt_at) == ("sent", clock.now, None, None)
        assert sent.retry_count == 2
        assert sent.metadata == {"channel": "C1", "ts": "171.5"}
        assert mgr.notices.get_notification(made.id) == sent

    def test_a_final_failure_has_no_next_attempt(self, mgr: ApprovalManager, request_id: str) -> None:
        made = notice(mgr, request_id, channel="email", status="pending")
        failed = mgr.notices.mark_notification_failed(made.id, error="550 no such user")
        assert (failed.next_attempt_at, failed.retry_count, failed.error) == (None, 0, "550 no such user")


class TestList:
    def test_filters_order_and_pages(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        other = mgr.create(spec()).id
        made = []
        for recipient, channel, rid in (
            ("alice", "email", request_id),
            ("bob", "email", request_id),
            ("alice", "in_app", request_id),
            ("alice", "email", other),
        ):
            clock.advance(seconds=1)
            made.append(notice(mgr, rid, recipient=recipient, channel=channel).id)
        listed = mgr.notices.list_notifications
        assert [n.id for n in listed()] == made
        assert [n.id for n in listed(newest_first=True)] == made[::-1]
        assert [n.id for n in listed(request_id=request_id, recipient="alice")] == [made[0], made[2]]
        assert [n.id for n in listed(channel="email", recipient="alice")] == [made[0], made[3]]
        assert [n.id for n in listed(limit=2, offset=1)] == made[1:3]
        assert listed(status="failed") == []
        assert listed(event_type="decided") == []

    def test_counts_per_recipient(self, mgr: ApprovalManager, request_id: str) -> None:
        notice(mgr, request_id, channel="email")
        notice(mgr, request_id, channel="in_app")
        notice(mgr, request_id, channel="email", status="failed")
        notice(mgr, request_id, recipient="bob")
        assert mgr.notices.count_notifications(recipient="alice") == 3
        assert mgr.notices.count_notifications(recipient="alice", channel="email") == 2
        assert mgr.notices.count_notifications(recipient="alice", channel="email", status="sent") == 1
        assert mgr.notices.count_notifications(recipient="nobody") == 0


class TestRead:
    def test_unread_counts_only_delivered_in_app_notices(self, mgr: ApprovalManager, request_id: str) -> None:
        notice(mgr, request_id)
        notice(mgr, request_id)
        notice(mgr, request_id, channel="email")
        notice(mgr, request_id, status="pending")
        notice(mgr, request_id, recipient="bob")
        assert mgr.notices.unread_count("alice") == 2

    def test_mark_all_read(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        mine = [notice(mgr, request_id).id for _ in range(2)]
        email = notice(mgr, request_id, channel="email").id
        bobs = notice(mgr, request_id, recipient="bob").id
        at = clock.advance(minutes=1)
        assert mgr.notices.mark_read("alice") == 2
        assert mgr.notices.mark_read("alice") == 0  # already read
        assert all(
            mgr.notices.get_notification(i).status == "read" and mgr.notices.get_notification(i).read_at == at
            for i in mine
        )
        assert mgr.notices.get_notification(email).status == "sent"
        assert mgr.notices.get_notification(bobs).status == "sent"
        assert mgr.notices.unread_count("alice") == 0
        assert mgr.notices.unread_count("bob") == 1

    def test_mark_some_read_and_never_someone_elses(self, mgr: ApprovalManager, request_id: str) -> None:
        first, second = (notice(mgr, request_id).id for _ in range(2))
        bobs = notice(mgr, request_id, recipient="bob").id
        assert mgr.notices.mark_read("alice", [first, bobs]) == 1
        assert [mgr.notices.get_notification(i).status for i in (first, second, bobs)] == ["read", "sent", "sent"]
        assert mgr.notices.mark_read("alice", []) == 0


class TestLinks:
    def test_a_link_works_once(self, mgr: ApprovalManager, clock: Clock, request_id: str) -> None:
        link = notice(mgr, request_id, channel="email", metadata={"token_id": "t1"}).id
        used = mgr.notices.consume_link(link, request_id=request_id, recipient="alice", action="approve")
        assert used.metadata == {"token_id": "t1", "link_used": {"action": "approve", "at": clock.now.isoformat()}}
        with pytest.raises(LinkAlreadyUsed) as err:
            mgr.notices.consume_link(link, request_id=request_id, recipient="alice", action="reject")
        assert err.value.notification_id == link
        assert mgr.notices.get_notification(link).metadata["link_used"]["action"] == "approve"

    def test_a_link_of_another_request_or_recipient_is_refused_and_stays_unused(
        self, mgr: ApprovalManager, request_id: str
    ) -> None:
        other = mgr.create(spec()).id
        link = notice(mgr, request_id, channel="email").id
        for rid, recipient in ((other, "alice"), (request_id, "bob")):
            with pytest.raises(InvalidInput) as err:
                mgr.notices.consume_link(link, request_id=rid, recipient=recipient, action="approve")
            assert err.value.field == "link"
        assert "link_used" not in mgr.notices.get_notification(link).metadata
        with pytest.raises(InvalidInput):
            mgr.notices.consume_link("nope", request_id=request_id, recipient="alice", action="approve")

    def test_simultaneous_uses_one_success(self, pg_store: ApprovalStore) -> None:
        mgr = ApprovalManager(store=pg_store)
        rid = mgr.create(spec()).id
        link = notice(mgr, rid, channel="email").id
        start = threading.Barrier(8)
        outcomes: list[str] = []

        def use() -> None:
            start.wait()
            try:
                mgr.notices.consume_link(link, request_id=rid, recipient="alice", action="approve")
                outcomes.append("used")
            except LinkAlreadyUsed:
                outcomes.append("refused")

        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * 7 + ["used"]

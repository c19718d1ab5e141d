"""GET /approvals/{id} lists the request's notices and how their delivery went (issue 10)."""

from __future__ import annotations

from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, open_request


class TestNotices:
    def test_detail_lists_each_notice_with_its_status_and_error(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        approval = open_request(api_manager)
        sent = api_manager.notices.record_notification(
            request_id=approval.id,
            channel="email",
            recipient="alice",
            event_type="required",
            body="secret link inside",
            metadata={"address": "alice@example.com"},
        )
        api_manager.notices.mark_notification_sent(sent.id)
        failed = api_manager.notices.record_notification(
            request_id=approval.id, channel="email", recipient="bob", event_type="required"
        )
        api_manager.notices.mark_notification_failed(failed.id, error="not delivered before the request was approved")

        item = api.client.get(f"{API}/{approval.id}", headers=api.headers("op")).json()
        notices = {(n["channel"], n["recipient"], n["event_type"]): n for n in item["notices"]}
        assert set(notices) == {("email", "alice", "required"), ("email", "bob", "required")}
        assert notices[("email", "alice", "required")]["status"] == "sent"
        assert notices[("email", "bob", "required")]["status"] == "failed"
        assert notices[("email", "bob", "required")]["error"] == "not delivered before the request was approved"
        # Bodies (they held links) and addresses are not part of the API.
        assert all(
            set(n) == {"channel", "recipient", "event_type", "status", "error", "retry_count", "sent_at", "created_at"}
            for n in item["notices"]
        )

    def test_lists_leave_notices_out(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        open_request(api_manager)
        body = api.client.get(API, headers=api.headers("op")).json()
        assert body["approvals"] and all(a["notices"] is None for a in body["approvals"])

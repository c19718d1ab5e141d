"""``/hitl/api/v1/notifications``: the caller's own in-app notices, through Airflow's real app and tokens."""

from __future__ import annotations

import pytest

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from tests.airflow_api import AirflowApi, open_request, snapshot

NOTIFICATIONS = "/hitl/api/v1/notifications"


def _open_gate_telling(manager: ApprovalManager, *people: str, title: str = "Release v2") -> str:
    """Open a request whose in_app notices go to ``people``, sent by the real dispatcher; return its id."""
    approval = open_request(
        manager, title=title, allowed_approvers=list(people), notify={"channels": ["in_app"], "users": list(people)}
    )
    rows = NotificationDispatcher(manager=manager, base_url="http://airflow.test").dispatch(approval, "required")
    assert {(r.channel, r.recipient, r.status) for r in rows} == {("in_app", p, "sent") for p in people}
    return approval.id


class TestListNotifications:
    def test_a_user_sees_only_their_own_notices_newest_first(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        first = _open_gate_telling(api_manager, "alice", "bob", title="First gate")
        second = _open_gate_telling(api_manager, "alice", title="Second gate")

        body = api.client.get(NOTIFICATIONS, headers=api.headers("alice")).json()
        assert body["total_entries"] == 2
        assert body["unread_count"] == 2
        assert [n["request_id"] for n in body["notifications"]] == [second, first]
        newest = body["notifications"][0]
        assert newest["event_type"] == "required"
        assert "Second gate" in newest["subject"]
        assert newest["read"] is False and newest["read_at"] is None
        assert newest["details_url"].startswith("http://airflow.test")

        bob = api.client.get(NOTIFICATIONS, headers=api.headers("bob")).json()
        assert [n["request_id"] for n in bob["notifications"]] == [first]
        assert bob["unread_count"] == 1

        nobody = api.client.get(NOTIFICATIONS, headers=api.headers("viewer")).json()
        assert nobody == {"notifications": [], "total_entries": 0, "unread_count": 0}

    def test_other_channels_are_not_listed(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        api_manager.notices.record_notification(
            request_id=approval.id, channel="email", recipient="alice", event_type="required", status="sent"
        )
        body = api.client.get(NOTIFICATIONS, headers=api.headers("alice")).json()
        assert body["total_entries"] == 0 and body["unread_count"] == 0

    def test_unread_only_and_paging(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        ids = [_open_gate_telling(api_manager, "alice", title=f"Gate {i}") for i in range(3)]
        listed = api.client.get(NOTIFICATIONS, headers=api.headers("alice")).json()["notifications"]
        oldest = listed[-1]["id"]
        api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json={"ids": [oldest]})

        unread = api.client.get(NOTIFICATIONS, params={"unread_only": True}, headers=api.headers("alice")).json()
        assert unread["total_entries"] == 2
        assert [n["request_id"] for n in unread["notifications"]] == [ids[2], ids[1]]
        page = api.client.get(NOTIFICATIONS, params={"limit": 1, "offset": 1}, headers=api.headers("alice")).json()
        assert page["total_entries"] == 3
        assert [n["request_id"] for n in page["notifications"]] == [ids[1]]


class TestMarkRead:
    def test_marking_some_read_lowers_the_count(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        _open_gate_telling(api_manager, "alice")
        _open_gate_telling(api_manager, "alice")
        listed = api.client.get(NOTIFICATIONS, headers=api.headers("alice")).json()["notifications"]

        newest = {"ids": [listed[0]["id"]]}
        response = api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json=newest)
        assert response.status_code == 200, response.text
        assert response.json() == {"marked": 1, "unread_count": 1}
        after = api.client.get(NOTIFICATIONS, headers=api.headers("alice")).json()
        assert [n["read"] for n in after["notifications"]] == [True, False]
        assert after["notifications"][0]["read_at"] is not None

        again = api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json=newest)
        assert again.json() == {"marked": 0, "unread_count": 1}

    def test_no_ids_marks_everything_read(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        _open_gate_telling(api_manager, "alice", "bob")
        _open_gate_telling(api_manager, "alice")
        response = api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json={})
        assert response.json() == {"marked": 2, "unread_count": 0}
        # bob's notice is his own: untouched.
        assert api_manager.notices.unread_count("bob") == 1

    def test_another_users_notice_cannot_be_marked(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        _open_gate_telling(api_manager, "bob")
        [bobs] = api_manager.notices.list_notifications(recipient="bob", channel="in_app")
        response = api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json={"ids": [bobs.id]})
        assert response.json() == {"marked": 0, "unread_count": 0}
        assert api_manager.notices.unread_count("bob") == 1

    def test_cookie_only_post_needs_the_same_site_header(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        _open_gate_telling(api_manager, "alice")
        cookies = {"_token": api.tokens["alice"]}
        refused = api.client.post(NOTIFICATIONS + "/read", cookies=cookies, json={})
        assert refused.status_code == 403
        assert api_manager.notices.unread_count("alice") == 1
        accepted = api.client.post(
            NOTIFICATIONS + "/read", cookies=cookies, headers={"X-Requested-With": "XMLHttpRequest"}, json={}
        )
        assert accepted.status_code == 200, accepted.text
        assert api_manager.notices.unread_count("alice") == 0


class TestRefusals:
    @pytest.mark.parametrize(
        ("method", "path"), [("GET", NOTIFICATIONS), ("POST", NOTIFICATIONS + "/read")], ids=["list", "read"]
    )
    def test_no_token_is_401(self, api: AirflowApi, method: str, path: str) -> None:
        assert api.client.request(method, path, json={}).status_code == 401

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"ids": "all"}, id="ids-not-list"),
            pytest.param({"ids": [""]}, id="empty-id"),
            pytest.param({"ids": ["x" * 65]}, id="long-id"),
            pytest.param({"ids": ["a\x00b"]}, id="nul"),
            pytest.param({"ids": [str(i) for i in range(501)]}, id="too-many"),
            pytest.param({"user": "bob"}, id="unknown-field"),
            pytest.param([1, 2], id="not-object"),
        ],
    )
    def test_bad_body_is_422_and_changes_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, body: object
    ) -> None:
        _open_gate_telling(api_manager, "alice")
        before = snapshot(api_manager)
        response = api.client.post(NOTIFICATIONS + "/read", headers=api.headers("alice"), json=body)
        assert response.status_code == 422, response.text
        assert api_manager.notices.unread_count("alice") == 1
        assert snapshot(api_manager) == before

    @pytest.mark.parametrize(
        "params",
        [
            pytest.param({"limit": -1}, id="negative-limit"),
            pytest.param({"limit": 10_000}, id="huge-limit"),
            pytest.param({"offset": 2**70}, id="huge-offset"),
            pytest.param({"unread_only": "maybe"}, id="not-bool"),
        ],
    )
    def test_bad_query_is_422(self, api: AirflowApi, params: dict) -> None:
        response = api.client.get(NOTIFICATIONS, params=params, headers=api.headers("alice"))
        assert response.status_code == 422, response.text

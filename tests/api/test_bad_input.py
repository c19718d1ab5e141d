"""Bad input gets the right 4xx, never a 500, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.settings import option
from tests.airflow_api import API, AirflowApi, fill_id, open_request, snapshot

MAX_COMMENT_LENGTH = int(option("max_comment_length").default)
LONG = "x" * (MAX_COMMENT_LENGTH + 1)

# (id, method, path with {id}, raw body or JSON body, expected status)
CASES: list[Any] = [
    pytest.param("POST", "{id}/approve", b"{not json", 422, id="malformed-json"),
    pytest.param("POST", "{id}/approve", b'{"comment": "ok"', 422, id="truncated-json"),
    pytest.param("POST", "{id}/approve", b"[]", 422, id="body-is-a-list"),
    pytest.param("POST", "{id}/approve", b'"text"', 422, id="body-is-a-string"),
    pytest.param("POST", "{id}/reject", b"", 422, id="empty-body"),
    pytest.param("POST", "{id}/approve", {"comment": "ok", "extra": 1}, 422, id="unknown-field"),
    pytest.param("POST", "{id}/approve", {"user_id": "admin"}, 422, id="user-id-in-body"),
    pytest.param("POST", "{id}/approve", {"comment": LONG}, 422, id="oversized-comment"),
    pytest.param("POST", "{id}/approve", {"comment": 5}, 422, id="comment-not-text"),
    pytest.param("POST", "{id}/approve", {"metadata": [1, 2]}, 422, id="metadata-not-object"),
    pytest.param("POST", "{id}/reject", {"reason": LONG}, 422, id="oversized-reason"),
    pytest.param("POST", "{id}/reject", {"comment": "no reason"}, 422, id="reject-without-reason"),
    pytest.param("POST", "{id}/reject", {"reason": None}, 422, id="reject-null-reason"),
    pytest.param("POST", "{id}/cancel", {}, 422, id="cancel-without-reason"),
    pytest.param("POST", "not-a-uuid/approve", {}, 422, id="invalid-id-approve"),
    pytest.param("POST", "'%20OR%201=1--/reject", {"reason": "x"}, 422, id="injection-id"),
    pytest.param("POST", ("a" * 300) + "/cancel", {"reason": "x"}, 422, id="huge-id"),
    pytest.param("GET", "not-a-uuid", None, 422, id="invalid-id-get"),
    pytest.param("POST", "00000000-0000-4000-8000-000000000000/approve", {}, 404, id="unknown-id"),
    pytest.param("POST", "{id}/approve", {"comment": "a\x00b"}, 422, id="nul-in-comment"),
    pytest.param("POST", "{id}/approve", {"metadata": {"k": "\x00"}}, 422, id="nul-in-metadata"),
    pytest.param("POST", "{id}/approve", b'{"metadata": {"x": NaN}}', 422, id="nan-in-metadata"),
    pytest.param("POST", "", b'{"dag_id": "d", "title": "t", "context": {"x": Infinity}}', 422, id="inf-in-context"),
    pytest.param("GET", "?dag_id=a%00b", None, 422, id="nul-in-filter"),
    pytest.param("GET", "?dag_id=" + "d" * 300, None, 422, id="oversized-filter"),
    pytest.param("GET", "?limit=-1", None, 422, id="negative-limit"),
    pytest.param("GET", "?offset=-5", None, 422, id="negative-offset"),
    pytest.param("GET", "?limit=abc", None, 422, id="limit-not-int"),
    pytest.param("GET", "?limit=1000000", None, 422, id="limit-too-large"),
    pytest.param("GET", "?order_by=password", None, 422, id="unknown-order-by"),
    pytest.param("GET", "?state=maybe", None, 422, id="unknown-state"),
    pytest.param("GET", "pending?offset=-1", None, 422, id="pending-negative-offset"),
    pytest.param("GET", "history?limit=-1", None, 422, id="history-negative-limit"),
    pytest.param("GET", "history?since=yesterday", None, 422, id="history-bad-since"),
    pytest.param("GET", "history?state=pending", None, 422, id="history-waiting-state"),
    pytest.param("GET", "history?format=xml", None, 422, id="history-bad-format"),
    pytest.param("GET", "history?state=pending&state=bogus", None, 422, id="history-unknown-state"),
    pytest.param(
        "GET",
        "history?since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
        None,
        422,
        id="history-since-after-until",
    ),
    pytest.param("POST", "bulk", {"ids": [], "action": "approve"}, 422, id="bulk-no-ids"),
    pytest.param("POST", "bulk", {"ids": ["{id}"], "action": "explode"}, 422, id="bulk-unknown-action"),
    pytest.param("POST", "bulk", {"ids": "{id}", "action": "approve"}, 422, id="bulk-ids-not-list"),
    pytest.param("POST", "bulk", {"ids": ["{id}"] * 501, "action": "approve"}, 422, id="bulk-too-many-ids"),
    pytest.param("POST", "bulk", {"ids": ["{id}"], "action": "approve", "user_id": "x"}, 422, id="bulk-user-id"),
    pytest.param("POST", "bulk", {"ids": ["{id}"], "action": "approve", "comment": LONG}, 422, id="bulk-long-comment"),
    pytest.param("POST", "", {"title": "no dag"}, 422, id="create-without-dag"),
    pytest.param("POST", "", {"dag_id": "billing", "title": " "}, 422, id="create-blank-title"),
    pytest.param("POST", "", {"dag_id": "billing", "title": "t", "requested_by": "x"}, 422, id="create-requested-by"),
    pytest.param("POST", "", {"dag_id": "billing", "title": "t", "timeout_seconds": -1}, 422, id="create-neg-timeout"),
    pytest.param(
        "POST", "", {"dag_id": "billing", "title": "t", "timeout_action": "reject"}, 422, id="create-action-no-timeout"
    ),
]


class TestBadInput:
    """Malformed JSON, unknown fields, oversized text, invalid ids, negative pagination."""

    @pytest.mark.parametrize(("method", "path", "body", "expected"), CASES)
    def test_rejected_without_change(
        self, api: AirflowApi, api_manager: ApprovalManager, method: str, path: str, body: Any, expected: int
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        url = f"{API}/{path.replace('{id}', approval.id)}".rstrip("/").replace("/?", "?")
        kwargs: dict[str, Any] = {"headers": {**api.headers("admin"), "Content-Type": "application/json"}}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = fill_id(body, approval.id)
        response = api.client.request(method, url, **kwargs)
        assert response.status_code == expected, response.text
        assert isinstance(response.json()["detail"], (str, list))
        assert snapshot(api_manager) == before

    def test_comment_at_the_limit_is_accepted(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = api.client.post(
            f"{API}/{approval.id}/approve", headers=api.headers("op"), json={"comment": "x" * MAX_COMMENT_LENGTH}
        )
        assert response.status_code == 200
        assert len(response.json()["votes"][0]["comment"]) == MAX_COMMENT_LENGTH

    @pytest.mark.parametrize("body", [b"{not json", b'{"user_id": 1}'], ids=["malformed", "unknown-field"])
    def test_bad_body_without_token_is_401(self, api: AirflowApi, api_manager: ApprovalManager, body: bytes) -> None:
        approval = open_request(api_manager)
        response = api.client.post(
            f"{API}/{approval.id}/approve", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401

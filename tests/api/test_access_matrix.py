"""Every endpoint by every kind of user, with real tokens from Airflow's SimpleAuthManager.

A refusal must not change anything: the store (requests, votes, audit events) is compared
before and after every call that is expected to fail.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, fill_id, open_request, snapshot

READERS = ("admin", "op", "viewer")
EDIT_ONLY = {"admin": 200, "op": 200, "viewer": 403, "nobody": 403}
EDITORS = ("admin", "op")
ALL_USERS = ("admin", "op", "viewer", "nobody")


def _call(api: AirflowApi, method: str, path: str, user: str | None, body: Any = None) -> Any:
    return api.client.request(method, path, headers=api.headers(user), json=body)


# (endpoint id, method, path template, body, status by user)
ENDPOINTS: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("list", "GET", API, None, {"admin": 200, "op": 200, "viewer": 200, "nobody": 200}),
    ("pending", "GET", f"{API}/pending", None, {"admin": 200, "op": 200, "viewer": 200, "nobody": 200}),
    ("history", "GET", f"{API}/history", None, {"admin": 200, "op": 200, "viewer": 200, "nobody": 200}),
    ("history-csv", "GET", f"{API}/history?format=csv", None, dict.fromkeys(ALL_USERS, 200)),
    ("get", "GET", f"{API}/{{id}}", None, {"admin": 200, "op": 200, "viewer": 200, "nobody": 403}),
    (
        "create",
        "POST",
        API,
        {"dag_id": "billing", "title": "opened over the API"},
        {"admin": 201, "op": 201, "viewer": 403, "nobody": 403},
    ),
    ("approve", "POST", f"{API}/{{id}}/approve", {"comment": "ok"}, EDIT_ONLY),
    (
        "reject",
        "POST",
        f"{API}/{{id}}/reject",
        {"reason": "numbers look wrong"},
        {"admin": 200, "op": 200, "viewer": 403, "nobody": 403},
    ),
    ("cancel", "POST", f"{API}/{{id}}/cancel", {"reason": "not needed"}, EDIT_ONLY),
    ("bulk", "POST", f"{API}/bulk", {"ids": ["{id}"], "action": "approve"}, dict.fromkeys(ALL_USERS, 200)),
]
WRITES = {"create", "approve", "reject", "cancel", "bulk"}


MATRIX = [
    pytest.param(name, method, path, body, user, expected[user], id=f"{name}-{user}")
    for name, method, path, body, expected in ENDPOINTS
    for user in ALL_USERS
]


class TestAccessMatrix:
    """Status codes of every endpoint for admin, op, viewer and a user with no DAG access."""

    @pytest.mark.parametrize(("name", "method", "path", "body", "user", "expected"), MATRIX)
    def test_endpoint_by_user(
        self,
        api: AirflowApi,
        api_manager: ApprovalManager,
        name: str,
        method: str,
        path: str,
        body: Any,
        user: str,
        expected: int,
    ) -> None:
        approval = open_request(api_manager)
        decided = open_request(api_manager, run_id="manual__0")
        api_manager.reject(decided.id, user=_principal("someone"), reason="old")
        before = snapshot(api_manager)

        response = _call(api, method, fill_id(path, approval.id), user, fill_id(body, approval.id))

        assert response.status_code == expected, response.text
        if expected >= 400:
            assert response.json()["detail"]
            assert snapshot(api_manager) == before
        if name == "bulk":
            result = response.json()["results"][0]
            if user in EDITORS:
                expected_result = {"id": approval.id, "ok": True, "status_code": 200, "state": "approved"}
                assert result == {**expected_result, "detail": None}
            else:
                assert result["ok"] is False
                assert result["status_code"] == 403
                assert snapshot(api_manager) == before
        if name in {"list", "pending", "history"}:
            payload = response.json()
            visible = user in READERS
            assert payload["total_entries"] == (1 if visible else 0) * (2 if name == "list" else 1)
            assert len(payload["approvals"]) == payload["total_entries"]
        if name == "history-csv":
            lines = response.text.strip().splitlines()
            assert lines[0].startswith("id,dag_id,run_id")
            assert len(lines) == (2 if user in READERS else 1)

    @pytest.mark.parametrize(
        ("name", "method", "path", "body"),
        [pytest.param(n, m, p, b, id=n) for n, m, p, b, _ in ENDPOINTS],
    )
    @pytest.mark.parametrize("token", ["missing", "garbage", "forged"])
    def test_no_or_bad_token_is_401(
        self, api: AirflowApi, api_manager: ApprovalManager, name: str, method: str, path: str, body: Any, token: str
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        headers = {
            "missing": {},
            "garbage": {"Authorization": "Bearer not-a-jwt"},
            # A real token with its signature altered.
            "forged": {"Authorization": f"Bearer {api.tokens['admin'][:-4]}AAAA"},
        }[token]
        response = api.client.request(
            method, fill_id(path, approval.id), headers=headers, json=fill_id(body, approval.id)
        )
        assert response.status_code == 401, response.text
        assert snapshot(api_manager) == before

    @pytest.mark.parametrize("user", ALL_USERS)
    def test_pending_can_approve_reflects_dag_access(
        self, api: AirflowApi, api_manager: ApprovalManager, user: str
    ) -> None:
        open_request(api_manager)
        response = _call(api, "GET", f"{API}/pending", user)
        items = response.json()["approvals"]
        if user == "nobody":
            assert items == []
            return
        (item,) = items
        assert item["can_approve"] is (user in EDITORS)
        if user == "viewer":
            assert "edit access" in item["can_approve_reason"]


def _principal(name: str) -> Any:
    from airflow_hitl.policy import Principal

    return Principal.of(name, ["admin"])

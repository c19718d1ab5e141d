"""Every endpoint by every kind of user, with real tokens from Airflow's SimpleAuthManager.

A refusal must not change anything: the store (requests, votes, audit events) is compared
before and after every call that is expected to fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, fill_id, open_request, snapshot
from tests.api.routes.test_analytics import ANALYTICS
from tests.api.routes.test_standing import STANDING, known_dags

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
    (
        "standing-create",
        "POST",
        STANDING,
        {
            "dag_id": "billing",
            "valid_until": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7)).isoformat(),
            "comment": "approved ahead",
        },
        {"admin": 201, "op": 201, "viewer": 403, "nobody": 403},
    ),
    ("standing-list", "GET", STANDING, None, dict.fromkeys(ALL_USERS, 200)),
    # {id} is a request's id, no standing approval's: unknown to everyone (owners: TestStandingAccess).
    ("standing-get", "GET", f"{STANDING}/{{id}}", None, dict.fromkeys(ALL_USERS, 404)),
    ("standing-revoke", "DELETE", f"{STANDING}/{{id}}", None, dict.fromkeys(ALL_USERS, 404)),
    ("standing-owed", "GET", f"{API}/{{id}}/standing", None, {"admin": 200, "op": 200, "viewer": 200, "nobody": 403}),
    # Everyone may ask; the figures are of the DAGs the caller may read (none: an empty report).
    ("analytics", "GET", ANALYTICS, None, dict.fromkeys(ALL_USERS, 200)),
    ("analytics-csv", "GET", f"{ANALYTICS}.csv?table=gates", None, dict.fromkeys(ALL_USERS, 200)),
]
WRITES = {"create", "approve", "reject", "cancel", "bulk", "standing-create", "standing-revoke"}


@pytest.fixture(autouse=True)
def _billing_is_a_dag(airflow_api: AirflowApi) -> Iterator[None]:
    # A standing approval may only name a DAG Airflow knows: the requests' DAG is one here.
    with known_dags("billing"):
        yield


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
        if name == "standing-create" and expected == 201:
            assert response.json()["approver"] == user
            assert api_manager.audit.events()[-1].event_type == "standing_created"
        if name == "analytics":
            gates = response.json()["gates"]
            # The request and the rejected one, both of billing's gate.
            assert [(g["dag_id"], g["requests"], g["rejected"]) for g in gates] == (
                [("billing", 2, 1)] if user in READERS else []
            )
        if name == "analytics-csv":
            lines = response.text.strip().splitlines()
            assert lines[0].startswith("dag_id,task_id,requests")
            assert len(lines) == (2 if user in READERS else 1)
        if name == "standing-list":
            assert response.json() == {"standing_approvals": [], "total_entries": 0}

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


class TestStandingAccess:
    """A standing approval is its approver's and the admins': anyone else gets the 404 of an unknown one."""

    @pytest.mark.parametrize(("user", "expected"), [("op", 200), ("admin", 200), ("viewer", 404), ("nobody", 404)])
    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    def test_by_user(
        self, api: AirflowApi, api_manager: ApprovalManager, method: str, user: str, expected: int
    ) -> None:
        created = _call(api, "POST", STANDING, "op", ENDPOINTS_BY_NAME["standing-create"])
        assert created.status_code == 201, created.text
        standing_id = created.json()["id"]
        before = snapshot(api_manager)

        response = _call(api, method, f"{STANDING}/{standing_id}", user)

        assert response.status_code == expected, response.text
        if expected == 404:
            assert snapshot(api_manager) == before
            assert api_manager.standing.get(standing_id).revoked_at is None
            return
        assert response.json()["id"] == standing_id
        if method == "DELETE":
            assert (response.json()["state"], response.json()["revoked_by"]) == ("revoked", user)
            assert api_manager.audit.events()[-1].event_type == "standing_revoked"
        else:
            assert snapshot(api_manager) == before
        listed = _call(api, "GET", STANDING, user).json()["standing_approvals"]
        assert [s["id"] for s in listed] == [standing_id]


ENDPOINTS_BY_NAME = {name: body for name, _, _, body, _ in ENDPOINTS}


def _principal(name: str) -> Any:
    from airflow_hitl.policy import Principal

    return Principal.of(name, ["admin"])

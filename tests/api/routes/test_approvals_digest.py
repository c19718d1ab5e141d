"""Decisions bound to what the approver saw: ``content_digest`` on every item and decision body.

The REST API (one, bulk) and the pages' same-site routes: a digest that is not the request's
current one is a 409 naming the reason and records nothing; a malformed one a 422 naming it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest

from airflow_hitl.canonical import content_digest
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.records import SHOWN_FIELDS
from airflow_hitl.spec import utcnow
from tests.airflow_api import API, AirflowApi, open_request, snapshot

UI = "/hitl/ui"
XHR = {"X-Requested-With": "XMLHttpRequest"}
CHANGED = "the request changed since you opened it"


def _post(api: AirflowApi, path: str, user: str, body: Any) -> Any:
    return api.client.post(path, headers=api.headers(user), json=body)


def _page_post(api: AirflowApi, path: str, user: str, body: Any) -> Any:
    return api.client.post(f"{UI}/api/approvals/{path}", cookies={"_token": api.tokens[user]}, headers=XHR, json=body)


def _escalating(manager: ApprovalManager, **overrides: Any) -> str:
    """A request for ``op`` that escalates to ``alice`` after a minute."""
    return open_request(
        manager,
        allowed_approvers=["op"],
        timeout=dt.timedelta(minutes=1),
        timeout_action="escalate",
        escalation_targets=[EscalationLevel(approvers=("alice",), timeout=dt.timedelta(hours=1))],
        escalation_final_action="reject",
        **overrides,
    ).id


def _escalate(manager: ApprovalManager, request_id: str) -> None:
    """Let the gate's first timeout pass: the escalation widens the circle, so the digest changes."""
    later = ApprovalManager(store=manager.store, clock=lambda: utcnow() + dt.timedelta(minutes=2))
    assert later.apply_timeout(request_id).escalated


def _seen(api: AirflowApi, request_id: str, user: str = "op") -> str:
    """The digest ``user`` is shown on the single item."""
    return api.client.get(f"{API}/{request_id}", headers=api.headers(user)).json()["content_digest"]


class TestEveryItemCarriesIt:
    """Every read of a request shows ``content_digest``: the digest of the item's shown fields."""

    def test_list_pending_item_history_and_csv(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        waiting = open_request(api_manager, run_id="manual__1", context={"rows": 10, "big": 2**60})
        decided = open_request(api_manager, run_id="manual__2")
        api_manager.cancel(decided.id, actor="admin", reason="gone")
        headers = api.headers("viewer")
        item = api.client.get(f"{API}/{waiting.id}", headers=headers).json()
        assert item["content_digest"] == waiting.content_digest
        # Recomputed from the item alone, as any client can (RFC 8785 of the shown fields).
        assert content_digest({name: item[name] for name in SHOWN_FIELDS}) == item["content_digest"]
        listed = {a["id"]: a["content_digest"] for a in api.client.get(API, headers=headers).json()["approvals"]}
        assert listed == {waiting.id: waiting.content_digest, decided.id: decided.content_digest}
        [pending] = api.client.get(f"{API}/pending", headers=headers).json()["approvals"]
        assert pending["content_digest"] == waiting.content_digest
        [history] = api.client.get(f"{API}/history", headers=headers).json()["approvals"]
        assert history["content_digest"] == decided.content_digest
        export = api.client.get(f"{API}/history?format=csv", headers=headers).text
        [row] = csv.DictReader(io.StringIO(export))
        assert row["content_digest"] == decided.content_digest


class TestRest:
    """``POST /approvals/{id}/approve|reject`` with ``content_digest``."""

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_a_request_changed_since_it_was_seen_is_409_and_records_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, action: str
    ) -> None:
        request_id = _escalating(api_manager)
        seen = _seen(api, request_id)
        _escalate(api_manager, request_id)
        before = snapshot(api_manager)
        body = {"content_digest": seen, **({"reason": "numbers off"} if action == "reject" else {})}
        response = _post(api, f"{API}/{request_id}/{action}", "op", body)
        assert response.status_code == 409, response.text
        assert CHANGED in response.json()["detail"]
        assert request_id in response.json()["detail"]
        assert snapshot(api_manager) == before
        assert api_manager.queries.get(request_id).votes == ()
        # Seen again, the request can be decided.
        again = _post(api, f"{API}/{request_id}/{action}", "op", {**body, "content_digest": _seen(api, request_id)})
        assert again.status_code == 200, again.text
        assert again.json()["state"] == ("approved" if action == "approve" else "rejected")

    def test_the_digest_seen_decides_and_is_case_blind(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        seen = _seen(api, approval.id)
        response = _post(api, f"{API}/{approval.id}/approve", "op", {"content_digest": seen.upper()})
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "approved"
        assert response.json()["content_digest"] == seen
        assert [v["content_digest"] for v in response.json()["votes"]] == [seen]

    @pytest.mark.parametrize("action", ["approve", "reject"])
    @pytest.mark.parametrize(
        "digest", ["abc", "z" * 64, "a" * 65, 7, ["a" * 64]], ids=["short", "not-hex", "long", "number", "list"]
    )
    def test_a_malformed_digest_is_422_naming_it(
        self, api: AirflowApi, api_manager: ApprovalManager, action: str, digest: Any
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        body = {"content_digest": digest, **({"reason": "no"} if action == "reject" else {})}
        response = _post(api, f"{API}/{approval.id}/{action}", "op", body)
        assert response.status_code == 422, response.text
        assert any(d["loc"][-1] == "content_digest" for d in response.json()["detail"])
        assert snapshot(api_manager) == before

    def test_the_openapi_document_declares_it(self, api: AirflowApi) -> None:
        schemas = api.client.get("/hitl/openapi.json").json()["components"]["schemas"]
        assert "content_digest" in schemas["ApprovalResponse"]["required"]
        for body in ("ApproveBody", "RejectBody"):
            assert "content_digest" in schemas[body]["properties"]
        assert "content_digests" in schemas["BulkBody"]["properties"]


class TestBulk:
    """``POST /approvals/bulk`` with ``content_digests``: a digest per id."""

    def test_a_changed_request_fails_alone_with_409(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        changed = _escalating(api_manager, run_id="manual__1")
        same = open_request(api_manager, run_id="manual__2").id
        unchecked = open_request(api_manager, run_id="manual__3").id
        digests = {changed: _seen(api, changed), same: _seen(api, same)}
        _escalate(api_manager, changed)
        body = {"ids": [changed, same, unchecked], "action": "approve", "content_digests": digests}
        response = _post(api, f"{API}/bulk", "op", body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["ok"], r["status_code"]) for r in results] == [(False, 409), (True, 200), (True, 200)]
        assert CHANGED in results[0]["detail"]
        assert api_manager.queries.get(changed).votes == ()
        assert [e.event_type for e in api_manager.audit.events(changed)] == ["requested", "escalated"]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"action": "approve", "content_digests": {"{id}": "nothex"}}, "content_digests"),
            ({"action": "approve", "content_digests": {"00000000-0000-4000-8000-000000000000": "a" * 64}}, "not in"),
            ({"action": "cancel", "reason": "x", "content_digests": {"{id}": "a" * 64}}, "content_digests"),
        ],
        ids=["malformed", "unknown-id", "with-cancel"],
    )
    def test_a_digest_that_could_not_be_checked_is_422(
        self, api: AirflowApi, api_manager: ApprovalManager, body: dict[str, Any], message: str
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        digests = {k.replace("{id}", approval.id): v for k, v in body["content_digests"].items()}
        response = _post(api, f"{API}/bulk", "op", {**body, "ids": [approval.id], "content_digests": digests})
        assert response.status_code == 422, response.text
        assert message in response.text
        assert snapshot(api_manager) == before


class TestPages:
    """The pages' same-site routes send the digest of the item they displayed."""

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_a_request_changed_since_the_page_showed_it_is_409(
        self, api: AirflowApi, api_manager: ApprovalManager, action: str
    ) -> None:
        request_id = _escalating(api_manager)
        seen = _seen(api, request_id)
        _escalate(api_manager, request_id)
        before = snapshot(api_manager)
        body = {"content_digest": seen, **({"reason": "no"} if action == "reject" else {})}
        response = _page_post(api, f"{request_id}/{action}", "op", body)
        assert response.status_code == 409, response.text
        assert CHANGED in response.json()["detail"]
        assert snapshot(api_manager) == before
        fresh = _page_post(api, f"{request_id}/{action}", "op", {**body, "content_digest": _seen(api, request_id)})
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["decision_source"] == "ui"

    def test_bulk_from_the_inbox_checks_each_digest(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        changed = _escalating(api_manager, run_id="manual__1")
        same = open_request(api_manager, run_id="manual__2").id
        digests = {changed: _seen(api, changed), same: _seen(api, same)}
        _escalate(api_manager, changed)
        response = _page_post(
            api, "bulk", "op", {"ids": [changed, same], "action": "reject", "reason": "no", "content_digests": digests}
        )
        assert [r["status_code"] for r in response.json()["results"]] == [409, 200]
        assert api_manager.queries.get(changed).is_waiting
        assert api_manager.queries.get(same).state == "rejected"

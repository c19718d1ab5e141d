"""Behaviour of the approvals REST API through Airflow's api-server app with real tokens."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest

from airflow_hitl.api.datamodels import ApprovalCollectionResponse, ApprovalResponse, BulkResponse, VoteResponse
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from tests.airflow_api import API, AirflowApi, open_request, serving, snapshot

ITEM_FIELDS = {
    "id",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "title",
    "description",
    "context",
    "state",
    "requested_by",
    "requested_at",
    "expires_at",
    "timeout_action",
    "required_approvals",
    "allowed_approvers",
    "allowed_roles",
    "votes",
    "decided_by",
    "decided_at",
    "decision",
    "comment",
    "metadata",
    "can_approve",
}


def _post(api: AirflowApi, path: str, user: str, body: Any) -> Any:
    return api.client.post(path, headers={**api.headers(user), "User-Agent": "hitl-tests/1.0"}, json=body)


class TestRead:
    """List, pending, single item and their shapes."""

    def test_list_shape_and_fields(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        open_request(api_manager)
        payload = api.client.get(API, headers=api.headers("viewer")).json()
        assert set(payload) == {"approvals", "total_entries"}
        assert payload["total_entries"] == 1
        assert set(payload["approvals"][0]) >= ITEM_FIELDS

    def test_get_one_with_votes_and_can_approve(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager, required_approvals=2)
        api_manager.approve(approval.id, user=Principal.of("alice"))
        item = api.client.get(f"{API}/{approval.id}", headers=api.headers("op")).json()
        assert item["id"] == approval.id
        assert [v["user"] for v in item["votes"]] == ["alice"]
        assert item["can_approve"] is True
        assert item["can_approve_reason"] is None
        assert item["approvers"] == ["alice"]

    def test_get_uppercase_id_is_the_same_request(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = api.client.get(f"{API}/{approval.id.upper()}", headers=api.headers("op"))
        assert response.status_code == 200
        assert response.json()["id"] == approval.id

    def test_unknown_id_is_404(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        response = api.client.get(f"{API}/00000000-0000-4000-8000-000000000000", headers=api.headers("admin"))
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            pytest.param("dag_id=billing", 2, id="dag_id"),
            pytest.param("dag_id=other", 1, id="other-dag"),
            pytest.param("state=approved", 1, id="state"),
            pytest.param("state=pending&state=approved", 3, id="two-states"),
            pytest.param("run_id=manual__2", 1, id="run_id"),
            pytest.param("task_id=gate", 3, id="task_id"),
            pytest.param("requested_by=carol", 1, id="requested_by"),
            pytest.param("decided_by=bob", 1, id="decided_by"),
            pytest.param("limit=1", 3, id="limit-keeps-total"),
        ],
    )
    def test_list_filters(self, api: AirflowApi, api_manager: ApprovalManager, query: str, expected: int) -> None:
        open_request(api_manager, run_id="manual__1")
        decided = open_request(api_manager, run_id="manual__2")
        open_request(api_manager, dag_id="other", requested_by="carol")
        api_manager.approve(decided.id, user=Principal.of("bob"))
        payload = api.client.get(f"{API}?{query}", headers=api.headers("admin")).json()
        assert payload["total_entries"] == expected

    def test_list_pagination_and_order(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        ids = [open_request(api_manager, run_id=f"manual__{i}", title=f"t{i}").id for i in range(5)]
        page = api.client.get(f"{API}?limit=2&offset=1&order_by=title", headers=api.headers("admin")).json()
        assert page["total_entries"] == 5
        assert [a["id"] for a in page["approvals"]] == ids[1:3]

    def test_pending_lists_only_waiting_with_reason(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        mine = open_request(api_manager, requested_by="alice")
        named = open_request(api_manager, run_id="manual__2", allowed_approvers=["bob"])
        done = open_request(api_manager, run_id="manual__3")
        api_manager.approve(done.id, user=Principal.of("bob"))
        payload = api.client.get(f"{API}/pending", headers=api.headers("alice")).json()
        by_id = {a["id"]: a for a in payload["approvals"]}
        assert set(by_id) == {mine.id, named.id}
        assert by_id[mine.id]["can_approve"] is False
        assert "cannot approve it yourself" in by_id[mine.id]["can_approve_reason"]
        assert by_id[named.id]["can_approve"] is False
        assert "not an allowed approver" in by_id[named.id]["can_approve_reason"]

    def test_openapi_is_served(self, api: AirflowApi) -> None:
        spec = api.client.get("/hitl/openapi.json").json()
        paths = set(spec["paths"])
        assert {
            "/api/v1/approvals",
            "/api/v1/approvals/pending",
            "/api/v1/approvals/history",
            "/api/v1/approvals/{approval_id}",
            "/api/v1/approvals/{approval_id}/approve",
            "/api/v1/approvals/{approval_id}/reject",
            "/api/v1/approvals/{approval_id}/cancel",
            "/api/v1/approvals/bulk",
        } <= paths
        assert spec["components"]["schemas"]["ApproveBody"]["properties"]["comment"]["anyOf"][0]["maxLength"] == 4000


@pytest.mark.postgres
class TestPagesOnPostgres:
    """On PostgreSQL an unchanged request's JSON is kept between pages; the caller's fields never are."""

    def test_each_caller_sees_their_own_fields_and_every_change(
        self, airflow_api: AirflowApi, pg_store: ApprovalStore
    ) -> None:
        with serving(airflow_api, pg_store.url) as manager:
            quorum = open_request(manager, required_approvals=2)
            mine = open_request(manager, run_id="manual__2", requested_by="alice")

            def page(user: str) -> dict[str, dict[str, Any]]:
                response = airflow_api.client.get(f"{API}/pending", headers=airflow_api.headers(user))
                assert response.status_code == 200
                ApprovalCollectionResponse.model_validate(response.json())
                return {a["id"]: a for a in response.json()["approvals"]}

            def alone(request_id: str, user: str) -> dict[str, Any]:
                item = airflow_api.client.get(f"{API}/{request_id}", headers=airflow_api.headers(user)).json()
                return {**item, "notices": None}  # only the single item lists its notices

            for _ in range(2):  # the second page comes from what the first one kept
                for user in ("alice", "bob"):
                    assert page(user) == {a: alone(a, user) for a in (quorum.id, mine.id)}
            assert page("alice")[mine.id]["can_approve"] is False
            assert page("bob")[mine.id]["can_approve"] is True

            manager.approve(quorum.id, user=Principal.of("bob"))
            bob = page("bob")
            assert [v["user"] for v in bob[quorum.id]["votes"]] == ["bob"]
            assert bob[quorum.id]["can_approve"] is False and "already" in bob[quorum.id]["can_approve_reason"]
            assert page("alice")[quorum.id] == alone(quorum.id, "alice")
            assert page("alice")[quorum.id]["can_approve"] is True


class TestAuthentication:
    """Identity always comes from Airflow's token or the UI's cookie."""

    def test_ui_cookie_authenticates(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        open_request(api_manager)
        api.client.cookies.set("_token", api.tokens["viewer"])
        try:
            response = api.client.get(API)
        finally:
            api.client.cookies.clear()
        assert response.status_code == 200
        assert response.json()["total_entries"] == 1

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            pytest.param({}, 403, id="no-header"),
            pytest.param(
                {"X-Requested-With": "XMLHttpRequest", "Origin": "https://evil.example"}, 403, id="other-site"
            ),
            pytest.param({"X-Requested-With": "XMLHttpRequest"}, 200, id="own-page"),
        ],
    )
    def test_cookie_authenticated_decisions_need_a_same_site_request(
        self, api: AirflowApi, api_manager: ApprovalManager, headers: dict[str, str], status: int
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        api.client.cookies.set("_token", api.tokens["op"])
        try:
            response = api.client.post(f"{API}/{approval.id}/approve", json={}, headers=headers)
        finally:
            api.client.cookies.clear()
        assert response.status_code == status, response.text
        if status == 403:
            assert "cross-site" in response.json()["detail"]
            assert snapshot(api_manager) == before
        else:
            assert response.json()["decided_by"] == "op"

    def test_vote_is_cast_as_the_token_user(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = _post(api, f"{API}/{approval.id}/approve", "op", {"comment": "fine"})
        assert response.status_code == 200
        assert response.json()["decided_by"] == "op"
        assert response.json()["votes"][0]["user"] == "op"
        assert response.json()["votes"][0]["user_roles"] == ["op"]

    @pytest.mark.parametrize("field", ["user_id", "user", "decided_by", "requested_by"])
    def test_identity_in_body_is_refused(self, api: AirflowApi, api_manager: ApprovalManager, field: str) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        response = _post(api, f"{API}/{approval.id}/approve", "op", {field: "admin"})
        assert response.status_code == 422
        assert snapshot(api_manager) == before


class TestDecisions:
    """Approve, reject, cancel and the request's own policy."""

    def test_approve_is_audited_with_client(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = _post(api, f"{API}/{approval.id}/approve", "op", {"comment": "ok", "metadata": {"ticket": 7}})
        assert response.status_code == 200
        assert response.json()["state"] == "approved"
        vote = next(e for e in api_manager.audit.events(approval.id) if e.event_type == "vote")
        assert vote.actor == "op"
        assert vote.source == "api"
        assert vote.details["client_address"] == "testclient"
        assert vote.details["user_agent"] == "hitl-tests/1.0"
        final = next(e for e in api_manager.audit.events(approval.id) if e.event_type == "approved")
        assert final.details["client_address"] == "testclient"
        assert api_manager.queries.get(approval.id).votes[0].metadata == {"ticket": 7}

    def test_reject_needs_reason_and_records_it(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        assert _post(api, f"{API}/{approval.id}/reject", "op", {}).status_code == 422
        assert _post(api, f"{API}/{approval.id}/reject", "op", {"reason": "   "}).status_code == 422
        response = _post(api, f"{API}/{approval.id}/reject", "op", {"reason": "bad numbers", "comment": "see Q3"})
        assert response.status_code == 200
        body = response.json()
        assert (body["state"], body["decision"], body["decided_by"]) == ("rejected", "rejected", "op")
        assert body["votes"][0]["reason"] == "bad numbers"

    def test_cancel(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = _post(api, f"{API}/{approval.id}/cancel", "admin", {"reason": "run abandoned"})
        assert response.status_code == 200
        assert response.json()["state"] == "cancelled"
        event = next(e for e in api_manager.audit.events(approval.id) if e.event_type == "cancelled")
        assert (event.actor, event.source, event.details["client_address"]) == ("admin", "api", "testclient")

    def test_quorum_two_of_three(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager, allowed_approvers=["alice", "bob", "op"], required_approvals=2)
        first = _post(api, f"{API}/{approval.id}/approve", "alice", {})
        assert (first.status_code, first.json()["state"]) == (200, "pending")
        second = _post(api, f"{API}/{approval.id}/approve", "bob", {})
        assert (second.status_code, second.json()["state"]) == (200, "approved")
        assert second.json()["approvers"] == ["alice", "bob"]

    def test_allowed_roles_use_the_auth_managers_role(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager, allowed_roles=["op"])
        refused = _post(api, f"{API}/{approval.id}/approve", "alice", {})
        assert refused.status_code == 403
        assert "not an allowed approver" in refused.json()["detail"]
        assert _post(api, f"{API}/{approval.id}/approve", "op", {}).status_code == 200

    @pytest.mark.parametrize(
        ("setup", "user", "status", "detail"),
        [
            pytest.param({"allowed_approvers": ["bob"]}, "alice", 403, "not an allowed approver", id="not-named"),
            pytest.param({"requested_by": "alice"}, "alice", 403, "cannot approve it yourself", id="self-approval"),
            pytest.param({"required_approvals": 2}, "alice", 409, "already voted", id="second-vote"),
            pytest.param({}, "alice", 409, "not pending", id="decided"),
        ],
    )
    def test_policy_refusals(
        self,
        api: AirflowApi,
        api_manager: ApprovalManager,
        setup: dict[str, Any],
        user: str,
        status: int,
        detail: str,
    ) -> None:
        approval = open_request(api_manager, **setup)
        if status == 409:
            # alice votes first (2 needed, so it stays pending) or bob decides it outright.
            voter = "alice" if setup else "bob"
            assert _post(api, f"{API}/{approval.id}/approve", voter, {}).status_code == 200
        before = snapshot(api_manager)
        response = _post(api, f"{API}/{approval.id}/approve", user, {})
        assert response.status_code == status
        assert detail in response.json()["detail"]
        assert snapshot(api_manager) == before

    @pytest.mark.parametrize("action", ["approve", "reject", "cancel"])
    def test_decided_request_is_409(self, api: AirflowApi, api_manager: ApprovalManager, action: str) -> None:
        approval = open_request(api_manager)
        api_manager.cancel(approval.id, actor="admin", reason="gone")
        before = snapshot(api_manager)
        response = _post(api, f"{API}/{approval.id}/{action}", "op", {"reason": "x"} if action != "approve" else {})
        assert response.status_code == 409
        assert snapshot(api_manager) == before

    def test_expired_request_is_409(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager, timeout=dt.timedelta(seconds=1), timeout_action="reject")
        api_manager._clock = lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
        response = _post(api, f"{API}/{approval.id}/approve", "op", {})
        assert response.status_code == 409
        assert "expired" in response.json()["detail"]

    def test_create_records_the_caller(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        body = {
            "dag_id": "billing",
            "title": "External gate",
            "timeout_seconds": 3600,
            "timeout_action": "escalate",
            "escalate_to": [{"approvers": ["bob"], "timeout_seconds": 600}],
            "escalation_final_action": "reject",
            "allowed_approvers": ["alice", "bob"],
            "required_approvals": 2,
        }
        response = _post(api, API, "op", body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["requested_by"] == "op"
        assert created["state"] == "pending"
        assert created["escalation_targets"][0]["approvers"] == ["bob"]
        assert api_manager.queries.get(created["id"]).requested_by == "op"

    def test_create_with_an_sla(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        body = {"dag_id": "billing", "title": "Overdue at 10 minutes", "sla_seconds": 600, "timeout_seconds": 3600}
        response = _post(api, API, "op", body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert (created["sla_seconds"], created["sla_breached_at"]) == (600, None)
        assert api_manager.queries.get(created["id"]).sla_seconds == 600

    def test_an_sla_not_shorter_than_the_timeout_is_422(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        body = {"dag_id": "billing", "title": "x", "sla_seconds": 3600, "timeout_seconds": 600}
        response = _post(api, API, "op", body)
        assert response.status_code == 422
        assert "sla" in response.json()["detail"] and "shorter than the timeout" in response.json()["detail"]
        assert snapshot(api_manager) == ([], 0)

    def test_create_invalid_spec_is_422(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        body = {"dag_id": "billing", "title": "x", "allowed_approvers": ["a"], "required_approvals": 3}
        response = _post(api, API, "op", body)
        assert response.status_code == 422
        assert "required_approvals" in response.json()["detail"]
        assert snapshot(api_manager) == ([], 0)


class TestBulk:
    """One result per id; one bad id stops nothing."""

    def test_bulk_approve_mixed(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        good = [open_request(api_manager, run_id=f"manual__{i}").id for i in range(3)]
        decided = open_request(api_manager, run_id="manual__9")
        api_manager.cancel(decided.id, actor="admin", reason="gone")
        unknown = "00000000-0000-4000-8000-000000000000"
        ids = [good[0], "not-an-id", good[1], unknown, decided.id, good[2]]
        response = _post(api, f"{API}/bulk", "op", {"ids": ids, "action": "approve", "comment": "batch"})
        assert response.status_code == 200
        body = response.json()
        assert [r["status_code"] for r in body["results"]] == [200, 422, 200, 404, 409, 200]
        assert (body["succeeded"], body["failed"]) == (3, 3)
        assert all(api_manager.queries.get(i).state == "approved" for i in good)
        sources = {e.source for i in good for e in api_manager.audit.events(i) if e.event_type == "vote"}
        assert sources == {"bulk"}

    @pytest.mark.parametrize("action", ["reject", "cancel"])
    def test_bulk_needs_reason(self, api: AirflowApi, api_manager: ApprovalManager, action: str) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        response = _post(api, f"{API}/bulk", "op", {"ids": [approval.id], "action": action})
        assert response.status_code == 422
        assert snapshot(api_manager) == before
        ok = _post(api, f"{API}/bulk", "op", {"ids": [approval.id], "action": action, "reason": "batch"})
        assert ok.json()["results"][0]["state"] == ("rejected" if action == "reject" else "cancelled")

    def test_bulk_policy_refusal_is_per_id(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        allowed = open_request(api_manager, run_id="manual__1")
        named = open_request(api_manager, run_id="manual__2", allowed_approvers=["bob"])
        response = _post(api, f"{API}/bulk", "alice", {"ids": [named.id, allowed.id], "action": "approve"})
        first, second = response.json()["results"]
        assert (first["status_code"], second["status_code"]) == (403, 200)
        assert "not an allowed approver" in first["detail"]
        assert api_manager.queries.get(named.id).state == "pending"

    def test_bulk_four_eyes_refusal_is_per_id(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        review = open_request(api_manager, run_id="manual__1", task_id="review")
        deploy = open_request(api_manager, run_id="manual__1", task_id="deploy", distinct_from=["review"])
        elsewhere = open_request(api_manager, run_id="manual__2", task_id="deploy", distinct_from=["review"])
        assert _post(api, f"{API}/{review.id}/approve", "alice", {}).status_code == 200
        response = _post(api, f"{API}/bulk", "alice", {"ids": [deploy.id, elsewhere.id], "action": "approve"})
        first, second = response.json()["results"]
        assert (first["status_code"], second["status_code"]) == (403, 200)
        assert "alice already voted on gate 'review' of this run; this gate needs someone else" in first["detail"]
        assert api_manager.queries.get(deploy.id).votes == ()


class TestFourEyes:
    """``distinct_from``: the item says who may not vote and why; a vote from them is a 403 naming the earlier gate."""

    def test_a_voter_on_the_named_gate_is_refused_and_told_why(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        review = open_request(api_manager, run_id="manual__1", task_id="review")
        deploy = open_request(api_manager, run_id="manual__1", task_id="deploy", distinct_from=["review"])
        assert _post(api, f"{API}/{review.id}/reject", "alice", {"reason": "not yet"}).status_code == 200
        item = api.client.get(f"{API}/{deploy.id}", headers=api.headers("alice")).json()
        assert item["distinct_from"] == ["review"]
        assert item["can_approve"] is False
        assert item["can_approve_reason"] == (
            "alice already voted on gate 'review' of this run; this gate needs someone else"
        )
        assert api.client.get(f"{API}/{deploy.id}", headers=api.headers("bob")).json()["can_approve"] is True
        before = snapshot(api_manager)
        refused = _post(api, f"{API}/{deploy.id}/approve", "alice", {})
        assert refused.status_code == 403
        assert "gate 'review'" in refused.json()["detail"]
        assert snapshot(api_manager) == before
        assert _post(api, f"{API}/{deploy.id}/approve", "bob", {}).json()["state"] == "approved"


class TestHistory:
    """Decided requests: filters, pagination and the CSV export."""

    @pytest.fixture
    def decided(self, api_manager: ApprovalManager) -> list[str]:
        ids = []
        for i, (user, action) in enumerate([("alice", "approve"), ("bob", "reject"), ("alice", "reject")]):
            approval = open_request(api_manager, run_id=f"manual__{i}", requested_by="carol" if i else "dave")
            if action == "approve":
                api_manager.approve(approval.id, user=Principal.of(user))
            else:
                api_manager.reject(approval.id, user=Principal.of(user), reason='=HYPERLINK("x")')
            ids.append(approval.id)
        open_request(api_manager, run_id="manual__pending")
        return ids

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            pytest.param("", 3, id="all-decided"),
            pytest.param("decided_by=alice", 2, id="decided_by"),
            pytest.param("state=rejected", 2, id="state"),
            pytest.param("requested_by=carol", 2, id="requested_by"),
            pytest.param("dag_id=billing", 3, id="dag_id"),
            pytest.param("dag_id=nope", 0, id="dag_id-none"),
            pytest.param("since=2000-01-01T00:00:00Z", 3, id="since"),
            pytest.param("until=2000-01-01T00:00:00", 0, id="until-naive-utc"),
        ],
    )
    def test_filters(self, api: AirflowApi, decided: list[str], query: str, expected: int) -> None:
        response = api.client.get(f"{API}/history?{query}", headers=api.headers("viewer"))
        assert response.status_code == 200, response.text
        assert response.json()["total_entries"] == expected

    def test_pagination(self, api: AirflowApi, decided: list[str]) -> None:
        page = api.client.get(f"{API}/history?limit=2&offset=2", headers=api.headers("viewer")).json()
        assert page["total_entries"] == 3
        assert [a["id"] for a in page["approvals"]] == [decided[0]]

    def test_csv_export(self, api: AirflowApi, decided: list[str]) -> None:
        response = api.client.get(f"{API}/history?format=csv&decided_by=alice", headers=api.headers("viewer"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert {r["id"] for r in rows} == {decided[0], decided[2]}
        assert {r["decided_by"] for r in rows} == {"alice"}
        rejected = next(r for r in rows if r["state"] == "rejected")
        # Spreadsheet formulas in user text are neutralised.
        assert rejected["comment"].startswith("'=")


class TestResponseShapes:
    """Handlers build JSON by hand for speed; it must match the documented models exactly."""

    def test_every_response_matches_its_model(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager, required_approvals=2, metadata={"k": [1, 2]})
        other = open_request(api_manager, run_id="manual__2")
        api_manager.approve(approval.id, user=Principal.of("alice"), comment="first", metadata={"m": 1})
        item_fields = set(ApprovalResponse.model_fields)
        listed = [
            api.client.get(API, headers=api.headers("op")).json(),
            api.client.get(f"{API}/pending", headers=api.headers("op")).json(),
        ]
        single = [
            api.client.get(f"{API}/{approval.id}", headers=api.headers("op")).json(),
            _post(api, f"{API}/{approval.id}/approve", "op", {}).json(),
            _post(api, API, "op", {"dag_id": "billing", "title": "t"}).json(),
        ]
        listed.append(api.client.get(f"{API}/history", headers=api.headers("op")).json())
        for page in listed:
            ApprovalCollectionResponse.model_validate(page)
            assert page["approvals"]
            for item in page["approvals"]:
                assert set(item) == item_fields
        for item in single:
            ApprovalResponse.model_validate(item)
            assert set(item) == item_fields
            for vote in item["votes"]:
                assert set(vote) == set(VoteResponse.model_fields)
        bulk = _post(api, f"{API}/bulk", "op", {"ids": [other.id], "action": "approve"}).json()
        assert BulkResponse.model_validate(bulk).model_dump(mode="json") == bulk

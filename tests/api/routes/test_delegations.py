"""``/hitl/api/v1/delegations`` and deciding as a delegate, through Airflow's api-server with real tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_hitl.api.datamodels import ApprovalResponse, DelegationCollectionResponse, DelegationResponse
from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, USERS, AirflowApi, open_request, snapshot

DELEGATIONS = "/hitl/api/v1/delegations"


def _window(hours: float = 8) -> dict[str, str]:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
        "ends_at": (now + dt.timedelta(hours=hours)).isoformat(),
    }


def _create(api: AirflowApi, who: str, **body: Any) -> Any:
    return api.client.post(DELEGATIONS, headers=api.headers(who), json={**_window(), **body})


def _state(manager: ApprovalManager) -> tuple[Any, ...]:
    return (*snapshot(manager), manager.delegations.list_delegations())


class TestCreate:
    def test_created_by_the_delegator(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        response = _create(api, "alice", delegate="bob", dag_ids=["billing"])
        assert response.status_code == 201, response.text
        body = DelegationResponse.model_validate(response.json())
        assert (body.delegator, body.delegate, body.created_by, body.state) == ("alice", "bob", "alice", "active")
        assert body.dag_ids == ["billing"]
        event = api_manager.audit.events()[-1]
        assert (event.event_type, event.source, event.actor) == ("delegation_created", "api", "alice")

    def test_an_admin_creates_one_for_someone_else(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        response = _create(api, "admin", delegate="bob", delegator="alice")
        assert response.status_code == 201, response.text
        assert (response.json()["delegator"], response.json()["created_by"]) == ("alice", "admin")

    def test_a_user_cannot_create_one_for_someone_else(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        before = _state(api_manager)
        response = _create(api, "op", delegate="bob", delegator="alice")
        assert response.status_code == 403
        assert "only an admin" in response.json()["detail"]
        assert _state(api_manager) == before

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            pytest.param({"delegate": "ghost"}, "delegate", id="unknown-user"),
            pytest.param({"delegate": "alice"}, "delegate", id="self"),
            pytest.param({"delegate": "bob", "starts_at": "2026-01-01T00:00:00"}, "starts_at", id="naive"),
            pytest.param({"delegate": "bob", "ends_at": "2020-01-01T00:00:00Z"}, "ends_at", id="past"),
            pytest.param({"delegate": "bob", "dag_ids": []}, "dag_ids", id="empty-dags"),
            pytest.param({"delegate": "bob", "user": "alice"}, "user", id="unknown-field"),
        ],
    )
    def test_bad_input_is_422_naming_the_field(
        self, api: AirflowApi, api_manager: ApprovalManager, body: dict[str, Any], field: str
    ) -> None:
        before = _state(api_manager)
        response = _create(api, "alice", **body)
        assert response.status_code == 422, response.text
        assert field in str(response.json()["detail"])
        assert _state(api_manager) == before

    def test_no_token_is_401(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        assert api.client.post(DELEGATIONS, json={**_window(), "delegate": "bob"}).status_code == 401


class TestListAndEnd:
    def test_each_sees_their_own_admins_all(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        mine = _create(api, "alice", delegate="bob").json()
        _create(api, "op", delegate="viewer")
        for user, expected in (("alice", [mine["id"]]), ("bob", [mine["id"]]), ("nobody", [])):
            response = api.client.get(DELEGATIONS, headers=api.headers(user))
            assert response.status_code == 200
            payload = DelegationCollectionResponse.model_validate(response.json())
            assert [d.id for d in payload.delegations] == expected
        everything = api.client.get(DELEGATIONS, headers=api.headers("admin")).json()
        assert everything["total_entries"] == 2
        only_alice = api.client.get(f"{DELEGATIONS}?user=alice", headers=api.headers("admin")).json()
        assert [d["id"] for d in only_alice["delegations"]] == [mine["id"]]
        assert api.client.get(f"{DELEGATIONS}?user=alice", headers=api.headers("op")).status_code == 403

    def test_end_by_delegator_204_others_403_unknown_404(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        made = _create(api, "alice", delegate="bob").json()
        before = _state(api_manager)
        for user in ("bob", "op"):
            response = api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers(user))
            assert response.status_code == 403
        assert _state(api_manager) == before
        for missing in ("00000000-0000-4000-8000-000000000000", "not-an-id"):
            response = api.client.delete(f"{DELEGATIONS}/{missing}", headers=api.headers("alice"))
            assert response.status_code == 404
        response = api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers("alice"))
        assert response.status_code == 204
        listed = api.client.get(DELEGATIONS, headers=api.headers("bob")).json()["delegations"]
        assert [(d["state"], d["ended_by"]) for d in listed] == [("ended", "alice")]
        active = api.client.get(f"{DELEGATIONS}?state=active", headers=api.headers("bob")).json()
        assert active["total_entries"] == 0
        assert api_manager.audit.events()[-1].event_type == "delegation_ended"

    def test_an_admin_ends_anyones(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        made = _create(api, "alice", delegate="bob").json()
        assert api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers("admin")).status_code == 204


class TestDecideAsDelegate:
    def test_delegate_sees_and_decides_for_the_delegator(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager, allowed_approvers=["alice"])
        before = api.client.get(f"{API}/pending", headers=api.headers("bob")).json()["approvals"][0]
        assert before["can_approve"] is False
        _create(api, "alice", delegate="bob")
        item = api.client.get(f"{API}/pending", headers=api.headers("bob")).json()["approvals"][0]
        assert (item["can_approve"], item["can_approve_reason"], item["can_approve_for"]) == (
            True,
            "for alice",
            "alice",
        )
        response = api.client.post(f"{API}/{request.id}/approve", headers=api.headers("bob"), json={"comment": "ok"})
        assert response.status_code == 200, response.text
        done = ApprovalResponse.model_validate(response.json())
        assert done.state == "approved" and done.decided_by == "alice"
        assert [(v.user, v.delegate) for v in done.votes] == [("alice", "bob")]

    def test_explicit_on_behalf_of_and_refusals(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager, allowed_approvers=["alice", "op"], required_approvals=2)
        made = _create(api, "alice", delegate="bob", dag_ids=["billing"]).json()
        # Not delegated by op: refused, nothing changes.
        before = _state(api_manager)
        response = api.client.post(
            f"{API}/{request.id}/approve", headers=api.headers("bob"), json={"on_behalf_of": "op"}
        )
        assert response.status_code == 403
        assert "no active delegation from 'op'" in response.json()["detail"]
        assert _state(api_manager) == before
        response = api.client.post(
            f"{API}/{request.id}/approve", headers=api.headers("bob"), json={"on_behalf_of": "alice"}
        )
        assert response.status_code == 200
        # Alice counts once.
        again = api.client.post(f"{API}/{request.id}/approve", headers=api.headers("alice"), json={})
        assert again.status_code == 409
        api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers("alice"))
        other = open_request(api_manager, run_id="manual__2", allowed_approvers=["alice"])
        before = _state(api_manager)
        refused = api.client.post(
            f"{API}/{other.id}/reject", headers=api.headers("bob"), json={"reason": "no", "on_behalf_of": "alice"}
        )
        assert refused.status_code == 403
        assert _state(api_manager) == before

    def test_two_delegators_is_409_until_one_is_named(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager, allowed_approvers=["alice", "op"], required_approvals=2)
        _create(api, "alice", delegate="bob")
        _create(api, "op", delegate="bob")
        before = _state(api_manager)
        response = api.client.post(f"{API}/{request.id}/approve", headers=api.headers("bob"), json={})
        assert response.status_code == 409
        assert "on_behalf_of" in response.json()["detail"]
        assert _state(api_manager) == before
        response = api.client.post(
            f"{API}/{request.id}/approve", headers=api.headers("bob"), json={"on_behalf_of": "op"}
        )
        assert [v["user"] for v in response.json()["votes"]] == ["op"]

    def test_delegate_needs_their_own_dag_access(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager, allowed_approvers=["alice"])
        _create(api, "alice", delegate="viewer")
        response = api.client.post(f"{API}/{request.id}/approve", headers=api.headers("viewer"), json={})
        assert response.status_code == 403
        assert "edit access" in response.json()["detail"]


def _set_users(monkeypatch: pytest.MonkeyPatch, **roles: str) -> None:
    """SimpleAuthManager's users now: the session's, with ``roles`` changed (it reads them on every lookup)."""
    users = {**USERS, **roles}
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in users.items()))


def _vote_for_alice(api: AirflowApi, request_id: str, channel: str) -> tuple[int, str]:
    """Bob approves ``request_id`` as alice's delegate through ``channel``: (status, the refusal's text)."""
    if channel == "bulk":
        response = api.client.post(
            f"{API}/bulk", headers=api.headers("bob"), json={"ids": [request_id], "action": "approve"}
        )
        [result] = response.json()["results"]
        return result["status_code"], str(result["detail"])
    if channel == "ui":
        response = api.client.post(
            f"/hitl/ui/api/approvals/{request_id}/approve",
            cookies={"_token": api.tokens["bob"]},
            headers={"X-Requested-With": "XMLHttpRequest"},
            json={},
        )
    else:
        response = api.client.post(
            f"{API}/{request_id}/approve", headers=api.headers("bob"), json={"on_behalf_of": "alice"}
        )
    return response.status_code, response.text


class TestADelegatorWhoLostTheRight:
    """Alice delegates to bob, then is demoted to viewer: bob's vote for her must not count (issue 23)."""

    @pytest.mark.parametrize("channel", ["rest", "bulk", "ui"])
    def test_their_delegate_decides_nothing_for_them(
        self, api: AirflowApi, api_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch, channel: str
    ) -> None:
        request = open_request(api_manager, allowed_approvers=["alice", "op"], required_approvals=2)
        assert _create(api, "alice", delegate="bob").status_code == 201
        _set_users(monkeypatch, alice="viewer")
        before = _state(api_manager)
        status, text = _vote_for_alice(api, request.id, channel)
        assert status == 403, text
        assert "alice may not decide it now: alice does not have edit access to DAG 'billing'" in text
        assert _state(api_manager) == before
        # The pending list says so too, before anyone tries.
        item = api.client.get(f"{API}/{request.id}", headers=api.headers("bob")).json()
        assert (item["can_approve"], item["can_approve_for"]) == (False, None)
        # Her access back, the same vote counts, as hers.
        _set_users(monkeypatch)
        status, text = _vote_for_alice(api, request.id, channel)
        assert status == 200, text
        assert [(v.user, v.delegate) for v in api_manager.queries.get(request.id).votes] == [("alice", "bob")]

    def test_a_delegator_the_auth_manager_no_longer_knows_decides_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        request = open_request(api_manager, allowed_approvers=["alice"])
        assert _create(api, "alice", delegate="bob").status_code == 201
        users = dict(USERS)
        del users["alice"]
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in users.items()))
        status, text = _vote_for_alice(api, request.id, "rest")
        assert status == 403 and "'alice' is not a user of this Airflow" in text
        assert api_manager.queries.get(request.id).votes == ()


class TestRoutes:
    """What the handlers themselves add: the caller's view, paging, ids, and ending twice."""

    def test_pages_newest_first_with_the_total(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        made = [_create(api, "alice", delegate=who).json()["id"] for who in ("bob", "op", "viewer")]
        first = api.client.get(f"{DELEGATIONS}?limit=2", headers=api.headers("alice")).json()
        second = api.client.get(f"{DELEGATIONS}?limit=2&offset=2", headers=api.headers("alice")).json()
        assert (first["total_entries"], second["total_entries"]) == (3, 3)
        pages = first["delegations"] + second["delegations"]
        assert sorted(d["id"] for d in pages) == sorted(made), "every one once"
        created = [dt.datetime.fromisoformat(d["created_at"]) for d in pages]
        assert created == sorted(created, reverse=True), "newest first"

    def test_active_leaves_out_scheduled_and_a_bad_state_is_422(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        later = {
            "starts_at": (now + dt.timedelta(days=1)).isoformat(),
            "ends_at": (now + dt.timedelta(days=2)).isoformat(),
        }
        scheduled = api.client.post(DELEGATIONS, headers=api.headers("alice"), json={"delegate": "bob", **later})
        assert scheduled.json()["state"] == "scheduled"
        active = _create(api, "alice", delegate="op").json()
        listed = api.client.get(f"{DELEGATIONS}?state=active", headers=api.headers("alice")).json()
        assert [d["id"] for d in listed["delegations"]] == [active["id"]]
        assert api.client.get(f"{DELEGATIONS}?state=paused", headers=api.headers("alice")).status_code == 422

    def test_a_user_may_name_themselves(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        made = _create(api, "alice", delegate="bob").json()
        _create(api, "op", delegate="viewer")
        response = api.client.get(f"{DELEGATIONS}?user=bob", headers=api.headers("bob"))
        assert response.status_code == 200
        assert [d["id"] for d in response.json()["delegations"]] == [made["id"]]

    def test_the_id_is_read_in_any_case_and_a_long_one_is_404(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        made = _create(api, "alice", delegate="bob").json()
        assert api.client.delete(f"{DELEGATIONS}/{'f' * 65}", headers=api.headers("alice")).status_code == 404
        response = api.client.delete(f"{DELEGATIONS}/{made['id'].upper()}", headers=api.headers("alice"))
        assert response.status_code == 204
        assert api_manager.delegations.list_delegations()[0][0].ended_by == "alice"

    def test_ending_one_already_ended_is_204_and_records_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        made = _create(api, "alice", delegate="bob").json()
        assert api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers("alice")).status_code == 204
        before = _state(api_manager)
        assert api.client.delete(f"{DELEGATIONS}/{made['id']}", headers=api.headers("admin")).status_code == 204
        assert _state(api_manager) == before
        assert api_manager.delegations.list_delegations()[0][0].ended_by == "alice"

    def test_the_openapi_document_speaks_of_delegations(self, api: AirflowApi) -> None:
        document = api.client.get("/hitl/openapi.json").json()
        responses = document["paths"]["/api/v1/delegations/{delegation_id}"]["delete"]["responses"]
        assert responses["404"]["description"] == "No delegation with this id."
        assert set(responses) >= {"204", "401", "403", "404", "422", "503"}

"""``/hitl/api/v1/standing-approvals`` and ``/approvals/{id}/standing``, through Airflow's api-server with real tokens.

The DAGs a standing approval may name are rows of Airflow's real metadata DB (the
``airflow_api`` session's SQLite), written by :func:`known_dags` as the dag processor would
and removed afterwards. A refused call must change nothing: the requests, the audit trail and
the standing approvals are compared before and after.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_hitl.api.datamodels import (
    StandingApprovalBody,
    StandingApprovalCollectionResponse,
    StandingApprovalResponse,
    StandingOwedVotesResponse,
    StandingState,
)
from airflow_hitl.api.standing_applier import StandingApplier
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.spec import utcnow
from airflow_hitl.standing import StandingApproval
from airflow_hitl.vocabulary import STANDING_STATES
from tests.airflow_api import API, AirflowApi, known_dags, open_request, serving, snapshot

STANDING = "/hitl/api/v1/standing-approvals"
#: The DAGs Airflow knows in these tests (open_request's requests are on ``billing``).
DAGS = ("billing", "nightly")


@pytest.fixture
def dags(airflow_api: AirflowApi) -> Iterator[tuple[str, ...]]:
    """``billing`` and ``nightly`` are DAGs Airflow knows, for this test."""
    with known_dags(*DAGS):
        yield DAGS


def _window(days: float = 7, *, starts_in: float = 0) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    fields: dict[str, Any] = {"valid_until": (now + dt.timedelta(days=starts_in + days)).isoformat()}
    if starts_in:
        fields["valid_from"] = (now + dt.timedelta(days=starts_in)).isoformat()
    return fields


def _body(**overrides: Any) -> dict[str, Any]:
    return {"dag_id": "billing", "comment": "nightly loads are fine", **_window(), **overrides}


def _create(api: AirflowApi, who: str | None, headers: dict[str, str] | None = None, **overrides: Any) -> Any:
    return api.client.post(STANDING, headers={**api.headers(who), **(headers or {})}, json=_body(**overrides))


def _state(manager: ApprovalManager) -> tuple[Any, ...]:
    """Everything a call could write: requests, audit events, standing approvals and their owed votes."""
    standing, _ = manager.standing.list(limit=10_000)
    return (*snapshot(manager), standing)


def _created(api: AirflowApi, who: str, **overrides: Any) -> dict[str, Any]:
    response = _create(api, who, **overrides)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestModels:
    def test_the_response_names_every_field_of_the_record_and_its_states(self) -> None:
        record = {f.name for f in dataclasses.fields(StandingApproval)} | {"state"}
        assert set(StandingApprovalResponse.model_fields) == record
        assert StandingState.__args__ == STANDING_STATES

    def test_the_body_names_no_approver(self) -> None:
        assert "approver" not in StandingApprovalBody.model_fields
        assert StandingApprovalBody.model_config.get("extra") == "forbid"


class TestCreate:
    def test_created_by_the_caller_and_audited(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        response = _create(api, "alice", task_id="gate", max_uses=3)
        assert response.status_code == 201, response.text
        body = StandingApprovalResponse.model_validate(response.json())
        assert (body.approver, body.dag_id, body.task_id, body.state) == ("alice", "billing", "gate", "active")
        assert (body.max_uses, body.uses_left, body.comment) == (3, 3, "nightly loads are fine")
        assert body.revoked_at is None and body.revoked_by is None
        assert api_manager.standing.get(body.id).to_dict(utcnow()) == response.json()
        event = api_manager.audit.events()[-1]
        assert (event.event_type, event.source, event.actor, event.request_id) == (
            "standing_created",
            "api",
            "alice",
            None,
        )
        assert event.details["standing_approval_id"] == body.id
        assert event.details["terms"]["max_uses"] == 3 and event.details["terms"]["task_id"] == "gate"

    def test_the_command_line_is_recorded_as_its_source(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        cli = {"X-HITL-Client": "cli", "X-HITL-OS-User": "alice-os", "X-HITL-Host": "laptop"}
        response = _create(api, "op", headers=cli)
        assert response.status_code == 201, response.text
        created = response.json()
        event = api_manager.audit.events()[-1]
        assert (event.event_type, event.source, event.actor) == ("standing_created", "cli", "op")
        assert (event.details["os_user"], event.details["hostname"]) == ("alice-os", "laptop")
        assert created["approver"] == "op"

    def test_a_window_that_starts_later_is_scheduled_without_limit(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        body = _created(api, "bob", dag_id="nightly", **_window(days=2, starts_in=1))
        assert (body["state"], body["max_uses"], body["uses_left"], body["task_id"]) == ("scheduled", None, None, None)

    def test_an_admin_creates_their_own(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        assert _created(api, "admin")["approver"] == "admin"

    @pytest.mark.parametrize("user", ["viewer", "nobody"])
    def test_no_edit_access_is_403_and_writes_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...], user: str
    ) -> None:
        before = _state(api_manager)
        response = _create(api, user)
        assert response.status_code == 403, response.text
        assert "edit access" in response.json()["detail"] and "billing" in response.json()["detail"]
        # Whether a DAG exists is not told to who may not edit it: the same 403.
        assert _create(api, user, dag_id="no_such_dag").json() == {
            "detail": response.json()["detail"].replace("billing", "no_such_dag")
        }
        assert _state(api_manager) == before

    def test_an_unknown_dag_is_422_naming_dag_id(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        before = _state(api_manager)
        response = _create(api, "alice", dag_id="no_such_dag")
        assert response.status_code == 422, response.text
        assert "dag_id" in response.json()["detail"] and "no_such_dag" in response.json()["detail"]
        assert _state(api_manager) == before

    def test_a_dag_airflow_no_longer_has_is_unknown(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        with known_dags("billing"):
            assert _create(api, "alice").status_code == 201
        assert _create(api, "alice").status_code == 422

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            pytest.param({"valid_until": "2020-01-01T00:00:00Z"}, "valid_until", id="window-over"),
            pytest.param(_window(days=31), "valid_until", id="longer-than-30-days"),
            pytest.param(
                {**_window(days=2, starts_in=1), "valid_until": _window(days=0.5)["valid_until"]},
                "valid_until",
                id="ends-before-it-starts",
            ),
            pytest.param({"valid_until": "2030-01-01T00:00:00"}, "valid_until", id="no-time-zone"),
            pytest.param({"valid_from": "2030-01-01T00:00:00"}, "valid_from", id="valid-from-no-time-zone"),
            pytest.param({"valid_until": "next friday"}, "valid_until", id="not-a-time"),
            pytest.param({"valid_until": None}, "valid_until", id="valid-until-null"),
            pytest.param({"max_uses": 0}, "max_uses", id="max-uses-zero"),
            pytest.param({"max_uses": -3}, "max_uses", id="max-uses-negative"),
            pytest.param({"max_uses": 1_000_001}, "max_uses", id="max-uses-huge"),
            pytest.param({"max_uses": "many"}, "max_uses", id="max-uses-text"),
            pytest.param({"max_uses": 1.5}, "max_uses", id="max-uses-fraction"),
            pytest.param({"comment": "   "}, "comment", id="comment-blank"),
            pytest.param({"comment": "a\x00b"}, "comment", id="comment-nul"),
            pytest.param({"comment": "x" * 4001}, "comment", id="comment-too-long"),
            pytest.param({"dag_id": ""}, "dag_id", id="dag-id-empty"),
            pytest.param({"dag_id": 7}, "dag_id", id="dag-id-number"),
            pytest.param({"dag_id": "d" * 251}, "dag_id", id="dag-id-too-long"),
            pytest.param({"task_id": ""}, "task_id", id="task-id-empty"),
            pytest.param({"task_id": ["gate"]}, "task_id", id="task-id-list"),
            pytest.param({"approver": "bob"}, "approver", id="approver-cannot-be-named"),
            pytest.param({"uses_left": 9}, "uses_left", id="unknown-field"),
        ],
    )
    def test_bad_input_is_422_naming_the_field(
        self,
        api: AirflowApi,
        api_manager: ApprovalManager,
        dags: tuple[str, ...],
        overrides: dict[str, Any],
        field: str,
    ) -> None:
        before = _state(api_manager)
        response = _create(api, "alice", **overrides)
        assert response.status_code == 422, response.text
        assert field in str(response.json()["detail"])
        assert _state(api_manager) == before

    @pytest.mark.parametrize("missing", ["dag_id", "valid_until", "comment"])
    def test_a_missing_field_is_422_naming_it(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...], missing: str
    ) -> None:
        before = _state(api_manager)
        body = {k: v for k, v in _body().items() if k != missing}
        response = api.client.post(STANDING, headers=api.headers("alice"), json=body)
        assert response.status_code == 422, response.text
        assert any(error["loc"] == ["body", missing] for error in response.json()["detail"])
        assert _state(api_manager) == before

    def test_the_longest_window_follows_the_setting(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__STANDING_APPROVAL_MAX_DAYS", "2")
        before = _state(api_manager)
        response = _create(api, "alice", **_window(days=3))
        assert response.status_code == 422, response.text
        assert "valid_until" in response.json()["detail"] and "2 days" in response.json()["detail"]
        assert _state(api_manager) == before
        assert _create(api, "alice", **_window(days=1.9)).status_code == 201

    def test_no_token_is_401(self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]) -> None:
        before = _state(api_manager)
        assert api.client.post(STANDING, json=_body()).status_code == 401
        # A broken body without a token says nothing of the schema either.
        assert api.client.post(STANDING, json={"max_uses": "x"}).status_code == 401
        assert _state(api_manager) == before


class TestListGetRevoke:
    @pytest.fixture
    def mine(self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]) -> dict[str, str]:
        """One standing approval of alice's (billing), two of bob's (billing, nightly), one of op's, revoked."""
        ids = {
            "alice": _created(api, "alice")["id"],
            "bob": _created(api, "bob", max_uses=2)["id"],
            "bob-nightly": _created(api, "bob", dag_id="nightly")["id"],
            "op": _created(api, "op")["id"],
        }
        api_manager.standing.revoke(ids["op"], actor=_principal("op"))
        return ids

    def _list(self, api: AirflowApi, who: str, **params: Any) -> Any:
        return api.client.get(STANDING, headers=api.headers(who), params=params)

    def _ids(self, response: Any) -> list[str]:
        assert response.status_code == 200, response.text
        page = StandingApprovalCollectionResponse.model_validate(response.json())
        return [s.id for s in page.standing_approvals]

    def test_each_sees_their_own_admins_everyones(self, api: AirflowApi, mine: dict[str, str]) -> None:
        assert self._ids(self._list(api, "alice")) == [mine["alice"]]
        assert set(self._ids(self._list(api, "bob"))) == {mine["bob"], mine["bob-nightly"]}
        assert self._ids(self._list(api, "viewer")) == []
        assert set(self._ids(self._list(api, "admin"))) == set(mine.values())
        assert self._list(api, "admin").json()["total_entries"] == 4

    def test_filters_and_pages(self, api: AirflowApi, mine: dict[str, str]) -> None:
        assert set(self._ids(self._list(api, "admin", approver="bob"))) == {mine["bob"], mine["bob-nightly"]}
        assert self._ids(self._list(api, "admin", dag_id="nightly")) == [mine["bob-nightly"]]
        assert self._ids(self._list(api, "admin", state="revoked")) == [mine["op"]]
        assert set(self._ids(self._list(api, "admin", state="active"))) == {
            mine["alice"],
            mine["bob"],
            mine["bob-nightly"],
        }
        assert self._ids(self._list(api, "bob", dag_id="billing")) == [mine["bob"]]
        assert self._ids(self._list(api, "bob", approver="bob", state="scheduled")) == []
        first = self._list(api, "admin", limit=3, offset=0).json()
        rest = self._list(api, "admin", limit=3, offset=3).json()
        assert (len(first["standing_approvals"]), len(rest["standing_approvals"])) == (3, 1)
        assert first["total_entries"] == rest["total_entries"] == 4
        seen = [s["id"] for s in first["standing_approvals"] + rest["standing_approvals"]]
        assert sorted(seen) == sorted(mine.values())

    def test_only_an_admin_lists_another_approvers(self, api: AirflowApi, mine: dict[str, str]) -> None:
        response = self._list(api, "alice", approver="bob")
        assert response.status_code == 403
        assert "only an admin" in response.json()["detail"]
        assert self._ids(self._list(api, "alice", approver="alice")) == [mine["alice"]]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"state": "paused"}, "state"),
            ({"limit": -1}, "limit"),
            ({"offset": "x"}, "offset"),
            ({"dag_id": "d" * 251}, "dag_id"),
        ],
    )
    def test_bad_filters_are_422_naming_them(
        self, api: AirflowApi, mine: dict[str, str], params: dict[str, Any], field: str
    ) -> None:
        response = self._list(api, "admin", **params)
        assert response.status_code == 422
        assert field in str(response.json()["detail"])

    def test_one_is_shown_to_its_approver_and_admins_only(self, api: AirflowApi, mine: dict[str, str]) -> None:
        for who in ("alice", "admin"):
            response = api.client.get(f"{STANDING}/{mine['alice']}", headers=api.headers(who))
            assert response.status_code == 200, response.text
            assert StandingApprovalResponse.model_validate(response.json()).approver == "alice"
        # Someone else's answers as an unknown one would: nothing tells it exists.
        other = str(uuid.uuid4())
        unknown = api.client.get(f"{STANDING}/{other}", headers=api.headers("bob"))
        assert (unknown.status_code, unknown.json()) == (404, {"detail": f"standing approval {other!r} not found"})
        for who in ("bob", "viewer", "nobody"):
            response = api.client.get(f"{STANDING}/{mine['alice']}", headers=api.headers(who))
            assert response.status_code == 404
            assert response.json() == {"detail": f"standing approval {mine['alice']!r} not found"}
        assert api.client.get(f"{STANDING}/not-a-uuid", headers=api.headers("alice")).status_code == 404
        assert api.client.get(f"{STANDING}/{mine['alice'].upper()}", headers=api.headers("alice")).status_code == 200

    def test_revoked_by_its_approver_once_and_audited(
        self, api: AirflowApi, api_manager: ApprovalManager, mine: dict[str, str]
    ) -> None:
        response = api.client.delete(f"{STANDING}/{mine['alice']}", headers=api.headers("alice"))
        assert response.status_code == 200, response.text
        body = StandingApprovalResponse.model_validate(response.json())
        assert (body.state, body.revoked_by) == ("revoked", "alice") and body.revoked_at is not None
        event = api_manager.audit.events()[-1]
        assert (event.event_type, event.source, event.actor) == ("standing_revoked", "api", "alice")
        assert event.details["standing_approval_id"] == mine["alice"]
        before = _state(api_manager)
        again = api.client.delete(f"{STANDING}/{mine['alice']}", headers=api.headers("alice"))
        assert again.status_code == 200 and again.json() == response.json()
        assert _state(api_manager) == before

    def test_an_admin_revokes_anyones_from_the_command_line(
        self, api: AirflowApi, api_manager: ApprovalManager, mine: dict[str, str]
    ) -> None:
        headers = {**api.headers("admin"), "X-HITL-Client": "cli"}
        response = api.client.delete(f"{STANDING}/{mine['bob']}", headers=headers)
        assert response.status_code == 200, response.text
        assert (response.json()["approver"], response.json()["revoked_by"]) == ("bob", "admin")
        event = api_manager.audit.events()[-1]
        assert (event.event_type, event.source, event.actor) == ("standing_revoked", "cli", "admin")

    @pytest.mark.parametrize("who", ["bob", "viewer", "nobody"])
    def test_someone_elses_or_an_unknown_one_is_404_and_unchanged(
        self, api: AirflowApi, api_manager: ApprovalManager, mine: dict[str, str], who: str
    ) -> None:
        before = _state(api_manager)
        for standing_id in (mine["alice"], str(uuid.uuid4()), "not-a-uuid", "x" * 100):
            response = api.client.delete(f"{STANDING}/{standing_id}", headers=api.headers(who))
            assert response.status_code == 404, response.text
            assert "not found" in response.json()["detail"]
        assert _state(api_manager) == before
        assert api_manager.standing.get(mine["alice"]).revoked_at is None

    def test_no_token_is_401(self, api: AirflowApi, api_manager: ApprovalManager, mine: dict[str, str]) -> None:
        before = _state(api_manager)
        for method, path in (
            ("GET", STANDING),
            ("GET", f"{STANDING}/{mine['alice']}"),
            ("DELETE", f"{STANDING}/{mine['alice']}"),
        ):
            assert api.client.request(method, path).status_code == 401
        assert _state(api_manager) == before


def _principal(name: str) -> Any:
    from airflow_hitl.policy import Principal

    return Principal.of(name)


class TestOwedVotes:
    """``GET /approvals/{id}/standing``: what the standing approvals owed a request, and how each was settled."""

    def _owed(self, api: AirflowApi, approval_id: str, who: str = "viewer") -> list[dict[str, Any]]:
        response = api.client.get(f"{API}/{approval_id}/standing", headers=api.headers(who))
        assert response.status_code == 200, response.text
        page = StandingOwedVotesResponse.model_validate(response.json())
        assert page.total_entries == len(page.owed_votes)
        owed: list[dict[str, Any]] = response.json()["owed_votes"]
        return owed

    def test_owed_then_used_or_skipped(
        self, api: AirflowApi, api_manager: ApprovalManager, dags: tuple[str, ...]
    ) -> None:
        alice = _created(api, "alice", max_uses=2)["id"]
        bob = _created(api, "bob", task_id="other_gate")["id"]  # another task's gates: owes nothing here
        approval = open_request(api_manager)
        owed = self._owed(api, approval.id)
        assert [(o["standing_id"], o["approver"], o["status"], o["escalation_level"]) for o in owed] == [
            (alice, "alice", "due", 0)
        ]
        assert bob not in str(owed)
        StandingApplier().apply(api_manager)
        (used,) = self._owed(api, approval.id)
        assert (used["status"], used["reason"]) == ("used", None) and used["settled_at"]
        assert api_manager.queries.get(approval.id).state == "approved"
        assert api_manager.standing.get(alice).uses_left == 1

        # A gate alice may not approve: her owed vote is skipped, and why is shown.
        only_bob = open_request(api_manager, run_id="manual__2", allowed_approvers=("bob",))
        StandingApplier().apply(api_manager)
        (skipped,) = self._owed(api, only_bob.id, who="admin")
        assert skipped["status"] == "skipped" and skipped["reason"]
        assert api_manager.queries.get(only_bob.id).state == "pending"

    def test_none_owed_is_an_empty_list(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        assert self._owed(api, approval.id, who="op") == []

    def test_read_access_to_the_dag_is_needed(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        response = api.client.get(f"{API}/{approval.id}/standing", headers=api.headers("nobody"))
        assert response.status_code == 403
        assert api.client.get(f"{API}/{approval.id}/standing").status_code == 401

    def test_an_unknown_request_is_404_a_malformed_id_422(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        assert api.client.get(f"{API}/{uuid.uuid4()}/standing", headers=api.headers("admin")).status_code == 404
        response = api.client.get(f"{API}/not-an-id/standing", headers=api.headers("admin"))
        assert response.status_code == 422 and "id" in response.json()["detail"]


@pytest.mark.postgres
class TestOnPostgres:
    """The same calls over a PostgreSQL store: create, list, owed votes, revoke, refusals writing nothing."""

    def test_the_whole_round(self, airflow_api: AirflowApi, pg_store: ApprovalStore, dags: tuple[str, ...]) -> None:
        with serving(airflow_api, pg_store.url) as manager:
            api = airflow_api
            before = _state(manager)
            assert _create(api, "viewer").status_code == 403
            assert _create(api, "alice", dag_id="no_such_dag").status_code == 422
            assert _create(api, "alice", max_uses=0).status_code == 422
            assert _create(api, "alice", comment="a\x00b").status_code == 422
            assert _state(manager) == before

            created = _created(api, "alice", max_uses=1)
            assert created["uses_left"] == 1
            listed = api.client.get(STANDING, headers=api.headers("alice")).json()
            assert [s["id"] for s in listed["standing_approvals"]] == [created["id"]]

            approval = open_request(manager)
            StandingApplier().apply(manager)
            owed = api.client.get(f"{API}/{approval.id}/standing", headers=api.headers("op")).json()["owed_votes"]
            assert [(o["approver"], o["status"]) for o in owed] == [("alice", "used")]
            one = api.client.get(f"{STANDING}/{created['id']}", headers=api.headers("alice")).json()
            assert (one["uses_left"], one["state"]) == (0, "used_up")

            revoked = api.client.delete(f"{STANDING}/{created['id']}", headers=api.headers("alice"))
            assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
            events = [e.event_type for e in manager.audit.events() if e.request_id is None]
            assert events == ["standing_created", "standing_revoked"]
            assert manager.audit.verify_audit_chain().ok

"""Authentication and DAG access of the API (:mod:`airflow_hitl.api.security`), with real tokens.

Tokens come from Airflow's own ``POST /auth/token`` (SimpleAuthManager users of
``tests/airflow_api.py``); the answers come from Airflow's auth manager. The dependencies
are driven through a small app of their own, so each answer is the security module's
alone; every route of the API with every user is in ``test_access_matrix.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from airflow_hitl.api.security import (
    Caller,
    CallerDep,
    readable_dag_ids,
    require_edit,
    require_read,
    require_same_site,
)
from airflow_hitl.identity import principal_of
from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, JWT_SECRET, AirflowApi, open_request
from tests.test_identity import GONE_DAG, TEAM_DAGS, airflow_dags, fab, fab_user, no_auth_manager, team_user  # noqa: F401

XHR = {"X-Requested-With": "XMLHttpRequest"}


def _probe_app() -> FastAPI:
    """An app whose routes answer what the security module says of their caller."""
    app = FastAPI()

    @app.api_route("/whoami", methods=["GET", "POST"])
    def whoami(caller: CallerDep) -> dict[str, Any]:
        return {
            "name": caller.name,
            "roles": sorted(caller.principal.roles),
            "read": caller.can_read_dag("billing"),
            "edit": caller.can_edit_dag("billing"),
            "refusal": caller.edit_refusal("billing"),
        }

    @app.get("/readable")
    def readable(caller: CallerDep) -> dict[str, Any]:
        asked: list[str] = []

        def candidates() -> list[str]:
            asked.append("store")
            return ["billing", "payroll"]

        ids = readable_dag_ids(caller, candidates)
        return {"ids": None if ids is None else sorted(ids), "asked_the_store": bool(asked)}

    @app.get("/require/{access}/{dag_id}")
    def require(access: str, dag_id: str, caller: CallerDep) -> dict[str, bool]:
        (require_read if access == "read" else require_edit)(caller, dag_id)
        return {"ok": True}

    @app.post("/same-site")
    def same_site(request: Request) -> dict[str, bool]:
        require_same_site(request)
        return {"ok": True}

    return app


@pytest.fixture
def probe(airflow_api: AirflowApi) -> TestClient:
    """A client of the probe app; Airflow's api-server app (and its auth manager) is up."""
    return TestClient(_probe_app())


def _resigned(token: str, *, expires_in: dt.timedelta) -> str:
    """``token``'s claims, signed again with the same key, expiring ``expires_in`` from now."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = dt.datetime.now(dt.timezone.utc)
    claims.update(exp=int((now + expires_in).timestamp()), iat=int((now - dt.timedelta(hours=2)).timestamp()))
    claims["nbf"] = claims["iat"]
    kid = {"kid": header["kid"]} if "kid" in header else None
    return jwt.encode(claims, JWT_SECRET, algorithm=header["alg"], headers=kid)


class TestAuthentication:
    def test_a_token_names_the_user_and_their_role(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        response = probe.get("/whoami", headers=airflow_api.headers("viewer"))
        assert response.status_code == 200
        assert (response.json()["name"], response.json()["roles"]) == ("viewer", ["viewer"])

    @pytest.mark.parametrize(
        ("authorization", "detail"),
        [
            pytest.param(None, "Not authenticated", id="none"),
            pytest.param("Bearer not-a-jwt", "Invalid token", id="garbage"),
            pytest.param("Basic YWRtaW46YWRtaW4=", "Not authenticated", id="basic-auth"),
        ],
    )
    def test_no_valid_token_is_401_with_a_bearer_challenge(
        self, probe: TestClient, authorization: str | None, detail: str
    ) -> None:
        response = probe.get("/whoami", headers={"Authorization": authorization} if authorization else {})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert detail.lower() in response.json()["detail"].lower()

    def test_an_expired_token_is_401_not_403(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        # Signed again as Airflow signs: valid while it runs, refused once it has expired.
        alive = _resigned(airflow_api.tokens["alice"], expires_in=dt.timedelta(hours=1))
        assert probe.get("/whoami", headers={"Authorization": f"Bearer {alive}"}).json()["name"] == "alice"
        expired = _resigned(airflow_api.tokens["alice"], expires_in=-dt.timedelta(hours=1))
        response = probe.get("/whoami", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"

    def test_a_token_signed_with_another_key_is_401(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        token = airflow_api.tokens["admin"]
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        kid = {"kid": header["kid"]} if "kid" in header else None
        forged = jwt.encode(claims, "another-key-" + "y" * 64, algorithm=header["alg"], headers=kid)
        response = probe.get("/whoami", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401

    def test_the_ui_cookie_signs_in_a_read(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        response = probe.get("/whoami", cookies={"_token": airflow_api.tokens["alice"]})
        assert response.status_code == 200
        assert response.json()["name"] == "alice"


class TestCrossSite:
    """A cookie can be sent by another site; a bearer token cannot."""

    def test_a_change_by_cookie_needs_the_same_site_header(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        cookie = {"_token": airflow_api.tokens["alice"]}
        refused = probe.post("/whoami", cookies=cookie)
        assert refused.status_code == 403
        assert "X-Requested-With" in refused.json()["detail"]
        assert probe.post("/whoami", cookies=cookie, headers=XHR).status_code == 200

    def test_a_change_by_bearer_token_needs_no_header(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        assert probe.post("/whoami", headers=airflow_api.headers("alice")).status_code == 200

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            pytest.param({}, 403, id="no-header"),
            pytest.param({"X-Requested-With": "fetch"}, 403, id="other-header-value"),
            pytest.param({**XHR, "Origin": "https://evil.example"}, 403, id="other-origin"),
            pytest.param({**XHR, "Origin": "http://testserver:8080"}, 403, id="other-port"),
            pytest.param(XHR, 200, id="same-site-no-origin"),
            pytest.param({**XHR, "Origin": "http://testserver"}, 200, id="same-origin"),
        ],
    )
    def test_require_same_site(self, probe: TestClient, headers: dict[str, str], status: int) -> None:
        assert probe.post("/same-site", headers=headers).status_code == status


class TestDagAccess:
    @pytest.mark.parametrize(
        ("user", "read", "edit"),
        [("admin", True, True), ("op", True, True), ("viewer", True, False), ("nobody", False, False)],
    )
    def test_read_and_edit_as_the_auth_manager_says(
        self, probe: TestClient, airflow_api: AirflowApi, user: str, read: bool, edit: bool
    ) -> None:
        answer = probe.get("/whoami", headers=airflow_api.headers(user)).json()
        assert (answer["read"], answer["edit"]) == (read, edit)
        assert answer["refusal"] == (None if edit else "you do not have edit access to DAG 'billing'")

    @pytest.mark.parametrize(
        ("user", "access", "status"),
        [
            ("viewer", "read", 200),
            ("viewer", "edit", 403),
            ("nobody", "read", 403),
            ("op", "edit", 200),
        ],
    )
    def test_require_read_and_edit(
        self, probe: TestClient, airflow_api: AirflowApi, user: str, access: str, status: int
    ) -> None:
        response = probe.get(f"/require/{access}/billing", headers=airflow_api.headers(user))
        assert response.status_code == status
        if status == 403:
            assert response.json()["detail"] == f"you do not have {access} access to DAG 'billing'"

    def test_only_the_admin_reads_every_dag_without_a_store_query(
        self, probe: TestClient, airflow_api: AirflowApi
    ) -> None:
        answer = probe.get("/readable", headers=airflow_api.headers("admin")).json()
        assert answer == {"ids": None, "asked_the_store": False}
        # A viewer reads every DAG here too, but only the auth manager can say so, DAG by DAG.
        answer = probe.get("/readable", headers=airflow_api.headers("viewer")).json()
        assert answer == {"ids": ["billing", "payroll"], "asked_the_store": True}

    def test_who_may_read_no_dag_gets_an_empty_set(self, probe: TestClient, airflow_api: AirflowApi) -> None:
        answer = probe.get("/readable", headers=airflow_api.headers("nobody")).json()
        assert answer == {"ids": [], "asked_the_store": True}


def _token(user: Any) -> dict[str, str]:
    """Authorization headers of ``user``, signed by the api-server's own auth manager as at login."""
    from airflow.api_fastapi.app import get_auth_manager

    return {"Authorization": f"Bearer {get_auth_manager().generate_jwt(user)}"}


class TestTeams:
    """Multi-team mode: a viewer of the red team never sees the blue team's approvals."""

    @pytest.fixture
    def team_dags(self, api: AirflowApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
        with airflow_dags(TEAM_DAGS):
            yield

    @pytest.mark.usefixtures("team_dags")
    def test_lists_hold_only_the_approvals_of_dags_the_caller_may_read(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        opened = {dag_id: open_request(api_manager, dag_id=dag_id).id for dag_id in [*TEAM_DAGS, GONE_DAG]}
        red_viewer = _token(team_user("rita", "viewer", ["red"]))
        for path in (API, f"{API}/pending"):
            payload = api.client.get(path, headers=red_viewer).json()
            assert sorted(a["dag_id"] for a in payload["approvals"]) == ["teams_red_payroll", "teams_shared"], path
            assert payload["total_entries"] == 2, path
        admin = api.client.get(API, headers=_token(team_user("root", "admin", []))).json()
        assert {a["id"] for a in admin["approvals"]} == set(opened.values())

    @pytest.mark.usefixtures("team_dags")
    def test_another_teams_approval_is_403_and_so_is_a_gone_dags(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        opened = {dag_id: open_request(api_manager, dag_id=dag_id).id for dag_id in [*TEAM_DAGS, GONE_DAG]}
        red_viewer = _token(team_user("rita", "viewer", ["red"]))
        statuses = {
            dag_id: api.client.get(f"{API}/{opened[dag_id]}", headers=red_viewer).status_code for dag_id in opened
        }
        assert statuses == {"teams_red_payroll": 200, "teams_blue_payroll": 403, "teams_shared": 200, GONE_DAG: 403}


class TestFab:
    """FabAuthManager: read access to one DAG (``DAG:billing``) is not read access to every DAG."""

    @pytest.mark.usefixtures("fab")
    def test_a_reader_of_one_dag_reads_only_that_dag(self) -> None:
        dora = fab_user("dora", "BillingReaders", ("can_read", "DAG:billing"))
        caller = Caller(user=dora, principal=principal_of(dora))
        assert readable_dag_ids(caller, lambda: ["billing", "payroll"]) == {"billing"}
        assert (caller.can_read_dag("billing"), caller.can_read_dag("payroll")) == (True, False)

    @pytest.mark.usefixtures("fab")
    def test_a_reader_of_the_dags_resource_reads_every_dag(self) -> None:
        vera = fab_user("vera", "Viewer", ("can_read", "DAGs"))
        caller = Caller(user=vera, principal=principal_of(vera))
        assert readable_dag_ids(caller, lambda: ["billing", "payroll"]) == {"billing", "payroll"}

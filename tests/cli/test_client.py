"""The command line's client of the api-server (:mod:`airflow_hitl.cli.client`) and the api-server's side of it.

The client is driven against Airflow's real api-server app served on loopback
(``served_api``) with real tokens; the header by which the CLI names its decisions' source
(``X-HITL-Client: cli``) is checked on the REST routes themselves, through the ``api`` app.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import pytest

from airflow_hitl.cli.client import ApiClient, ApiError, default_api_url, login, obtain_token
from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, open_request, snapshot
from tests.cli.conftest import ServedApi


class TestDefaultApiUrl:
    @pytest.mark.parametrize(
        ("hitl", "api", "expected"),
        [
            pytest.param("https://hitl.example.com/", "https://api.example.com", "https://hitl.example.com", id="hitl"),
            pytest.param(None, "https://api.example.com/", "https://api.example.com", id="api-when-hitl-unset"),
            pytest.param(None, None, "http://localhost:8080", id="neither"),
        ],
    )
    def test_hitl_base_url_else_airflows(
        self, monkeypatch: pytest.MonkeyPatch, hitl: str | None, api: str | None, expected: str
    ) -> None:
        for name, value in (("AIRFLOW__HITL__BASE_URL", hitl), ("AIRFLOW__API__BASE_URL", api)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert default_api_url() == expected


class TestObtainToken:
    def test_the_environment_a_file_or_a_login(
        self, served_api: ServedApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ApiError, match="AIRFLOW_HITL_TOKEN, --token-file or --username"):
            obtain_token(served_api.url)
        monkeypatch.setenv("AIRFLOW_HITL_TOKEN", " from-the-environment\n")
        assert obtain_token(served_api.url) == "from-the-environment"
        token_file = tmp_path / "token"
        token_file.write_text("from-a-file\n")
        # What is named on the command line wins over the environment.
        assert obtain_token(served_api.url, token_file=str(token_file)) == "from-a-file"
        asked: list[str] = []

        def password(user: str) -> str:
            asked.append(user)
            return served_api.password(user)

        token = obtain_token(served_api.url, username="bob", password=password)
        assert asked == ["bob"]
        whoami = ApiClient(api_url=served_api.url, token=token).get("", {"limit": 1})
        assert "approvals" in whoami

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            pytest.param("", "is empty", id="empty"),
            pytest.param("two words", "not a token", id="spaces"),
            pytest.param("tök", "not a token", id="not-ascii"),
        ],
    )
    def test_a_bad_token_file_is_refused_before_anything_is_sent(
        self, served_api: ServedApi, tmp_path: Path, content: str, message: str
    ) -> None:
        token_file = tmp_path / "token"
        token_file.write_text(content)
        with pytest.raises(ApiError, match=message):
            obtain_token(served_api.url, token_file=str(token_file))

    def test_a_file_and_a_user_together_are_an_error(self, served_api: ServedApi) -> None:
        with pytest.raises(ApiError, match="either --token-file or --username"):
            obtain_token(served_api.url, token_file="t", username="alice")

    def test_a_wrong_password_is_airflows_401(self, served_api: ServedApi) -> None:
        with pytest.raises(ApiError, match=r"logging in as 'alice': 401 Unauthorized from http://127\.0\.0\.1:\d+: "):
            login(served_api.url, "alice", "wrong")


class TestTheApiServersSide:
    """``X-HITL-Client`` only labels the source; who decides is always the token's user."""

    def test_cli_is_recorded_with_the_details_it_sends(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager)
        headers = {
            **api.headers("alice"),
            "X-HITL-Client": "cli",
            "X-HITL-OS-User": "deploy",
            "X-HITL-Host": "bastion-1",
        }
        response = api.client.post(f"{API}/{request.id}/approve", json={}, headers=headers)
        assert response.status_code == 200, response.text
        assert (response.json()["decided_by"], response.json()["decision_source"]) == ("alice", "cli")
        vote = next(e for e in api_manager.audit.events(request.id) if e.event_type == "vote")
        assert (vote.actor, vote.source, vote.details["os_user"], vote.details["hostname"]) == (
            "alice",
            "cli",
            "deploy",
            "bastion-1",
        )

    def test_without_the_header_it_is_api_and_client_details_are_not_taken(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        request = open_request(api_manager)
        headers = {**api.headers("alice"), "X-HITL-OS-User": "deploy", "X-HITL-Client": "api"}
        assert api.client.post(f"{API}/{request.id}/approve", json={}, headers=headers).status_code == 200
        vote = next(e for e in api_manager.audit.events(request.id) if e.event_type == "vote")
        assert vote.source == "api" and "os_user" not in vote.details

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({"X-HITL-Client": "ui"}, id="ui"),
            pytest.param({"X-HITL-Client": "break-glass"}, id="break-glass"),
            pytest.param({"X-HITL-Client": "CLI"}, id="case"),
            pytest.param({"X-HITL-Client": "cli", "X-HITL-OS-User": "x" * 300}, id="long-os-user"),
        ],
    )
    @pytest.mark.parametrize("action", ["approve", "reject", "cancel"])
    def test_any_other_source_is_a_422_naming_the_header(
        self, api: AirflowApi, api_manager: ApprovalManager, headers: dict[str, str], action: str
    ) -> None:
        request = open_request(api_manager)
        before = snapshot(api_manager)
        response = api.client.post(
            f"{API}/{request.id}/{action}", json={"reason": "r"} if action != "approve" else {}, headers={
                **api.headers("admin"), **headers
            }
        )  # fmt: skip
        assert response.status_code == 422, response.text
        assert [e["loc"][0] for e in response.json()["detail"]] == ["header"]
        assert snapshot(api_manager) == before

    def test_the_header_gives_no_identity(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        request = open_request(api_manager)
        before = snapshot(api_manager)
        headers = {**api.headers("viewer"), "X-HITL-Client": "cli", "X-HITL-OS-User": "admin"}
        assert api.client.post(f"{API}/{request.id}/approve", json={}, headers=headers).status_code == 403
        assert (
            api.client.post(f"{API}/{request.id}/approve", json={}, headers={"X-HITL-Client": "cli"}).status_code == 401
        )
        assert snapshot(api_manager) == before


class TestApiClient:
    def test_sends_the_cli_header_and_where_it_runs(self, served_api: ServedApi, api_store: ApprovalManager) -> None:
        request = open_request(api_store)
        client = ApiClient(api_url=served_api.url + "/", token=served_api.token("op"))
        decided = client.decide(request.id, "reject", {"reason": "numbers are off"})
        assert (decided["state"], decided["decided_by"], decided["decision_source"]) == ("rejected", "op", "cli")
        event = next(e for e in api_store.audit.events(request.id) if e.event_type == "vote")
        assert (event.details["os_user"], event.details["hostname"]) == (getpass.getuser(), socket.gethostname())

    def test_a_refusal_names_the_status_and_the_reason(self, served_api: ServedApi, api_store: ApprovalManager) -> None:
        request = open_request(api_store)
        client = ApiClient(api_url=served_api.url, token=served_api.token("op"))
        with pytest.raises(ApiError) as refused:
            client.decide(request.id, "reject", {})
        assert str(refused.value).startswith(f"422 Unprocessable Entity from {served_api.url}: reason: ")
        with pytest.raises(ApiError, match=r"^404 Not Found from .*: approval request .* not found$"):
            client.get("/00000000-0000-4000-8000-000000000000")
        # A URL that is not the api-server's root answers Airflow's UI page, not the API.
        with pytest.raises(ApiError, match=r"/nowhere answered 200 without JSON: is it Airflow's api-server\?"):
            ApiClient(api_url=served_api.url + "/nowhere", token="t").get("")

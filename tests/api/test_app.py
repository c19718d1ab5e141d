"""The ``/hitl`` app of :mod:`airflow_hitl.api.app`: routers, error handlers, the limits middleware, the drainer.

Each test builds its own app with :func:`create_app` over its own SQLite store and drives it
with a real ASGI client. Where the app must answer an error no request can provoke here (a
store that stops answering), a route added to that test's app raises it; the API's own
routes are answered with real tokens of Airflow's api-server (``tests/airflow_api.py``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from airflow_hitl import __version__
from airflow_hitl.api.app import API_PREFIX, MAX_ERROR_TEXT, MAX_ERRORS, create_app, input_errors
from airflow_hitl.api.datamodels import RejectBody
from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalNotFound,
    ConfigInvalid,
    InvalidInput,
    LinkAlreadyUsed,
    NotAllowed,
    StoreOutcomeUnknown,
    StoreSchemaError,
    StoreUnavailable,
)
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import reset_stores
from tests.airflow_api import API, AirflowApi, open_request
from tests.helpers import spec
from tests.standins import wait_for

UNANSWERED = OperationalError("SELECT 1", {}, Exception("could not connect to db.internal:5432"))
RAISED: dict[str, Exception] = {
    "not-allowed": NotAllowed("you cannot approve it yourself"),
    "not-found": ApprovalNotFound("abc"),
    "already-voted": AlreadyVoted("abc", "alice"),
    "link-used": LinkAlreadyUsed("n-1"),
    "invalid": InvalidInput("comment", "too long"),
    "invalid-mixed": InvalidInput.of([("inputs.n", "must be at least 1"), ("comment", "too long")]),
    "invalid-inputs": InvalidInput.of([("inputs.n", "must be at least 1"), ("inputs.ticket", "is required")]),
    "store-unavailable": StoreUnavailable("connection refused by db.internal"),
    "store-outcome-unknown": StoreOutcomeUnknown("lost during COMMIT"),
    "store-schema": StoreSchemaError("the store is at revision 0005; this version needs 0006"),
    "operational": UNANSWERED,
    "interface": InterfaceError("SELECT 1", {}, Exception("connection closed by db.internal")),
    "pool-timeout": SQLAlchemyTimeoutError("QueuePool limit of size 5 reached"),
    "config": ConfigInvalid("auto_migrate", "'Ture' is not a boolean"),
}
NOTHING_CHANGED = "the approval store is unavailable; nothing was changed, retry later"
DRAINER_THREAD = "hitl-outbox-drainer"


@pytest.fixture
def app(sqlite_manager: ApprovalManager) -> FastAPI:
    """A fresh ``/hitl`` app over this test's store, with two routes of the test's own."""
    app = create_app()
    app.state.hitl_manager = sqlite_manager

    @app.get("/raise/{name}", include_in_schema=False)
    def raise_it(name: str) -> None:
        raise RAISED[name]

    @app.post("/reject-body", include_in_schema=False)
    def reject_body(body: RejectBody) -> dict[str, str]:
        return {"reason": body.reason}

    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A real ASGI client of :func:`app` (the app raises nothing through: every error is an answer)."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _drainer_running() -> bool:
    return any(t.name == DRAINER_THREAD and t.is_alive() for t in threading.enumerate())


class TestErrorHandlers:
    @pytest.mark.parametrize(
        ("name", "status", "detail"),
        [
            ("not-allowed", 403, "you cannot approve it yourself"),
            ("not-found", 404, "approval request 'abc' not found"),
            ("already-voted", 409, "user 'alice' has already voted on approval request abc"),
            ("link-used", 410, "this link has already been used"),
            ("invalid", 422, "invalid `comment`: too long"),
            ("invalid-mixed", 422, str(RAISED["invalid-mixed"])),
        ],
    )
    def test_a_domain_error_is_its_status_and_message(
        self, client: TestClient, name: str, status: int, detail: str
    ) -> None:
        response = client.get(f"/raise/{name}")
        assert response.status_code == status
        assert response.json() == {"detail": detail}

    def test_form_input_errors_answer_like_fastapis_field_errors(self, client: TestClient) -> None:
        response = client.get("/raise/invalid-inputs")
        assert response.status_code == 422
        assert response.json() == {
            "detail": [
                {"loc": ["body", "inputs", "n"], "msg": "n: must be at least 1", "type": "value_error"},
                {"loc": ["body", "inputs", "ticket"], "msg": "ticket: is required", "type": "value_error"},
            ]
        }

    def test_input_errors_strips_the_prefix_of_each_field(self) -> None:
        error = InvalidInput.of([("inputs.percent", "must be at most 100")])
        assert input_errors(error) == [
            {"loc": ["body", "inputs", "percent"], "msg": "percent: must be at most 100", "type": "value_error"}
        ]

    @pytest.mark.parametrize(
        ("name", "detail"),
        [
            ("store-unavailable", NOTHING_CHANGED),
            ("operational", NOTHING_CHANGED),
            ("interface", NOTHING_CHANGED),
            ("pool-timeout", NOTHING_CHANGED),
            (
                "store-outcome-unknown",
                "the approval store stopped answering while recording this change: it may or may not have been "
                "applied; read the request again before retrying",
            ),
            ("store-schema", "the store is at revision 0005; this version needs 0006; nothing was changed"),
        ],
    )
    def test_a_store_that_does_not_answer_is_503_with_retry_after(
        self, client: TestClient, caplog: pytest.LogCaptureFixture, name: str, detail: str
    ) -> None:
        response = client.get(f"/raise/{name}")
        assert response.status_code == 503
        assert response.json() == {"detail": detail}
        assert response.headers["retry-after"] == str(StoreUnavailable.retry_after)
        # Where the store lives is for the log, not for the caller.
        assert "db.internal" not in response.text
        assert "approval store unavailable on GET /raise/" in caplog.text


class TestMisconfiguration:
    def test_an_option_that_cannot_be_read_is_503_naming_it(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        response = client.get("/raise/config")
        assert response.status_code == 503
        assert response.json() == {
            "detail": "airflow-hitl is misconfigured ([hitl] auto_migrate); the api-server's log says how"
        }
        # The value is for the operator's log, not for the caller.
        assert "Ture" not in response.text and "'Ture' is not a boolean" in caplog.text

    def test_the_api_server_does_not_start_with_a_misspelt_option(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Airflow's api-server enters this lifespan as it starts: the start fails, naming the option.
        monkeypatch.setenv("AIRFLOW__HITL__AUTO_MIGRATE", "Ture")
        app = create_app(outbox_drainer=True)
        with (
            pytest.raises(ConfigInvalid, match=r"^invalid \[hitl\] auto_migrate: 'Ture' is not a boolean"),
            TestClient(app),
        ):
            pass
        assert not _drainer_running()

    def test_a_limit_read_while_a_body_is_checked_is_503_naming_it(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_COMMENT_LENGTH", "4k")
        response = client.post("/reject-body", json={"reason": "no"})
        assert response.status_code == 503
        assert "[hitl] max_comment_length" in response.json()["detail"]


class TestValidationErrors:
    def test_outside_the_api_a_bad_body_is_422_without_echoing_it(self, client: TestClient) -> None:
        response = client.post("/reject-body", json={"reason": "x" * 5000, "user_id": "mallory"})
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert {e["loc"][-1] for e in errors} == {"reason", "user_id"}
        assert all("input" not in e for e in errors)
        assert "xxxxxxxxxx" not in response.text and "mallory" not in response.text

    def test_in_the_api_a_bad_body_without_a_valid_token_is_401(self, api: AirflowApi) -> None:
        for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
            response = api.client.post(f"{API}/bulk", headers=headers, json={"ids": "not a list"})
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"

    def test_in_the_api_a_bad_body_with_a_token_is_422_without_echoing_it(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        gate = open_request(api_manager)
        response = api.client.post(
            f"{API}/{gate.id}/reject", headers=api.headers("op"), json={"reason": "   ", "secret": "s3cr3t"}
        )
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert {e["loc"][-1] for e in errors} == {"reason", "secret"}
        assert "s3cr3t" not in response.text

    def test_thousands_of_unknown_fields_answer_a_few_errors_and_say_how_many_more(self, client: TestClient) -> None:
        # 877 KiB of unknown fields answered in full was a 6.6 MB 422.
        body = {f"field_{i:06d}_{'x' * 40}": i for i in range(16_000)}
        body["reason"] = "fine"
        response = client.post("/reject-body", json=body)
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert len(errors) == MAX_ERRORS + 1
        assert errors[-1] == {
            "loc": ["body"],
            "msg": f"{16_000 - MAX_ERRORS} more errors not shown",
            "type": "too_many_errors",
        }
        assert all(e["type"] == "extra_forbidden" for e in errors[:-1])
        assert len(response.content) < 10_000

    def test_a_long_field_name_is_clipped_in_the_answer(self, client: TestClient) -> None:
        response = client.post("/reject-body", json={"reason": "fine", "k" * 100_000: 1})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "k" * MAX_ERROR_TEXT + "…"]
        assert len(response.content) < 2_000

    def test_many_form_input_errors_are_capped_too(self) -> None:
        error = InvalidInput.of([(f"inputs.n{i}", "is required") for i in range(100)])
        errors = input_errors(error)
        assert len(errors) == MAX_ERRORS + 1 and errors[-1]["msg"] == f"{100 - MAX_ERRORS} more errors not shown"


class TestWiring:
    def test_the_api_routers_are_under_api_v1_and_in_the_openapi_document(self, client: TestClient) -> None:
        paths = set(client.get("/openapi.json").json()["paths"])
        assert {f"{API_PREFIX}/approvals", f"{API_PREFIX}/notifications", f"{API_PREFIX}/delegations"} <= paths
        assert all(path.startswith(API_PREFIX) for path in paths), paths

    def test_the_pages_links_and_slack_are_served_but_not_documented(self, app: FastAPI) -> None:
        routes = {getattr(route, "path", "") for route in app.routes}
        assert {"/ui/", "/ui/api/approvals/bulk", "/links", "/slack/interactions", "/health"} <= routes

    def test_health_names_the_version(self, client: TestClient) -> None:
        assert client.get("/health").json() == {"status": "ok", "version": __version__}

    def test_the_body_limit_answers_before_routing_and_authentication(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_REQUEST_BYTES", "1000")
        body = b'{"reason": "' + b"x" * 2000 + b'"}'
        for path in (f"{API_PREFIX}/approvals/bulk", "/no/such/route"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 413, path
            assert "larger than 1000 bytes" in response.json()["detail"]
        # Within the limit the same request reaches routing: no token, so 401; no route, so 404.
        assert client.post(f"{API_PREFIX}/approvals/bulk", json={}).status_code == 401
        assert client.post("/no/such/route", json={}).status_code == 404


class TestOutboxDrainer:
    def test_an_app_without_the_drainer_starts_none(
        self, sqlite_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__OUTBOX_DRAINER", "True")
        app = create_app()
        with TestClient(app):
            assert not _drainer_running()
            assert getattr(app.state, "hitl_lifespan", False) is False

    def test_the_drainer_delivers_while_the_app_serves_and_stops_with_it(
        self, sqlite_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__OUTBOX_DRAINER", "True")
        monkeypatch.setenv("AIRFLOW_HITL_STORE_URL", sqlite_manager.store.url)
        assert not _drainer_running()
        try:
            with TestClient(create_app(outbox_drainer=True)):
                assert _drainer_running()
                sqlite_manager.create(spec(allowed_approvers=("alice",), notify={"channels": ["in_app"]}))
                wait_for(
                    lambda: sqlite_manager.notices.unread_count("alice") == 1, timeout=30, what="the in-app notice"
                )
            assert not _drainer_running()
        finally:
            reset_stores()

    def test_a_worker_freezes_its_startup_heap_as_it_starts_serving(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__OUTBOX_DRAINER", "False")
        monkeypatch.setenv("AIRFLOW__HITL__GATE_CLOSER", "False")
        assert gc.get_freeze_count() == 0
        with TestClient(create_app(outbox_drainer=True)):
            # Everything the process holds, Airflow and the test run included.
            assert gc.get_freeze_count() > 10_000
        gc.unfreeze()
        with TestClient(create_app()):
            assert gc.get_freeze_count() == 0, "an app without the api-server's services leaves the heap alone"
        monkeypatch.setenv("AIRFLOW__HITL__API_SERVER_GC_FREEZE", "False")
        with TestClient(create_app(outbox_drainer=True)):
            assert gc.get_freeze_count() == 0, "the option turns it off"

    def test_the_option_turns_it_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__OUTBOX_DRAINER", "False")
        app = create_app(outbox_drainer=True)
        with TestClient(app):
            assert app.state.hitl_lifespan is True
            assert not _drainer_running()

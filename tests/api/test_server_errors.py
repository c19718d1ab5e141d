"""Issue 10: no input gets a 500, limits are enforced first, a lost store is a 503.

Every case runs through Airflow's real api-server app with real tokens, on SQLite and on
PostgreSQL (the backend that refuses most: lone surrogates, integers wider than a column,
NUL). Each bad input must be a 4xx naming its field, and change nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, open_request, serving, snapshot


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_manager(
    request: pytest.FixtureRequest, airflow_api: AirflowApi, tmp_path: Any
) -> Iterator[ApprovalManager]:
    """The mounted app over a fresh SQLite store, or over the session's PostgreSQL database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'hitl.db'}"
    with serving(airflow_api, url) as manager:
        yield manager


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


CREATE = {"dag_id": "billing", "title": "outside a task"}

# (method, path with {id}, body: bytes sent as is, or JSON; the field the 422 must name)
OUT_OF_RANGE: list[Any] = [
    pytest.param("POST", "", {**CREATE, "map_index": 2**31}, "map_index", id="map-index-past-int32"),
    pytest.param("POST", "", {**CREATE, "map_index": 10**30}, "map_index", id="map-index-huge"),
    pytest.param("POST", "", {**CREATE, "map_index": -2}, "map_index", id="map-index-below-minus-one"),
    pytest.param("POST", "", {**CREATE, "required_approvals": 2**40}, "required_approvals", id="quorum-huge"),
    pytest.param(
        "POST",
        "",
        {**CREATE, "timeout_seconds": 1e15, "timeout_action": "reject"},
        "timeout_seconds",
        id="timeout-past-year-9999",
    ),
    pytest.param(
        "POST",
        "",
        {
            **CREATE,
            "timeout_seconds": 60,
            "timeout_action": "escalate",
            "escalation_final_action": "reject",
            "escalate_to": [{"approvers": ["a"], "timeout_seconds": 1e300}],
        },
        "timeout_seconds",
        id="escalation-timeout-huge",
    ),
    pytest.param(
        "POST",
        "",
        {**CREATE, "escalate_to": [{"approvers": ["a"], "timeout_seconds": 60, "required_approvals": 2**33}]},
        "required_approvals",
        id="escalation-quorum-huge",
    ),
    pytest.param("GET", "?offset=100000000000000000000", None, "offset", id="list-offset-past-bigint"),
    pytest.param("GET", "pending?offset=9223372036854775808", None, "offset", id="pending-offset-past-bigint"),
    pytest.param("GET", "history?offset=99999999999999999999", None, "offset", id="history-offset-huge"),
]
UNSTORABLE_TEXT: list[Any] = [
    pytest.param("POST", "{id}/approve", b'{"comment": "a\\ud800b"}', "surrogate", id="lone-surrogate-comment"),
    pytest.param("POST", "{id}/approve", b'{"metadata": {"\\udfff": 1}}', "surrogate", id="lone-surrogate-key"),
    pytest.param("POST", "{id}/reject", b'{"reason": "\\udc00"}', "surrogate", id="lone-surrogate-reason"),
    pytest.param("POST", "", b'{"dag_id": "billing", "title": "\\ud83d"}', "surrogate", id="lone-surrogate-title"),
    pytest.param(
        "POST", "", b'{"dag_id": "billing", "title": "t", "context": {"a": ["\\ud800"]}}', "surrogate", id="ctx"
    ),
    pytest.param("POST", "{id}/approve", b'{"comment": "\xff\xfe"}', "body", id="invalid-utf8"),
]
TOO_DEEP: list[Any] = [
    pytest.param("POST", "{id}/approve", {"metadata": _nested(17)}, "metadata", id="metadata-past-depth-limit"),
    pytest.param("POST", "", {**CREATE, "context": _nested(17)}, "context", id="context-past-depth-limit"),
    pytest.param(
        "POST", "{id}/approve", b'{"metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "body", id="past-recursion-limit"
    ),
    pytest.param(
        "POST", "{id}/approve", b'{"metadata": {"n": 1' + b"0" * 5000 + b"}}", "body", id="integer-of-5000-digits"
    ),
]
OUT_OF_RANGE_DATES: list[Any] = [
    pytest.param("GET", "history?since=0001-01-01T00:00:00%2B14:00", None, "since", id="since-before-year-1-utc"),
    pytest.param("GET", "history?until=9999-12-31T23:59:59-14:00", None, "until", id="until-past-year-9999-utc"),
    pytest.param("GET", "history?since=0001-01-01T00:00:00", None, "since", id="since-year-1"),
]


class TestNoServerErrors:
    """Each class of input that used to answer 500 is a 422 naming the field, and changes nothing."""

    @pytest.mark.parametrize(
        ("method", "path", "body", "field"), [*OUT_OF_RANGE, *UNSTORABLE_TEXT, *TOO_DEEP, *OUT_OF_RANGE_DATES]
    )
    def test_422_naming_the_field(
        self,
        airflow_api: AirflowApi,
        backend_manager: ApprovalManager,
        method: str,
        path: str,
        body: Any,
        field: str,
    ) -> None:
        approval = open_request(backend_manager)
        before = snapshot(backend_manager)
        response = _send(airflow_api, method, path, body, approval.id)
        assert response.status_code == 422, response.text
        assert field in json.dumps(response.json()["detail"]), response.text
        assert snapshot(backend_manager) == before


class TestLimits:
    """Body size (413) and the size of context and metadata (422), enforced before any work."""

    def test_50_mb_metadata_is_413_before_it_is_read(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        body = b'{"metadata": {"blob": "' + b"x" * (50 * 1024 * 1024) + b'"}}'
        response = _send(api, "POST", "{id}/approve", body, approval.id)
        assert response.status_code == 413, response.text[:500]
        assert "max_request_bytes" in response.json()["detail"]
        assert snapshot(api_manager) == before

    def test_streamed_body_without_length_is_413(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)

        def chunks() -> Iterator[bytes]:
            yield b'{"comment": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        response = api.client.post(
            f"{API}/{approval.id}/approve",
            content=chunks(),
            headers={**api.headers("admin"), "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert snapshot(api_manager) == before

    def test_limit_follows_config(
        self, api: AirflowApi, api_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_REQUEST_BYTES", "200")
        approval = open_request(api_manager)
        response = _send(api, "POST", "{id}/approve", {"comment": "z" * 300}, approval.id)
        assert response.status_code == 413
        response = _send(api, "POST", "{id}/approve", {"comment": "fits"}, approval.id)
        assert response.status_code == 200, response.text

    def test_metadata_over_json_limit_is_422(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        response = _send(api, "POST", "{id}/approve", {"metadata": {"blob": "m" * 70_000}}, approval.id)
        assert response.status_code == 422
        assert "metadata" in json.dumps(response.json()["detail"])
        assert "max_json_bytes" in json.dumps(response.json()["detail"])
        assert snapshot(api_manager) == before

    def test_context_at_the_limits_is_accepted(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        response = _send(api, "POST", "", {**CREATE, "context": _nested(15), "metadata": {"m": "x" * 60_000}}, "")
        assert response.status_code == 201, response.text


class TestBlankText:
    """Issue 14: required text of only spaces is refused as blank, naming the field."""

    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            pytest.param("{id}/reject", {"reason": "   "}, "reason", id="reject"),
            pytest.param("{id}/cancel", {"reason": "\t \n"}, "reason", id="cancel"),
            pytest.param("", {"dag_id": "billing", "title": "   "}, "title", id="create-title"),
            pytest.param("", {"dag_id": "  ", "title": "t"}, "dag_id", id="create-dag-id"),
        ],
    )
    def test_blank_is_named(
        self, api: AirflowApi, api_manager: ApprovalManager, path: str, body: dict[str, Any], field: str
    ) -> None:
        approval = open_request(api_manager)
        before = snapshot(api_manager)
        response = _send(api, "POST", path, body, approval.id)
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert [e["loc"][-1] for e in errors] == [field]
        assert "must not be blank" in errors[0]["msg"]
        assert snapshot(api_manager) == before


class TestOpenApiDocument:
    """The document declares every status each route answers, with the body it has."""

    def test_every_error_status_is_declared_with_its_schema(self, api: AirflowApi) -> None:
        document = api.client.get("/hitl/openapi.json").json()
        paths = document["paths"]
        expected = {
            ("get", "/api/v1/approvals"): {"401", "422", "503"},
            ("post", "/api/v1/approvals"): {"401", "403", "413", "422", "503"},
            ("get", "/api/v1/approvals/{approval_id}"): {"401", "403", "404", "422", "503"},
            ("post", "/api/v1/approvals/{approval_id}/approve"): {"401", "403", "404", "409", "413", "422", "503"},
            ("post", "/api/v1/approvals/{approval_id}/reject"): {"401", "403", "404", "409", "413", "422", "503"},
            ("post", "/api/v1/approvals/{approval_id}/cancel"): {"401", "403", "404", "409", "413", "422", "503"},
            ("post", "/api/v1/approvals/bulk"): {"401", "413", "422", "503"},
        }
        for (method, path), codes in expected.items():
            responses = paths[path][method]["responses"]
            assert codes <= set(responses), (method, path, sorted(responses))
            for code in codes:
                schema = responses[code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, code)
        assert "Retry-After" in paths["/api/v1/approvals"]["get"]["responses"]["503"]["headers"]

    def test_422_body_matches_the_declared_schema(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        import jsonschema

        document = api.client.get("/hitl/openapi.json").json()
        schemas = document["components"]["schemas"]
        approval = open_request(api_manager)
        for response in (
            _send(api, "POST", "{id}/reject", {"reason": " "}, approval.id),  # field error list
            _send(api, "GET", "?order_by=password", None, approval.id),  # domain error text
            _send(api, "POST", "{id}/approve", b'{"metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", approval.id),
        ):
            assert response.status_code == 422
            jsonschema.validate(
                response.json(), {"$ref": "#/components/schemas/ErrorResponse", "components": {"schemas": schemas}}
            )


def _send(api: AirflowApi, method: str, path: str, body: Any, approval_id: str) -> Any:
    url = f"{API}/{path.replace('{id}', approval_id)}".rstrip("/").replace("/?", "?")
    kwargs: dict[str, Any] = {"headers": {**api.headers("admin"), "Content-Type": "application/json"}}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["content"] = json.dumps(body).encode()
    return api.client.request(method, url, **kwargs)

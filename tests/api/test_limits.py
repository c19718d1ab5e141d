"""BodyLimitMiddleware on its own: a tiny app behind it, driven over real ASGI calls.

The routes' own tests (tests/api/test_server_errors.py) check the limits through Airflow's
app; these pin the middleware's rules: what reaches the app, and what is answered for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from airflow_hitl.api.limits import BodyLimitMiddleware

LIMIT = 200_000


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, list[bytes]]]:
    """An app that records every body it receives, behind the middleware with a 200 kB limit."""
    monkeypatch.setenv("AIRFLOW__HITL__MAX_REQUEST_BYTES", str(LIMIT))
    received: list[bytes] = []
    app = FastAPI()

    @app.api_route("/echo", methods=["GET", "POST", "DELETE"])
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        received.append(body)
        return {"size": len(body)}

    app.add_middleware(BodyLimitMiddleware)
    with TestClient(app) as test_client:
        yield test_client, received


def test_a_body_within_the_limit_reaches_the_app_whole(client: tuple[TestClient, list[bytes]]) -> None:
    http, received = client
    body = json.dumps({"comment": "x" * (LIMIT - 100)}).encode()
    response = http.post("/echo", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert received == [body]


def test_a_declared_length_over_the_limit_is_413_before_the_app(client: tuple[TestClient, list[bytes]]) -> None:
    http, received = client
    response = http.post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than {LIMIT} bytes (`[hitl] max_request_bytes`)"}
    assert received == []


def test_a_streamed_body_over_the_limit_is_413(client: tuple[TestClient, list[bytes]]) -> None:
    http, received = client

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * (LIMIT // 4)

    # A generator body goes out chunked: no Content-Length to judge by.
    response = http.post("/echo", content=chunks())
    assert response.status_code == 413
    assert received == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "JSON is nested too deeply"),
        (b'{"n": ' + b"9" * 5_000 + b"}", "JSON cannot be read: Exceeds the limit (4300 digits)"),
    ],
    ids=["past-the-recursion-limit", "number-of-5000-digits"],
)
def test_json_python_cannot_read_is_422_naming_the_body(
    client: tuple[TestClient, list[bytes]], body: bytes, message: str
) -> None:
    http, received = client
    response = http.post("/echo", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and error["type"] == "json_invalid"
    assert error["msg"].startswith(message)
    assert received == []


def test_malformed_json_is_left_to_the_app(client: tuple[TestClient, list[bytes]]) -> None:
    # A syntax error is FastAPI's to answer (with its position); the middleware passes it on.
    http, received = client
    response = http.post("/echo", content=b'{"a": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert received == [b'{"a": ']


def test_reads_and_non_json_bodies_pass_untouched(client: tuple[TestClient, list[bytes]]) -> None:
    http, received = client
    assert http.get("/echo").status_code == 200
    deep = b"[" * 50_000
    assert http.post("/echo", content=deep, headers={"Content-Type": "text/plain"}).status_code == 200
    assert received == [b"", deep]

"""Real local stand-ins for the outside world: an SMTP server, Slack's Web API, a webhook receiver.

A pytest plugin (``tests/conftest.py`` loads it), so the tests of the notifications and of the
routes that answer them (``tests/api/routes``) share one copy.

- :func:`smtp_server`: ``aiosmtpd`` on loopback; every message it accepts is parsed and kept.
- :func:`slack_api`: a small HTTP server answering ``/api/<method>`` like Slack's Web API
  (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``, ``views.open``,
  ``users.info``), recording every call; ``slack_sdk``'s ``WebClient`` reaches it through the
  Slack connection's ``base_url`` extra.
- :func:`webhook_receiver`: an HTTP server that verifies every POST with the
  ``standardwebhooks`` library (as any receiver would) and answers with a scripted sequence
  of status codes.

:func:`notify_env` points Airflow connections and ``[hitl]`` options (environment variables)
at them. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.harness import free_port

SIGNING_KEY = "test-signing-key-" + "k" * 32
SLACK_SIGNING_SECRET = "slack-signing-secret-for-tests"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-tests-32bytes").decode()
BASE_URL = "http://hitl.test"
USER_EMAILS = {
    "alice": "alice@example.com",
    "bob": "bob@example.com",
    "carol": "carol@example.com",
    "viewer": "viewer@example.com",
    "op": "op@example.com",
}
SLACK_USERS = {"alice": "UALICE001", "bob": "UBOB00001", "viewer": "UVIEWER01"}
# Slack members the stand-in knows (users.info): op is only known by email.
SLACK_PROFILES = {
    "UALICE001": "alice@example.com",
    "UBOB00001": "bob@example.com",
    "UOPS00001": "op@example.com",
    "UMALLORY1": "mallory@example.com",
}


def wait_for(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------- SMTP


@dataclass
class SmtpSink:
    """Messages received by the loopback SMTP server."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)

    def wait(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until ``count`` messages arrived; return them."""
        wait_for(lambda: len(self.messages) >= count, timeout, f"{count} emails")
        return self.messages[:count]

    def to(self, address: str) -> list[EmailMessage]:
        """Messages addressed to ``address``."""
        return [m for m in self.messages if address in str(m["To"])]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.sink.messages.append(message)
        self.sink.received_at.append(time.monotonic())
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1."""
    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# ---------------------------------------------------------------------------- HTTP stand-ins


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler: type[BaseHTTPRequestHandler]) -> _Server:
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@dataclass
class SlackCall:
    """One Web API call the stand-in received."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass
class SlackApi:
    """The Slack Web API stand-in and what it has been asked."""

    base_url: str
    calls: list[SlackCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, method: str) -> list[SlackCall]:
        """Calls of one API method."""
        with self.lock:
            return [c for c in self.calls if c.method == method]


@pytest.fixture
def slack_api() -> Iterator[SlackApi]:
    """A loopback HTTP server answering like Slack's Web API."""
    yield from serve_slack_api()


def serve_slack_api() -> Iterator[SlackApi]:
    """Body of a fixture yielding the Slack Web API stand-in (any scope)."""
    api = SlackApi(base_url="")
    counter = iter(range(1, 1_000_000))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if "json" in (self.headers.get("Content-Type") or ""):
                params = json.loads(raw or "{}")
            else:
                params = {k: v[0] for k, v in parse_qs(raw).items()}
            method = self.path.rsplit("/", 1)[-1]
            with api.lock:
                api.calls.append(SlackCall(method=method, params=params, at=time.monotonic()))
            if self.headers.get("Authorization") != "Bearer xoxb-test-token":
                body: dict[str, Any] = {"ok": False, "error": "invalid_auth"}
            elif method == "users.info":
                user = params.get("user")
                address = SLACK_PROFILES.get(str(user))
                body = (
                    {"ok": True, "user": {"id": user, "profile": {"email": address}}}
                    if address
                    else {"ok": False, "error": "user_not_found"}
                )
            elif method in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
                ts = params.get("ts") or f"1700000000.{next(counter):06d}"
                body = {"ok": True, "channel": params.get("channel", "C1"), "ts": ts}
            else:
                body = {"ok": True}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = _serve(Handler)
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}/api/"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class WebhookReceiver:
    """The webhook receiver: scripted answers, every delivery with its signature check."""

    url: str
    port: int
    statuses: list[int] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    # The secrets a receiver holds (``whsec_...`` text, or raw bytes); "valid" means any verifies.
    secrets: list[str | bytes] = field(default_factory=lambda: [WEBHOOK_SECRET])


def verify_webhook(secret: str | bytes, headers: Any, body: bytes) -> bool:
    """How a receiver checks our signature: the ``standardwebhooks`` library (see the README)."""
    try:
        Webhook(secret).verify(body, dict(headers))
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A loopback webhook receiver that verifies our signature with ``standardwebhooks``."""
    receiver = WebhookReceiver(url="", port=0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.deliveries.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(body),
                    "raw": body,
                    "valid": any(verify_webhook(secret, self.headers, body) for secret in receiver.secrets),
                    "status": status,
                    "at": time.monotonic(),
                }
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _serve(Handler)
    receiver.port = int(server.server_address[1])
    receiver.url = f"http://127.0.0.1:{receiver.port}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- configuration


def notify_environment(
    *, smtp_port: int | None = None, slack_base_url: str | None = None, webhook_port: int | None = None
) -> dict[str, str]:
    """Environment variables wiring connections and ``[hitl]`` options to the local stand-ins."""
    env = {
        "AIRFLOW__HITL__SIGNING_KEY": SIGNING_KEY,
        "AIRFLOW__HITL__SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "AIRFLOW__HITL__BASE_URL": BASE_URL,
        "AIRFLOW__HITL__USER_EMAILS": json.dumps(USER_EMAILS),
        "AIRFLOW__HITL__SLACK_USERS": json.dumps(SLACK_USERS),
        "AIRFLOW__HITL__ROLE_MEMBERS": json.dumps({"leads": ["alice", "bob"], "ghosts": ["nobody-knows"]}),
        "AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF": "0.01",
        "AIRFLOW__HITL__NOTIFY_FROM_EMAIL": "airflow@example.com",
    }
    if smtp_port:
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "airflow@example.com",
                    "retry_limit": 0,
                },
            }
        )
    if slack_base_url:
        env["AIRFLOW_CONN_SLACK_API_DEFAULT"] = json.dumps(
            {"conn_type": "slack", "password": "xoxb-test-token", "extra": {"base_url": slack_base_url}}
        )
    if webhook_port:
        env["AIRFLOW_CONN_HITL_WEBHOOK"] = json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": webhook_port,
                "schema": "http",
                "password": WEBHOOK_SECRET,
            }
        )
    return env


@pytest.fixture
def notify_env(
    monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpSink, slack_api: SlackApi, webhook_receiver: WebhookReceiver
) -> dict[str, str]:
    """Connections and ``[hitl]`` options pointing at the local SMTP, Slack and webhook stand-ins."""
    env = notify_environment(
        smtp_port=smtp_server.port, slack_base_url=slack_api.base_url, webhook_port=webhook_receiver.port
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env

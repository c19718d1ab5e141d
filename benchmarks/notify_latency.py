"""Notification latency: from opening an approval request to delivery at each channel.

Not a test: it prints figures. Everything runs on loopback in this process:

- a real SMTP server (``aiosmtpd``), reached through ``SmtpHook`` and the ``smtp_default`` connection;
- a stand-in for Slack's Web API (``chat.postMessage``), reached through ``SlackHook`` with the
  connection's ``base_url`` extra;
- a webhook receiver that verifies our HMAC signature, reached through ``HttpHook``.

For each of N requests (default 200) it opens a gate with ``ApprovalManager.create`` and runs
the :class:`~airflow_hitl.notifications.dispatcher.NotificationDispatcher` exactly as the
operator's ``execute`` does ("required": one email with signed links, one Slack message with
buttons, one signed webhook, one in-app row), and records when each stand-in received its
message. Latency = receipt time minus the moment before ``create``. Prints p50/p99/max per
channel, on SQLite and (when reachable) PostgreSQL. Target: p99 under 2 s (the seed asked 5 s).

Usage::

    .venv/bin/python benchmarks/notify_latency.py [--requests 200] [--pg URL] [--no-pg]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEBHOOK_SECRET = "bench-webhook-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receipts:
    """When each channel received the message of each request (monotonic seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[tuple[str, str], float] = {}
        self.bad_signatures = 0

    def mark(self, channel: str, request_id: str) -> None:
        """Record a receipt."""
        with self.lock:
            self.at.setdefault((channel, request_id), time.monotonic())


def start_smtp(receipts: Receipts) -> tuple[Any, int]:
    """aiosmtpd on loopback; the request id travels in the X-Hitl-Request-Id header."""
    from email import message_from_bytes

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            receipts.mark("email", str(message_from_bytes(envelope.content)["X-Hitl-Request-Id"]))
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


def start_http(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, int]:
    """A threaded HTTP server on loopback."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def slack_handler(receipts: Receipts) -> type[BaseHTTPRequestHandler]:
    """Slack Web API stand-in: ``chat.postMessage`` answers ok with a ts."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            params = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            for block in params.get("blocks") or []:
                if block.get("type") == "actions":
                    receipts.mark("slack", str(block["elements"][0]["value"]))
            body = json.dumps({"ok": True, "channel": params.get("channel"), "ts": f"{time.time():.6f}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def webhook_handler(receipts: Receipts) -> type[BaseHTTPRequestHandler]:
    """Webhook receiver that verifies the signature before accepting."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                # What any receiver does: verify with the Standard Webhooks library.
                Webhook(WEBHOOK_SECRET.encode()).verify(body, dict(self.headers))
            except WebhookVerificationError:
                receipts.bad_signatures += 1
                status = 401
            else:
                receipts.mark("webhook", json.loads(body)["approval"]["id"])
                status = 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run(
    store_url: str, label: str, requests: int, receipts: Receipts
) -> list[tuple[str, str, int, float, float, float]]:
    """Open ``requests`` gates on ``store_url`` and dispatch their notices; return a row per channel."""
    from airflow_hitl.manager import ApprovalManager, ApprovalSpec
    from airflow_hitl.models.schema import migrate
    from airflow_hitl.models.store import ApprovalStore
    from airflow_hitl.notifications.dispatcher import NotificationDispatcher

    store = ApprovalStore(url=store_url)
    migrate(store)
    manager = ApprovalManager(store=store)
    dispatcher = NotificationDispatcher(manager=manager)
    started: dict[str, float] = {}
    failures = 0
    run_tag = uuid.uuid4().hex[:8]
    # Request -1 warms up (imports of the SMTP/Slack/HTTP providers, first connections): not counted.
    for i in range(-1, requests):
        t0 = time.monotonic()
        approval = manager.create(
            ApprovalSpec(
                dag_id="bench_notify",
                run_id=f"bench_{run_tag}_{i}",
                task_id="gate",
                try_number=1,
                title=f"Release model build {i}",
                requested_by="ricky",
                reason="Accuracy above 95%",
                context={"metrics": {"accuracy": 0.962, "f1": 0.91}},
                allowed_approvers=("alice",),
                timeout=dt.timedelta(hours=1),
                timeout_action="reject",
                notify={
                    "channels": ["email", "slack", "webhook", "in_app"],
                    "slack_channel": "C0APPROVALS",
                },
            )
        )
        rows = dispatcher.dispatch(approval, "required")
        if i >= 0:
            started[approval.id] = t0
        failures += sum(1 for r in rows if r.status != "sent")
    time.sleep(0.5)
    table = []
    for channel in ("email", "slack", "webhook"):
        latencies = [receipts.at[(channel, rid)] - t0 for rid, t0 in started.items() if (channel, rid) in receipts.at]
        if not latencies:
            table.append((label, channel, 0, float("nan"), float("nan"), float("nan")))
            continue
        table.append(
            (label, channel, len(latencies), statistics.median(latencies), percentile(latencies, 99), max(latencies))
        )
    if failures:
        print(f"  {label}: {failures} notices not sent", file=sys.stderr)
    store.dispose()
    return table


def main() -> None:
    """Parse arguments, start the stand-ins, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--pg", default=os.environ.get("HITL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    receipts = Receipts()
    smtp, smtp_port = start_smtp(receipts)
    slack, slack_port = start_http(slack_handler(receipts))
    webhook, webhook_port = start_http(webhook_handler(receipts))
    home = tempfile.mkdtemp(prefix="hitl-bench-notify-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__HITL__SIGNING_KEY": "bench-signing-key-" + "k" * 32,
            "AIRFLOW__HITL__USER_EMAILS": json.dumps({"alice": "alice@example.com"}),
            "AIRFLOW__HITL__BASE_URL": "http://airflow.bench",
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "extra": {
                        "disable_ssl": True,
                        "disable_tls": True,
                        "from_email": "airflow@bench",
                        "retry_limit": 0,
                    },
                }
            ),
            "AIRFLOW_CONN_SLACK_API_DEFAULT": json.dumps(
                {
                    "conn_type": "slack",
                    "password": "xoxb-bench",
                    "extra": {"base_url": f"http://127.0.0.1:{slack_port}/api/"},
                }
            ),
            "AIRFLOW_CONN_HITL_WEBHOOK": json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": webhook_port,
                    "schema": "http",
                    "password": WEBHOOK_SECRET,
                }
            ),
        }
    )
    stores = [("sqlite", f"sqlite:///{Path(home) / 'hitl.db'}")]
    if not args.no_pg:
        from sqlalchemy import create_engine, text

        name = f"hitl_bench_{uuid.uuid4().hex[:8]}"
        try:
            admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            stores.append(("postgres", args.pg.rsplit("/", 1)[0] + f"/{name}"))
        except Exception as err:
            print(f"PostgreSQL unreachable ({err}); SQLite only", file=sys.stderr)
            admin = None
    rows = []
    try:
        for label, url in stores:
            print(f"measuring {args.requests} requests on {label} ...", file=sys.stderr)
            rows += run(url, label, args.requests, receipts)
    finally:
        smtp.stop()
        slack.shutdown()
        webhook.shutdown()
        if len(stores) > 1 and admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print()
    print(f"request creation -> delivery, {args.requests} requests per store (one process, loopback)")
    print(f"{'store':<9} {'channel':<8} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, channel, n, p50, p99, worst in rows:
        print(f"{label:<9} {channel:<8} {n:>5} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} {worst * 1000:>8.1f}")
    if receipts.bad_signatures:
        print(f"webhook signatures refused: {receipts.bad_signatures}")


if __name__ == "__main__":
    main()

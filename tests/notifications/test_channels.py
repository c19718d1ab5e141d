"""The channel notifiers of :mod:`airflow_hitl.notifications.channels`, against the local stand-ins.

Email goes to a real SMTP server on loopback, Slack to the Web API stand-in, webhooks to a
receiver that verifies them with the ``standardwebhooks`` library (all in :mod:`tests.standins`).
The Slack message builders run over requests of a real store.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from airflow.sdk import Param
from slack_sdk.errors import SlackApiError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.channels import (
    APPROVE_ACTION_ID,
    REJECT_ACTION_ID,
    DeliveryError,
    HitlEmailNotifier,
    HitlSlackNotifier,
    HitlWebhookNotifier,
    approval_blocks,
    outcome_line,
    slack_escape,
)
from airflow_hitl.policy import Principal
from tests.e2e.harness import free_port
from tests.helpers import Clock, spec
from tests.notifications.test_dispatcher import dispatcher, open_gate
from tests.standins import WEBHOOK_SECRET, SlackApi, SmtpSink, WebhookReceiver

ALICE = Principal.of("alice")


@pytest.mark.usefixtures("notify_env")
class TestStandaloneNotifiers:
    """The channel classes work as plain Airflow notifiers (e.g. in ``on_failure_callback``)."""

    def test_email_notifier_renders_its_templated_fields(self, smtp_server: SmtpSink) -> None:
        from airflow_hitl.notifications.channels import HitlEmailNotifier

        notifier = HitlEmailNotifier(
            to="ops@example.com", subject="{{ task_id }} failed", text="see {{ task_id }}", html="<p>{{ task_id }}</p>"
        )
        notifier({"task_id": "load"})
        [mail] = smtp_server.wait(1)
        assert mail["Subject"] == "load failed"
        assert mail.get_body(("plain",)).get_content().strip() == "see load"
        assert "<p>load</p>" in mail.get_body(("html",)).get_content()

    def test_slack_notifier_posts(self, slack_api: SlackApi) -> None:
        from airflow_hitl.notifications.channels import HitlSlackNotifier

        HitlSlackNotifier(channel="#ops", text="{{ task_id }} failed")({"task_id": "load"})
        [call] = slack_api.of("chat.postMessage")
        assert (call.params["channel"], call.params["text"]) == ("#ops", "load failed")

    def test_webhook_notifier_signs(self, webhook_receiver: WebhookReceiver) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from airflow_hitl.notifications.channels import HitlWebhookNotifier

        notifier = HitlWebhookNotifier(payload={"failed": "{{ task_id }}"})
        notifier.render_template_fields({"task_id": "load"})  # type: ignore[arg-type]
        # Its own thread: Playwright's sync API (tests/ui) leaves a loop running in this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, notifier.async_notify({})).result()  # type: ignore[arg-type]
        [delivery] = webhook_receiver.deliveries
        assert delivery["valid"]
        assert delivery["body"] == {"failed": "load"}


def webhook_connection(
    receiver: WebhookReceiver, *, password: str | None = None, secret: str | list[str] | None = None
) -> str:
    """``AIRFLOW_CONN_HITL_WEBHOOK`` for ``receiver`` with the given password and/or ``secret`` extra."""
    conn: dict[str, Any] = {"conn_type": "http", "host": "127.0.0.1", "port": receiver.port, "schema": "http"}
    if password is not None:
        conn["password"] = password
    if secret is not None:
        conn["extra"] = {"secret": secret}
    return json.dumps(conn)


def whsec(raw: bytes) -> str:
    """A Standard Webhooks secret for the key ``raw``."""
    return "whsec_" + base64.b64encode(raw).decode()


@pytest.mark.usefixtures("notify_env")
class TestStandardWebhooks:
    """Deliveries any receiver can verify with the ``standardwebhooks`` library."""

    def test_a_delivery_verifies_with_the_library_and_carries_the_standard_headers(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver
    ) -> None:
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "sent", row.error
        [delivery] = webhook_receiver.deliveries
        headers = delivery["headers"]
        assert headers["webhook-id"] == row.metadata["message_id"]
        assert headers["webhook-signature"].startswith("v1,")
        assert not any(name.lower().startswith("x-hitl") for name in headers)
        verified = Webhook(WEBHOOK_SECRET).verify(delivery["raw"], headers)
        assert verified["approval"]["id"] == gate.id
        # One changed byte and the library refuses it.
        with pytest.raises(WebhookVerificationError):
            Webhook(WEBHOOK_SECRET).verify(delivery["raw"].replace(b"required", b"requirex"), headers)

    def test_several_secrets_sign_every_message_for_key_rotation(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        new, old = whsec(b"n" * 32), whsec(b"o" * 32)
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", webhook_connection(webhook_receiver, password=f"{new} {old}"))
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "sent", row.error
        [delivery] = webhook_receiver.deliveries
        assert len(delivery["headers"]["webhook-signature"].split(" ")) == 2
        for secret in (new, old):  # a receiver still on the old secret, one already on the new
            assert Webhook(secret).verify(delivery["raw"], delivery["headers"])["event"] == "required"
        with pytest.raises(WebhookVerificationError):
            Webhook(whsec(b"x" * 32)).verify(delivery["raw"], delivery["headers"])

    def test_a_list_of_secrets_in_the_extra_signs_with_each(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        new, old = whsec(b"n" * 32), whsec(b"o" * 32)
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", webhook_connection(webhook_receiver, secret=[new, old]))
        webhook_receiver.secrets[:] = [old]
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "sent", row.error
        [delivery] = webhook_receiver.deliveries
        assert delivery["valid"]
        assert len(delivery["headers"]["webhook-signature"].split(" ")) == 2
        assert not [h for h, v in delivery["headers"].items() if new in v or old in v or h.lower() == "secret"]

    def test_a_plain_secret_extra_signs_with_its_bytes(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", webhook_connection(webhook_receiver, secret="plain-secret"))
        webhook_receiver.secrets[:] = [b"plain-secret"]
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "sent", row.error
        assert [d["valid"] for d in webhook_receiver.deliveries] == [True]
        # HttpHook sends unknown extras as headers: never the signing secret.
        [delivery] = webhook_receiver.deliveries
        assert not [h for h, v in delivery["headers"].items() if "plain-secret" in v or h.lower() == "secret"]

    def test_a_password_that_would_go_out_as_basic_auth_is_not_a_secret(
        self, manager: ApprovalManager, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = json.loads(webhook_connection(webhook_receiver, password=WEBHOOK_SECRET))
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", json.dumps({**conn, "login": "hitl"}))
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "failed"
        assert "Basic auth" in (row.error or "")
        assert WEBHOOK_SECRET not in (row.error or "")
        assert webhook_receiver.deliveries == []

    @pytest.mark.parametrize(
        ("password", "said"),
        [
            pytest.param("whsec_!!not-base64!!", "not valid base64", id="bad-whsec"),
            pytest.param("   ", "no webhook secret", id="blank"),
        ],
    )
    def test_a_bad_secret_sends_nothing_and_says_why(
        self,
        manager: ApprovalManager,
        webhook_receiver: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch,
        password: str,
        said: str,
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", webhook_connection(webhook_receiver, password=password))
        gate = open_gate(manager, channels=["webhook"])
        [row] = dispatcher(manager).dispatch(gate, "required")
        assert row.status == "failed"
        assert said in (row.error or "")
        assert "not-base64" not in (row.error or ""), "the secret is never echoed"
        assert webhook_receiver.deliveries == []
        assert manager.queries.get(gate.id).state == "pending"


class TestSlackEscape:
    """What :func:`slack_escape` makes of markup, mentions and quotes."""

    @pytest.mark.parametrize(
        ("raw", "visible"),
        [
            pytest.param("a & b", "a &amp; b", id="ampersand"),
            pytest.param("<!channel>", "&lt;!channel&gt;", id="mention"),
            pytest.param("*x*", "\u200d*\u200dx\u200d*\u200d", id="bold"),
            pytest.param("line\n> quote", "line\n\u200d&gt; quote", id="quote"),
            pytest.param("a > b", "a &gt; b", id="inline-gt-is-not-a-quote"),
        ],
    )
    def test_slack_escape(self, raw: str, visible: str) -> None:
        assert slack_escape(raw) == visible


# ---------------------------------------------------------------------------- email


def smtp_connection(port: int, **extra: Any) -> str:
    """An SMTP connection to the loopback server on ``port`` with ``extra`` (plain, no TLS)."""
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, **extra},
        }
    )


@pytest.mark.usefixtures("notify_env")
class TestEmail:
    def test_send_builds_text_and_html_alternatives_with_our_headers(self, smtp_server: SmtpSink) -> None:
        sent = HitlEmailNotifier().send(
            to=["alice@example.com", "bob@example.com"],
            subject="Approval required: Release",
            text="plain body",
            html="<p>html body</p>",
            headers={"X-Hitl-Request": "r-1"},
        )
        [mail] = smtp_server.wait(1)
        assert mail["Message-ID"] == sent["message_id"]
        assert mail["Subject"] == "Approval required: Release"
        assert str(mail["To"]) == "alice@example.com, bob@example.com"
        assert mail["From"] == "airflow@example.com"
        assert mail["X-Hitl-Request"] == "r-1"
        assert mail.get_content_type() == "multipart/alternative"
        assert mail.get_body(("plain",)).get_content().strip() == "plain body"
        assert mail.get_body(("html",)).get_content().strip() == "<p>html body</p>"

    def test_without_html_the_email_is_text_only(self, smtp_server: SmtpSink) -> None:
        HitlEmailNotifier().send(to="alice@example.com", subject="s", text="only text", html=None)
        [mail] = smtp_server.wait(1)
        assert mail.get_content_type() == "text/plain"
        assert mail.get_body(("html",)) is None
        assert mail.get_content().strip() == "only text"

    def test_the_sender_is_the_argument_then_the_connection_then_the_option(
        self, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_FROM_EMAIL", "option@example.com")
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(smtp_server.port, from_email="conn@example.com")
        )
        HitlEmailNotifier(from_email="gate@example.com").send(to="a@example.com", subject="1", text="t", html=None)
        HitlEmailNotifier().send(to="a@example.com", subject="2", text="t", html=None)
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(smtp_server.port))
        HitlEmailNotifier().send(to="a@example.com", subject="3", text="t", html=None)
        mails = smtp_server.wait(3)
        assert {m["Subject"]: m["From"] for m in mails} == {
            "1": "gate@example.com",
            "2": "conn@example.com",
            "3": "option@example.com",
        }

    def test_a_named_connection_is_used_instead_of_the_option(
        self, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The default connection leads nowhere: only the named one reaches the server.
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(free_port()))
        monkeypatch.setenv("AIRFLOW_CONN_OPS_SMTP", smtp_connection(smtp_server.port))
        HitlEmailNotifier(smtp_conn_id="ops_smtp").send(to="ops@example.com", subject="s", text="t", html=None)
        assert [str(m["To"]) for m in smtp_server.wait(1)] == ["ops@example.com"]

    def test_notify_without_a_recipient_refuses_and_sends_nothing(self, smtp_server: SmtpSink) -> None:
        with pytest.raises(DeliveryError, match="no recipient"):
            HitlEmailNotifier(subject="s", text="t").notify({})  # type: ignore[arg-type]
        assert smtp_server.messages == []


# ---------------------------------------------------------------------------- slack


def slack_connection(base_url: str, token: str = "xoxb-test-token") -> str:
    """A Slack API connection to the stand-in at ``base_url``."""
    return json.dumps({"conn_type": "slack", "password": token, "extra": {"base_url": base_url}})


@pytest.mark.usefixtures("notify_env")
class TestSlack:
    def test_post_escapes_the_text_sends_the_blocks_and_says_where_it_went(self, slack_api: SlackApi) -> None:
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*our label*"}}]
        posted = HitlSlackNotifier().post(channel="#ops", text="<!channel> deploy *now*", blocks=blocks)
        [call] = slack_api.of("chat.postMessage")
        assert call.params["channel"] == "#ops"
        assert call.params["text"] == slack_escape("<!channel> deploy *now*")
        assert "<!channel>" not in call.params["text"]
        assert call.params["blocks"] == blocks, "blocks are sent as given"
        assert posted["channel"] == "#ops"
        assert posted["ts"] and posted["ts"].startswith("1700000000.")

    def test_update_names_the_message_and_escapes_its_text(self, slack_api: SlackApi) -> None:
        updated = HitlSlackNotifier().update(channel="C1", ts="1700000000.000042", text="done by <@U1>", blocks=[])
        [call] = slack_api.of("chat.update")
        assert (call.params["channel"], call.params["ts"]) == ("C1", "1700000000.000042")
        assert call.params["text"] == "done by &lt;@U1&gt;"
        assert updated == {"channel": "C1", "ts": "1700000000.000042"}
        assert slack_api.of("chat.postMessage") == []

    def test_a_named_connection_is_used_instead_of_the_option(
        self, slack_api: SlackApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", slack_connection(slack_api.base_url, token="xoxb-wrong"))
        monkeypatch.setenv("AIRFLOW_CONN_OPS_SLACK", slack_connection(slack_api.base_url))
        HitlSlackNotifier(slack_conn_id="ops_slack").post(channel="#ops", text="hi", blocks=[])
        with pytest.raises(SlackApiError, match="invalid_auth"):
            HitlSlackNotifier().post(channel="#ops", text="hi", blocks=[])
        assert [c.params["channel"] for c in slack_api.of("chat.postMessage")] == ["#ops", "#ops"]

    def test_notify_without_a_channel_refuses_and_calls_nothing(self, slack_api: SlackApi) -> None:
        with pytest.raises(DeliveryError, match="no Slack channel"):
            HitlSlackNotifier(text="t").notify({})  # type: ignore[arg-type]
        assert slack_api.calls == []


class TestApprovalBlocks:
    """The Block Kit message of a gate: every value from the request escaped, our labels markup."""

    def test_a_gate_with_everything_shown(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(
            spec(
                title="Release *v2*",
                reason="metrics <ok>",
                context={"metrics": {"b": 2, "a": 1}, "model": "churn"},
                timeout=dt.timedelta(hours=2),
                timeout_action="reject",
                allowed_approvers=("alice", "bob"),
                required_approvals=2,
                inputs={"ticket": Param(type="string"), "percent": Param(10, type="integer")},
            )
        )
        blocks = approval_blocks(
            gate, headline="Approval required", details_url="http://hitl.test/x", buttons=True, footer="For <@U1>"
        )
        assert [b["type"] for b in blocks] == [
            "header",
            "section",
            "section",
            "section",
            "section",
            "section",
            "actions",
            "context",
        ]
        header, title, facts, reason, context, inputs, actions, footer = blocks
        assert header["text"] == {"type": "plain_text", "text": "Approval required"}
        assert title["text"]["text"] == f"*{slack_escape('Release *v2*')}*"
        assert [f["text"].split("\n", 1)[0] for f in facts["fields"]] == [
            "*DAG*",
            "*Task*",
            "*Run*",
            "*Requested by*",
            "*Expires*",
            "*Approvals*",
        ]
        assert facts["fields"][0]["text"] == "*DAG*\nrelease"
        assert facts["fields"][3]["text"] == "*Requested by*\nricky"
        assert facts["fields"][4]["text"].startswith(f"*Expires*\n<!date^{int(gate.expires_at.timestamp())}^")
        assert facts["fields"][5]["text"] == "*Approvals*\n0 of 2"
        assert reason["text"]["text"] == "*Reason:* metrics &lt;ok&gt;"
        assert context["text"]["text"].splitlines() == ['• *metrics*: {"a": 1, "b": 2}', "• *model*: churn"]
        lines = inputs["text"]["text"].splitlines()
        assert lines[0] == "*Inputs to fill in when approving:*"
        assert sorted(lines[1:]) == ["• *percent* (default: 10)", "• *ticket* (required)"]
        assert actions["block_id"] == f"hitl:{gate.id}"
        assert [(e["action_id"], e.get("value"), e.get("url")) for e in actions["elements"]] == [
            # The request and the digest of what the message shows: a click on an older message is refused.
            (APPROVE_ACTION_ID, f"{gate.id}:{gate.content_digest}", None),
            (REJECT_ACTION_ID, f"{gate.id}:{gate.content_digest}", None),
            ("hitl_open", None, "http://hitl.test/x"),
        ]
        assert footer["elements"] == [{"type": "mrkdwn", "text": "For &lt;@U1&gt;"}]

    def test_a_bare_gate_has_dashes_and_neither_buttons_nor_link(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(task_id=None, run_id=None, requested_by=None))
        blocks = approval_blocks(gate, headline="Decided", details_url=None, buttons=False)
        assert [b["type"] for b in blocks] == ["header", "section", "section"]
        assert [f["text"] for f in blocks[2]["fields"]] == [
            "*DAG*\nrelease",
            "*Task*\n-",
            "*Run*\n-",
            "*Requested by*\n(scheduler)",
            "*Approvals*\n0 of 1",
        ]

    def test_bound_values_are_shown_whole_and_escaped(self, sqlite_manager: ApprovalManager) -> None:
        sha = "a" * 64
        gate = sqlite_manager.create(spec(bound={"model": sha, "data": "<!here> *v1*"}))
        texts = [
            b["text"]["text"]
            for b in approval_blocks(gate, headline="h", details_url=None, buttons=True)
            if "text" in b
        ]
        [bound] = [t for t in texts if t.startswith("*Approving exactly:*")]
        assert bound.splitlines()[0] == f"*Approving exactly:* model = `{sha}`"
        # Values from the request are escaped: no link, mention or formatting of the approver's message.
        assert "<!here>" not in bound and "&lt;!here&gt;" in bound
        assert "*v1*" not in bound

    def test_a_gate_without_bind_has_no_bound_section(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec())
        blocks = approval_blocks(gate, headline="h", details_url=None, buttons=True)
        assert not [b for b in blocks if "Approving exactly" in str(b)]

    def test_the_link_alone_without_buttons(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec())
        [actions] = [
            b
            for b in approval_blocks(gate, headline="h", details_url="http://hitl.test/x", buttons=False)
            if b["type"] == "actions"
        ]
        assert [e["action_id"] for e in actions["elements"]] == ["hitl_open"]

    def test_long_text_is_cut_to_slacks_limits(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(context={"notes": "n" * 5000}))
        blocks = approval_blocks(gate, headline="h" * 200, details_url=None, buttons=False)
        header = blocks[0]["text"]["text"]
        assert (len(header), header[-1]) == (150, "…")
        context = blocks[-1]["text"]["text"]
        assert (len(context), context[-1]) == (2900, "…")


class TestOutcomeLine:
    def test_waiting_counts_the_approvals(self, sqlite_manager: ApprovalManager) -> None:
        gate = sqlite_manager.create(spec(allowed_approvers=("alice", "bob"), required_approvals=2))
        assert outcome_line(gate) == "Waiting: 0 of 2 approvals"
        assert outcome_line(sqlite_manager.approve(gate.id, user=ALICE)) == "Waiting: 1 of 2 approvals"
        decided = sqlite_manager.approve(gate.id, user=Principal.of("bob"))
        assert outcome_line(decided) == "Approved by alice, bob"

    def test_rejected_and_cancelled_quote_the_reason(self, sqlite_manager: ApprovalManager) -> None:
        rejected = sqlite_manager.reject(sqlite_manager.create(spec()).id, user=ALICE, reason="too risky")
        assert outcome_line(rejected) == "Rejected by alice: too risky"
        cancelled = sqlite_manager.cancel(sqlite_manager.create(spec()).id, actor="admin", reason="superseded")
        assert outcome_line(cancelled) == "Cancelled: superseded"

    @pytest.mark.parametrize(("action", "decision"), [("approve", "approved"), ("reject", "rejected")])
    def test_a_timeout_says_what_it_did(
        self, sqlite_manager: ApprovalManager, clock: Clock, action: str, decision: str
    ) -> None:
        manager = ApprovalManager(store=sqlite_manager.store, clock=clock)
        gate = manager.create(spec(timeout=dt.timedelta(minutes=5), timeout_action=action))
        clock.advance(minutes=6)
        timed_out = manager.apply_timeout(gate.id).approval
        assert outcome_line(timed_out) == f"Timed out: {decision} automatically"


# ---------------------------------------------------------------------------- webhook


@pytest.mark.usefixtures("notify_env")
class TestWebhook:
    def test_send_posts_compact_sorted_json_to_the_endpoint(self, webhook_receiver: WebhookReceiver) -> None:
        payload = {"b": 1, "a": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "c": dt.date(2026, 1, 2)}
        sent = HitlWebhookNotifier(endpoint="/hooks/hitl").send(payload, message_id="msg_fixed")
        [delivery] = webhook_receiver.deliveries
        assert delivery["path"] == "/hooks/hitl"
        assert delivery["raw"] == b'{"a":"2026-01-02T03:04:05+00:00","b":1,"c":"2026-01-02"}'
        assert delivery["headers"]["webhook-id"] == "msg_fixed"
        assert delivery["headers"]["Content-Type"] == "application/json"
        assert delivery["valid"]
        assert sent == {"message_id": "msg_fixed", "status_code": 200}

    def test_each_send_without_an_id_gets_its_own(self, webhook_receiver: WebhookReceiver) -> None:
        first = HitlWebhookNotifier().send({"n": 1})
        second = HitlWebhookNotifier().send({"n": 2})
        assert first["message_id"] != second["message_id"]
        assert [d["headers"]["webhook-id"] for d in webhook_receiver.deliveries] == [
            first["message_id"],
            second["message_id"],
        ]

    def test_a_refusing_receiver_is_a_delivery_error(self, webhook_receiver: WebhookReceiver) -> None:
        webhook_receiver.statuses[:] = [404]
        with pytest.raises(DeliveryError, match="webhook answered HTTP 404"):
            HitlWebhookNotifier().send({"n": 1})
        assert len(webhook_receiver.deliveries) == 1

    def test_an_unreachable_receiver_is_a_delivery_error(
        self, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        nowhere = json.loads(webhook_connection(webhook_receiver, password=WEBHOOK_SECRET))
        monkeypatch.setenv("AIRFLOW_CONN_HITL_WEBHOOK", json.dumps({**nowhere, "port": free_port()}))
        with pytest.raises(DeliveryError, match="webhook request failed"):
            HitlWebhookNotifier().send({"n": 1})
        assert webhook_receiver.deliveries == []

    def test_a_named_connection_is_used_instead_of_the_option(
        self, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_HITL_WEBHOOK")
        monkeypatch.setenv("AIRFLOW_CONN_OPS_HOOK", webhook_connection(webhook_receiver, password=WEBHOOK_SECRET))
        HitlWebhookNotifier(http_conn_id="ops_hook").send({"n": 1})
        assert [d["valid"] for d in webhook_receiver.deliveries] == [True]

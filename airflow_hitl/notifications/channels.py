"""Channel notifiers: email (SmtpHook), Slack (SlackHook), webhook and Microsoft Teams (HttpHook).

Each class is an Airflow notifier (``BaseNotifier``, templated fields, sync ``notify`` and
async ``async_notify``), usable on its own, e.g. ``on_failure_callback=HitlSlackNotifier(
channel="#ops", text="{{ ti.task_id }} failed")``. The dispatcher uses their ``send``/``post``
methods directly with messages it has rendered itself. Secrets come from the connections
(SMTP password, Slack token, webhook secret, Teams webhook URL), never from arguments or logs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.notifier import BaseNotifier

from airflow_hitl.notifications.signing import webhook_keys, webhook_signature

if TYPE_CHECKING:
    from adaptive_cards.card import AdaptiveCard
    from airflow.sdk import Context

    from airflow_hitl.records import Approval

# Standard Webhooks (https://www.standardwebhooks.com/) header names.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
APPROVE_ACTION_ID = "hitl_approve"
REJECT_ACTION_ID = "hitl_reject"
REJECT_MODAL_ID = "hitl_reject_reason"


class DeliveryError(RuntimeError):
    """A channel refused or could not take a message; the dispatcher retries it."""


# ---------------------------------------------------------------------------- email


class HitlEmailNotifier(BaseNotifier):
    """Send a multipart (plain text + HTML) email through ``SmtpHook``.

    :param to: One address or a list.
    :param subject: Subject (templated).
    :param text: Plain-text part (templated).
    :param html: HTML part (templated); omitted means a text-only email.
    :param smtp_conn_id: SMTP connection; default ``[hitl] notify_smtp_conn_id`` (``smtp_default``).
    :param from_email: Sender; default the connection's ``from_email`` extra, then ``[hitl] notify_from_email``.
    """

    template_fields: Sequence[str] = ("to", "subject", "text", "html", "smtp_conn_id", "from_email")

    def __init__(
        self,
        *,
        to: str | Sequence[str] | None = None,
        subject: str = "",
        text: str = "",
        html: str | None = None,
        smtp_conn_id: str | None = None,
        from_email: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to = to
        self.subject = subject
        self.text = text
        self.html = html
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    def notify(self, context: Context) -> None:
        """Send the (rendered) email."""
        if not self.to:
            raise DeliveryError("no recipient (`to`)")
        self.send(to=self.to, subject=self.subject, text=self.text, html=self.html)

    async def async_notify(self, context: Context) -> None:
        """Send without blocking the event loop (SMTP is a blocking protocol here)."""
        await asyncio.to_thread(self.notify, context)

    def send(
        self,
        *,
        to: str | Sequence[str],
        subject: str,
        text: str,
        html: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one message; return its Message-ID."""
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        from airflow_hitl.notifications.config import NotifySettings
        from airflow_hitl.seam.smtp import logged_in_client

        settings = NotifySettings.load()
        recipients = [to] if isinstance(to, str) else list(to)
        hook = SmtpHook(smtp_conn_id=self.smtp_conn_id or settings.smtp_conn_id)
        with hook as conn:
            sender = self.from_email or conn.from_email or settings.from_email or "airflow-hitl@localhost"
            msg = EmailMessage()
            msg["Subject"] = subject
            msg["From"] = sender
            msg["To"] = ", ".join(recipients)
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = make_msgid(domain="airflow-hitl")
            for key, value in (headers or {}).items():
                msg[key] = value
            msg.set_content(text)
            if html is not None:
                msg.add_alternative(html, subtype="html")
            # SmtpHook only builds HTML-only messages; we need text + HTML alternatives, so we
            # hand our own message to the client the hook logged in with.
            client = logged_in_client(conn)
            if client is None:
                raise DeliveryError("SMTP client did not connect")
            client.send_message(msg, from_addr=sender, to_addrs=recipients)
            return {"message_id": msg["Message-ID"]}


# ---------------------------------------------------------------------------- slack


_ZWJ = "\u200d"
# Characters that start formatting in Slack mrkdwn anywhere in a line ...
_SLACK_FORMATTING = re.compile(r"([*_~`])")
# ... and ``>`` (already ``&gt;`` here), which quotes a line it starts, after optional blanks.
_SLACK_QUOTE = re.compile(r"^([ \t]*)(&gt;)", re.MULTILINE)


def slack_escape(value: Any) -> str:
    """Make ``value`` inert text for Slack: no mention, no link, no formatting.

    The one escaping function for everything from a user or a DAG that reaches Slack, in
    every block and in the top-level ``text`` of ``chat.postMessage``, ``chat.update`` and
    ``chat.postEphemeral``. ``&``, ``<`` and ``>`` become entities, so ``<!channel>``,
    ``<@U123>`` and ``<https://x|text>`` arrive as text; a zero-width joiner on both sides of
    ``*``, ``_``, ``~`` and backticks, and before a ``>`` that starts a line, keeps them from
    being read as markup while they still show as typed.
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _SLACK_FORMATTING.sub(_ZWJ + r"\1" + _ZWJ, text)
    return _SLACK_QUOTE.sub(r"\1" + _ZWJ + r"\2", text)


def _slack_text(value: str, limit: int = 2900) -> str:
    # Block text fields are capped at 3000 characters by Slack.
    return value if len(value) <= limit else value[: limit - 1] + "…"


def button_value(approval: Approval) -> str:
    """An Approve / Reject button's value: ``<request id>:<content digest>``."""
    return f"{approval.id}:{approval.content_digest}"


def read_button_value(value: str) -> tuple[str, str | None]:
    """The request id and the digest of a button's value (None from a message sent before digests)."""
    request_id, _, digest = value.partition(":")
    return request_id, digest or None


def approval_blocks(
    approval: Approval,
    *,
    headline: str,
    details_url: str | None,
    buttons: bool,
    footer: str | None = None,
) -> list[dict[str, Any]]:
    """Block Kit for a gate: title, where, who, why, context fields, expiry, and the buttons.

    Every value from the request (and ``headline`` and ``footer``, which quote it) goes
    through :func:`slack_escape`; only our own labels are markup.
    """
    esc = slack_escape
    fields = [
        {"type": "mrkdwn", "text": f"*DAG*\n{esc(approval.dag_id)}"},
        {"type": "mrkdwn", "text": f"*Task*\n{esc(approval.task_id or '-')}"},
        {"type": "mrkdwn", "text": f"*Run*\n{esc(approval.run_id or '-')}"},
        {"type": "mrkdwn", "text": f"*Requested by*\n{esc(approval.requested_by or '(scheduler)')}"},
    ]
    if approval.expires_at:
        stamp = int(approval.expires_at.timestamp())
        fallback = approval.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        fields.append(
            {"type": "mrkdwn", "text": f"*Expires*\n<!date^{stamp}^{{date_short_pretty}} {{time}}|{fallback}>"}
        )
    fields.append({"type": "mrkdwn", "text": f"*Approvals*\n{len(approval.approvers)} of {approval.approvals_needed}"})
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _slack_text(esc(headline), 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_text(f"*{esc(approval.title)}*")}},
        {"type": "section", "fields": fields[:10]},
    ]
    if approval.reason:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack_text(f"*Reason:* {esc(approval.reason)}")}}
        )
    if approval.bound:
        # What the approver approves exactly (bind=): each value whole, as the pages and emails show it.
        lines = [f"*Approving exactly:* {esc(name)} = `{esc(value)}`" for name, value in approval.bound.items()]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_text("\n".join(lines))}})
    if approval.context:
        lines = []
        for key, value in approval.context.items():
            shown = json.dumps(value, default=str, sort_keys=True) if isinstance(value, (dict, list)) else value
            lines.append(f"• *{esc(key)}*: {esc(shown)}")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_text("\n".join(lines))}})
    if approval.inputs:
        # The form an approval asks for; Approve opens it as a modal when an input is required.
        lines = ["*Inputs to fill in when approving:*"]
        for name, spec in approval.inputs.items():
            default = json.dumps(spec.get("value"), default=str)
            note = " (required)" if spec.get("required") else f" (default: {esc(default)})"
            lines.append(f"• *{esc(name)}*{note}")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_text("\n".join(lines))}})
    elements: list[dict[str, Any]] = []
    if buttons:
        # The request and the digest of what this message shows (101 characters; Slack allows 2000):
        # a click on a message older than the request's last change records nothing.
        value = button_value(approval)
        elements += [
            {
                "type": "button",
                "action_id": APPROVE_ACTION_ID,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": value,
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION_ID,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Reject"},
                "value": value,
            },
        ]
    if details_url:
        elements.append(
            {
                "type": "button",
                "action_id": "hitl_open",
                "text": {"type": "plain_text", "text": "Open"},
                "url": details_url,
            }
        )
    if elements:
        blocks.append({"type": "actions", "block_id": f"hitl:{approval.id}", "elements": elements})
    if footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_text(esc(footer))}]})
    return blocks


def outcome_line(approval: Approval) -> str:
    """One line saying how a gate ended, for the updated Slack message."""
    if approval.is_waiting:
        return f"Waiting: {len(approval.approvers)} of {approval.approvals_needed} approvals"
    who = approval.decider or approval.decision_source or "airflow"
    if approval.state == "approved":
        return f"Approved by {', '.join(approval.approvers_shown()) or who}"
    if approval.state == "rejected":
        return f"Rejected by {who}: {approval.comment or ''}".rstrip(": ")
    if approval.state == "timeout":
        return f"Timed out: {approval.decision} automatically"
    return f"{approval.state.capitalize()}: {approval.comment or ''}".rstrip(": ")


class HitlSlackNotifier(BaseNotifier):
    """Post (or update) a Slack message through ``SlackHook`` (``chat.postMessage`` / ``chat.update``).

    :param channel: Channel name or id, or a member id for a direct message (templated).
    :param text: Message text, also the notification fallback (templated). Plain text: it is
        escaped before sending, so neither a DAG nor a user value in it can mention or link.
    :param blocks: Block Kit blocks (templated), sent as given.
    :param slack_conn_id: Slack API connection; default ``[hitl] notify_slack_conn_id``. Its
        ``base_url`` extra points the client elsewhere (a proxy, or a test stand-in).
    """

    template_fields: Sequence[str] = ("channel", "text", "blocks", "slack_conn_id")

    def __init__(
        self,
        *,
        channel: str | None = None,
        text: str = "",
        blocks: Sequence[Mapping[str, Any]] = (),
        slack_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channel = channel
        self.text = text
        self.blocks = list(blocks)
        self.slack_conn_id = slack_conn_id

    def _client(self) -> Any:
        from airflow.providers.slack.hooks.slack import SlackHook

        from airflow_hitl.notifications.config import NotifySettings

        return SlackHook(slack_conn_id=self.slack_conn_id or NotifySettings.load().slack_conn_id).client

    def notify(self, context: Context) -> None:
        """Post the (rendered) message."""
        if not self.channel:
            raise DeliveryError("no Slack channel")
        self.post(channel=self.channel, text=self.text, blocks=self.blocks)

    async def async_notify(self, context: Context) -> None:
        """Post without blocking the event loop."""
        await asyncio.to_thread(self.notify, context)

    def post(self, *, channel: str, text: str, blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``chat.postMessage``; return the message's ``channel`` and ``ts`` (needed to update it).

        ``text`` is plain text: it is escaped (:func:`slack_escape`), so it cannot mention or link.
        """
        response = self._client().chat_postMessage(channel=channel, text=slack_escape(text), blocks=list(blocks))
        return {"channel": response.get("channel", channel), "ts": response.get("ts")}

    def update(self, *, channel: str, ts: str, text: str, blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``chat.update`` of a message posted earlier; ``text`` is escaped as in :meth:`post`."""
        response = self._client().chat_update(channel=channel, ts=ts, text=slack_escape(text), blocks=list(blocks))
        return {"channel": response.get("channel", channel), "ts": response.get("ts", ts)}


# ---------------------------------------------------------------------------- webhook


class HitlWebhookNotifier(BaseNotifier):
    """POST a signed JSON payload through ``HttpHook``.

    Signed the Standard Webhooks way, so any receiver can verify it with the
    ``standardwebhooks`` library: ``webhook-id`` (unique, the same on retries),
    ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64>``, the
    HMAC-SHA256 of ``{id}.{timestamp}.{body}``, once per secret. The secrets are the
    connection's ``secret`` extra, else its password (not with a login: HttpHook would send it
    as Basic auth): ``whsec_<base64>`` or a plain string, several separated by spaces (or a
    JSON list) for key rotation (see :func:`~.signing.webhook_keys`). The secret itself is
    never sent (HttpHook turns other extras into request headers; not this one).

    :param payload: JSON-serialisable dict (templated).
    :param http_conn_id: HTTP connection (host = the receiver); default ``[hitl] notify_webhook_conn_id``.
    :param endpoint: Path appended to the connection's URL (templated).
    """

    template_fields: Sequence[str] = ("payload", "http_conn_id", "endpoint")

    def __init__(
        self,
        *,
        payload: Mapping[str, Any] | None = None,
        http_conn_id: str | None = None,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.payload = dict(payload or {})
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint

    def notify(self, context: Context) -> None:
        """Send the (rendered) payload."""
        self.send(self.payload)

    async def async_notify(self, context: Context) -> None:
        """Send without blocking the event loop."""
        await asyncio.to_thread(self.notify, context)

    def send(self, payload: Mapping[str, Any], *, message_id: str | None = None) -> dict[str, Any]:
        """POST ``payload`` once; raise :class:`DeliveryError` on a non-2xx answer or no secret."""
        from airflow_hitl.notifications.config import NotifySettings

        conn_id = self.http_conn_id or NotifySettings.load().webhook_conn_id
        hook = _webhook_hook_class()(method="POST", http_conn_id=conn_id)
        conn = hook.get_connection(conn_id)
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        secret = extra.get(WEBHOOK_SECRET_EXTRA) or conn.password
        if secret and secret == conn.password and conn.login:
            # HttpHook sends login and password as Basic auth: a signing secret must never travel.
            raise DeliveryError(
                f"connection {conn_id!r} has a login, so its password goes out as Basic auth and cannot "
                "be the webhook secret: put the secret in the `secret` extra"
            )
        if isinstance(secret, list):
            # A JSON extra may list the secrets instead of spacing them.
            secret = " ".join(str(item) for item in secret)
        if not secret or not str(secret).strip():
            # Receivers must be able to trust what we send: never send unsigned.
            raise DeliveryError(f"connection {conn_id!r} has no webhook secret (password or `secret` extra)")
        try:
            keys = webhook_keys(str(secret))
        except ValueError as err:
            raise DeliveryError(f"connection {conn_id!r}: {err}") from err
        message_id = message_id or str(uuid.uuid4())
        timestamp = str(int(time.time()))
        body = json.dumps(dict(payload), default=_json_default, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_ID_HEADER: message_id,
            WEBHOOK_TIMESTAMP_HEADER: timestamp,
            WEBHOOK_SIGNATURE_HEADER: webhook_signature(keys, message_id=message_id, timestamp=timestamp, body=body),
        }
        try:
            response = hook.run(
                endpoint=self.endpoint or "",
                data=body.decode(),
                headers=headers,
                extra_options={"timeout": float(extra.get("timeout", 10)), "check_response": False},
            )
        except Exception as err:
            raise DeliveryError(f"webhook request failed: {type(err).__name__}: {err}") from err
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook answered HTTP {response.status_code}")
        return {"message_id": message_id, "status_code": response.status_code}


WEBHOOK_SECRET_EXTRA = "secret"


def _webhook_hook_class() -> type:
    """``HttpHook`` that never sends the ``secret`` extra (it sends every unknown extra as a header)."""
    return _quiet_hook_class(WEBHOOK_SECRET_EXTRA)


@cache
def _quiet_hook_class(extra: str) -> type:
    """``HttpHook`` whose sessions never send the connection's ``extra`` (a secret) as a header.

    HttpHook turns every extra it does not know into a request header; a signing secret or a
    webhook URL (which holds its own signature) must not travel that way.
    """
    from airflow.providers.http.hooks.http import HttpHook

    class QuietHttpHook(HttpHook):
        """An ``HttpHook`` whose sessions carry no header of one extra."""

        def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Any:
            """The hook's session, minus the extra it copied into its headers."""
            session = super().get_conn(headers, extra_options)
            session.headers.pop(extra, None)
            return session

    return QuietHttpHook


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------- teams


#: The extra of a Teams connection that holds the whole webhook URL (else the host does).
TEAMS_URL_EXTRA = "webhook_url"


class HitlTeamsNotifier(BaseNotifier):
    """Post an Adaptive Card to Microsoft Teams through ``HttpHook``.

    The card goes to a Teams Workflows ("When a Teams webhook request is received") or
    incoming-webhook URL, as a ``message`` with one Adaptive Card attachment. The URL is the
    HTTP connection's: its ``webhook_url`` extra, else the host (a full ``https://...`` URL,
    or a host name with the schema and port beside it, as ``HttpHook`` composes them). The
    URL carries the webhook's signature (``sig=...``), so it is never logged or recorded: an
    error names the connection, not the URL.

    :param text: Plain text of the card (templated); escaped, so it cannot format, mention or link.
    :param title: Bold title above the text (templated), escaped the same way.
    :param card: An Adaptive Card (a dict, or an ``adaptive_cards`` card) sent as given instead.
    :param teams_conn_id: HTTP connection holding the webhook URL; default ``teams_default``.
    """

    template_fields: Sequence[str] = ("text", "title", "teams_conn_id")

    def __init__(
        self,
        *,
        text: str = "",
        title: str | None = None,
        card: AdaptiveCard | Mapping[str, Any] | None = None,
        teams_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.text = text
        self.title = title
        self.card = card
        self.teams_conn_id = teams_conn_id

    def notify(self, context: Context) -> None:
        """Post the (rendered) card."""
        from airflow_hitl.notifications.teams import text_card

        self.send(self.card if self.card is not None else text_card(self.text, title=self.title))

    async def async_notify(self, context: Context) -> None:
        """Post without blocking the event loop."""
        await asyncio.to_thread(self.notify, context)

    def send(self, card: AdaptiveCard | Mapping[str, Any]) -> dict[str, Any]:
        """POST ``card`` once; raise :class:`DeliveryError` on a non-2xx answer or a connection without a URL."""
        from requests import Request

        # Imported when a card is sent: building the card models costs a process a moment.
        from airflow_hitl.notifications.teams import DEFAULT_TEAMS_CONN_ID, teams_message

        conn_id = self.teams_conn_id or DEFAULT_TEAMS_CONN_ID
        hook = _quiet_hook_class(TEAMS_URL_EXTRA)(method="POST", http_conn_id=conn_id)
        conn = hook.get_connection(conn_id)
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        url = str(extra.get(TEAMS_URL_EXTRA) or "").strip() or (hook.url_from_endpoint(None) if conn.host else "")
        if not url:
            raise DeliveryError(
                f"connection {conn_id!r} holds no Teams webhook URL: put the full https URL in its host "
                f"or in its `{TEAMS_URL_EXTRA}` extra"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeliveryError(f"connection {conn_id!r}: its Teams webhook URL is not an https:// URL")
        # Teams reads the card as UTF-8 when told so (emoji, accents).
        session = hook.get_conn({"Content-Type": "application/json; charset=utf-8"})
        body = json.dumps(teams_message(card), separators=(",", ":"), ensure_ascii=False).encode()
        request = session.prepare_request(Request("POST", url, data=body))
        try:
            response = hook.run_and_check(
                session, request, {"timeout": float(extra.get("timeout", 10)), "check_response": False}
            )
        except Exception as err:
            hidden = _without_url(f"{type(err).__name__}: {err}", url, request.url or "")
            raise DeliveryError(f"Teams request of connection {conn_id!r} failed: {hidden}") from err
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"Teams answered HTTP {response.status_code} (connection {conn_id!r})")
        return {"status_code": response.status_code}


def _without_url(text: str, *urls: str) -> str:
    """``text`` without the path and query of ``urls``: a webhook URL's path and signature are its secret."""
    for url in urls:
        parts = urlsplit(url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        for piece in sorted({url, secret, parts.query}, key=len, reverse=True):
            if len(piece) > 1:
                text = text.replace(piece, "[hidden]")
    # Whatever form a library quoted it in, a signature never shows.
    return re.sub(r"(?i)(sig=)[^&\s'\"]+", r"\1[hidden]", text)

"""Jinja2 templates of notices and link pages, shipped in ``airflow_hitl/notifications/templates``.

Each event (``required``, ``reminder``, ``escalated``, ``timed_out``, ``decided``,
``cancelled``) has a one-line subject (``<event>.subject.j2``) and a plain-text body
(``<event>.txt.j2``); the HTML email wraps the body in ``email.html.j2``. A gate may
override any of them with ``notify_templates={"required": {"subject": ..., "text": ...,
"html": ...}}``. HTML is always autoescaped (values in ``context`` come from upstream tasks
and must never become markup); the sandbox keeps a template from reaching Python internals.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from airflow_hitl.records import Approval
from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import EVENTS, Action, OnReject, State

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_PARTS = ("subject", "text", "html")


def _value(value: Any) -> str:
    # Context values may be dicts or lists (metrics); show them as compact JSON, not repr.
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return "" if value is None else str(value)


@cache
def _env(html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True) if html else False,
        undefined=StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=False,
    )
    env.filters["hitl_value"] = _value
    return env


def html_env() -> SandboxedEnvironment:
    """The autoescaping environment used for every HTML page and email."""
    return _env(True)


def text_env() -> SandboxedEnvironment:
    """The environment of subjects and plain-text bodies (no escaping: they are not markup)."""
    return _env(False)


def humanize(delta: dt.timedelta) -> str:
    """``2 hours 5 minutes``-style text for a duration."""
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes = seconds // 60
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"))]
    shown = [p for p in parts if not p.startswith("0 ")][:2]
    return " ".join(shown) or "less than a minute"


def next_action(approval: Approval) -> str:
    """What the run does now, in words (for ``decided`` and ``timed_out``)."""
    if approval.is_waiting:
        return "keep waiting for approvers"
    if approval.approved:
        return "continue with the downstream tasks"
    if approval.state == State.CANCELLED:
        return "stop: the gate fails"
    return "skip the gate and its downstream tasks" if approval.on_reject == OnReject.SKIP else "stop: the gate fails"


def timeout_action_text(approval: Approval) -> str:
    """What happens at expiry, in words."""
    action = approval.timeout_action
    if action == Action.ESCALATE:
        remaining = len(approval.escalation_targets) - approval.escalation_level
        if remaining > 0:
            return "escalate to the next approvers"
        action = approval.escalation_final_action
    said: dict[str, str] = {Action.APPROVE: "be approved automatically", Action.REJECT: "be rejected"}
    return said.get(action or "", "wait")


@dataclass(frozen=True, kw_only=True)
class RenderedMessage:
    """A notice rendered for one recipient: subject, plain text and (for email) HTML."""

    subject: str
    text: str
    html: str | None = None


def template_context(
    approval: Approval,
    *,
    event: str,
    recipient: str,
    links: Mapping[str, str | None],
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Variables every template sees."""
    now = now or utcnow()
    action_taken = ""
    if approval.state == State.TIMEOUT:
        action_taken = f"{approval.decision} automatically (timeout_action)"
    return {
        "approval": approval,
        "event": event,
        "recipient": recipient,
        "links": dict(links),
        "expires_in": humanize(approval.expires_at - now) if approval.expires_at else "",
        "timeout_action": timeout_action_text(approval),
        "next_action": next_action(approval),
        "action_taken": action_taken,
        # A request opened over the REST API is no task's gate; notices must say so.
        "opened_over_api": approval.opened_over_api,
    }


def render(
    event: str,
    context: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    html: bool = False,
) -> RenderedMessage:
    """Render the subject, text and optionally HTML of ``event``, honouring per-gate overrides."""
    custom = dict((overrides or {}).get(event) or {})
    text_tpl = text_env()

    def pick(part: str, default_name: str, env: SandboxedEnvironment) -> str:
        source = custom.get(part)
        template = env.from_string(source) if isinstance(source, str) else env.get_template(default_name)
        return template.render(**context)

    subject = " ".join(pick("subject", f"{event}.subject.j2", text_tpl).split())
    text = pick("text", f"{event}.txt.j2", text_tpl).strip() + "\n"
    body_html = None
    if html:
        env = html_env()
        source = custom.get("html")
        template = env.from_string(source) if isinstance(source, str) else env.get_template("email.html.j2")
        body_html = template.render(**context, subject=subject, summary=text)
    return RenderedMessage(subject=subject, text=text, html=body_html)


def validate_overrides(value: Any) -> str | None:
    """Why ``notify_templates`` is wrong (None when it is fine); templates must also compile."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "must be a dict of event -> {subject, text, html}"
    for event, parts in value.items():
        if event not in EVENTS:
            return f"unknown event {event!r}; events are {list(EVENTS)}"
        if not isinstance(parts, Mapping) or not parts:
            return f"{event!r} must be a dict with any of {list(TEMPLATE_PARTS)}"
        for part, source in parts.items():
            if part not in TEMPLATE_PARTS:
                return f"{event!r} has unknown part {part!r}; parts are {list(TEMPLATE_PARTS)}"
            if not isinstance(source, str):
                return f"{event}.{part} must be a template string"
            try:
                (html_env() if part == "html" else text_env()).parse(source)
            except Exception as err:
                return f"{event}.{part} is not a valid Jinja2 template: {err}"
    return None

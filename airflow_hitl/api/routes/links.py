"""``/links?token=...``: the signed approve / reject / details links sent by email.

A link is the recipient's credential for one action on one request (see
:mod:`airflow_hitl.notifications.signing`), so these routes need no Airflow login. GET only
ever shows a page (mail scanners and link previews fetch links; a GET must never decide);
POST decides through :class:`~airflow_hitl.manager.ApprovalManager` with source ``email``,
as the recipient, under exactly the request's policy, and uses the link up.

The token is a bearer credential, so it is kept out of the URL path, which access logs
record verbatim. The emailed link carries it as the ``token`` query parameter, whose value
Airflow's api-server access log redacts (``token`` is a secret-looking key to its secrets
masker; a tampered or extra ``token`` is redacted all the same), and the confirmation page
POSTs it in the form body to ``/links``, so the deciding request has no token in its URL at
all. We never log a token ourselves, genuine or not. Where uvicorn's own access log is
switched on (Airflow 3.3 turns it off for its own middleware), :class:`LinkTokenRedactor`,
installed by the app factory, blanks the ``token`` of ``/links?`` URLs in its records too.
(A fragment, ``#token``, would keep it from the server entirely but needs script on the
page, and the page must work in any mail client's browser.)

Answers: a tampered or foreign link 403, an expired or used one 410, a request that is no
longer pending 409; each as an HTML page that says so. Every value on a page is escaped.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from airflow_hitl.api.deps import get_manager
from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalNotFound,
    ApprovalNotPending,
    ContentChanged,
    HitlError,
    InvalidInput,
    LinkAlreadyUsed,
    NotAllowed,
)
from airflow_hitl.limits import json_loads
from airflow_hitl.manager import ApprovalManager, Decision, LinkUse, utcnow
from airflow_hitl.notifications.access import decider, delegator_refusal
from airflow_hitl.notifications.dispatcher import details_url
from airflow_hitl.notifications.recipients import UserDirectory
from airflow_hitl.notifications.signing import LINK_ACTIONS, InvalidToken, LinkClaims, SigningKeyMissing, read_token
from airflow_hitl.notifications.templates import html_env
from airflow_hitl.records import Approval, Notification
from airflow_hitl.settings import HitlSettings, conf_getint
from airflow_hitl.vocabulary import Action, Source

log = logging.getLogger(__name__)

router = APIRouter(prefix="/links", tags=["email links"], include_in_schema=False)

MAX_FORM_BYTES = 64 * 1024
_HEADERS = {
    # The token is in the URL: keep it out of caches and out of Referer headers.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


ACCESS_LOGGER = "uvicorn.access"
_TOKEN_VALUE = re.compile(r"(?<=[?&])token=[^&\s\"#]*")


def _redact_links(value: object) -> object:
    if isinstance(value, str) and "/links?" in value:
        return _TOKEN_VALUE.sub("token=***", value)
    return value


class LinkTokenRedactor(logging.Filter):
    """Blank the ``token`` of our ``/links?`` URLs in uvicorn's access log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message and arguments in place; never drop it."""
        record.msg = _redact_links(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_links(arg) for arg in record.args)
        return True


def redact_tokens_in_access_logs() -> None:
    """Install :class:`LinkTokenRedactor` on uvicorn's access logger (once per process)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, LinkTokenRedactor) for f in logger.filters):
        logger.addFilter(LinkTokenRedactor())


class LinkRefused(Exception):
    """The link cannot be used; ``status`` and ``message`` make the page."""

    def __init__(self, status: int, heading: str, message: str, approval: Approval | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.heading = heading
        self.message = message
        self.approval = approval


@dataclass(frozen=True, kw_only=True)
class CheckedLink:
    """A genuine, current link with its request and the notice that carried it."""

    token: str
    claims: LinkClaims
    approval: Approval
    notification: Notification


def _page(template: str, status: int, **values: Any) -> HTMLResponse:
    values.setdefault("details_url", None)
    html = html_env().get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _refusal(err: LinkRefused) -> HTMLResponse:
    url = details_url(HitlSettings.load().base_url, err.approval) if err.approval else None
    return _page("page_result.html.j2", err.status, heading=err.heading, message=err.message, details_url=url)


def _token_of(values: list[str]) -> str:
    # One spelling only: a second ``token`` field is not a choice we make for the sender.
    if len(values) != 1:
        raise LinkRefused(403, "Invalid link", "This link is not valid: it was altered or is incomplete.")
    return values[0]


def _check(manager: ApprovalManager, token: str) -> CheckedLink:
    try:
        claims = read_token(token)
    except InvalidToken as err:
        log.warning("refused an email link: %s", err)
        raise LinkRefused(403, "Invalid link", "This link is not valid: it was altered or is incomplete.") from err
    except SigningKeyMissing as err:
        log.error("email links cannot be checked: %s", err)
        raise LinkRefused(503, "Links unavailable", "Email links are not configured on this server.") from err
    if claims.action not in LINK_ACTIONS:
        raise LinkRefused(403, "Invalid link", "This link is not valid.")
    try:
        approval = manager.queries.get(claims.request_id)
        notification = manager.notices.get_notification(claims.notification_id)
    except (ApprovalNotFound, InvalidInput) as err:
        raise LinkRefused(404, "Not found", "This approval request no longer exists.") from err
    if (
        notification.request_id != approval.id
        or notification.recipient != claims.recipient
        or notification.channel != "email"
    ):
        # Genuinely signed but stitched together from another notice: treat as forged.
        raise LinkRefused(403, "Invalid link", "This link is not valid.", approval)
    if claims.action == "details":
        return CheckedLink(token=token, claims=claims, approval=approval, notification=notification)
    if notification.metadata.get("link_used"):
        raise LinkRefused(410, "Link already used", "This link has already been used; links work once.", approval)
    now = utcnow()
    if now.timestamp() >= claims.expires_at or (approval.expires_at is not None and now >= approval.expires_at):
        raise LinkRefused(410, "Link expired", "This link has expired together with its approval request.", approval)
    if not approval.is_waiting:
        who = approval.decided_by or approval.decision_source or "airflow"
        raise LinkRefused(
            409, "Already decided", f"This request is no longer pending: it is {approval.state} ({who}).", approval
        )
    return CheckedLink(token=token, claims=claims, approval=approval, notification=notification)


def _input_kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    return "enum" if isinstance(schema.get("enum"), list) else str(kind or "json")


def form_fields(
    approval: Approval, given: dict[str, str] | None = None, errors: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The request's form inputs as the confirmation page shows them (no script: plain HTML fields).

    ``given`` holds what the recipient typed (re-shown after a refusal), ``errors`` each field's problem.
    """
    fields = []
    for name, spec in approval.inputs.items():
        schema = spec.get("schema") or {}
        kind = _input_kind(schema)
        default = spec.get("value")
        if given is not None:
            value = given.get(name, "")
        elif kind == "enum":
            value = str(schema["enum"].index(default)) if default in schema["enum"] else ""
        elif default is None:
            value = ""
        else:
            value = default if kind == "string" else json.dumps(default)
        fields.append(
            {
                "name": name,
                "kind": kind,
                "required": bool(spec.get("required")),
                "description": spec.get("description"),
                "minimum": schema.get("minimum"),
                "maximum": schema.get("maximum"),
                "options": [(str(i), str(choice)) for i, choice in enumerate(schema.get("enum") or [])],
                "value": value,
                "error": (errors or {}).get(name),
            }
        )
    return fields


def _posted_inputs(approval: Approval, form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values posted in ``input.<name>`` fields; an empty field is left out (its default applies)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, spec in approval.inputs.items():
        raw = form.get(f"input.{name}", "").strip()
        if raw == "":
            continue
        schema = spec.get("schema") or {}
        kind = _input_kind(schema)
        try:
            if kind == "enum":
                # The option's index as form_fields wrote it: plain digits only (int() reads "-1", "٣").
                if not (raw.isascii() and raw.isdigit()):
                    raise ValueError(raw)
                values[name] = schema["enum"][int(raw)]
            elif kind == "string":
                values[name] = form[f"input.{name}"]
            else:
                # Numbers, true/false and JSON alike; nested as deep as the REST API allows at most.
                values[name] = json_loads(raw, max_depth=conf_getint("max_json_depth"))
        except (ValueError, IndexError):
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            errors[name] = f"{shown!r} is not a valid value"
    return values, errors


def _confirm_page(
    link: CheckedLink,
    status: int = 200,
    message: str | None = None,
    *,
    given: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    action = link.claims.action
    heading = {"approve": "Approve this request?", "reject": "Reject this request?"}.get(action, "Approval request")
    return _page(
        "page_confirm.html.j2",
        status,
        heading=message or heading,
        approval=link.approval,
        action=action if link.approval.is_waiting else "details",
        recipient=link.claims.recipient,
        # Relative to the page (``.../links?token=``): ``links`` is this router's POST at any mount point.
        post_url="links",
        token=link.token,
        details_url=details_url(HitlSettings.load().base_url, link.approval),
        # The form goes with an approval; a rejection needs none of it.
        inputs=form_fields(link.approval, given, errors) if action == "approve" else [],
    )


@router.get("", response_class=HTMLResponse)
def show_link(request: Request) -> HTMLResponse:
    """Show the request and a confirmation form (``?token=``). Never changes anything."""
    manager = get_manager(request)
    try:
        link = _check(manager, _token_of(request.query_params.getlist("token")))
    except LinkRefused as err:
        return _refusal(err)
    return _confirm_page(link)


@router.post("", response_class=HTMLResponse)
async def use_link(request: Request) -> HTMLResponse:
    """Decide as the link's recipient (source ``email``), token in the form body; the link is used up."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _page("page_result.html.j2", 413, heading="Too large", message="The form is too large.")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    client = {
        "client_address": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
    }
    manager = get_manager(request)
    return await run_in_threadpool(_decide, manager, fields, client)


def _not_recorded(err: HitlError, link: CheckedLink, form: dict[str, str]) -> HTMLResponse:
    """The page for a decision the manager refused; only a used-up link is spent."""
    if isinstance(err, LinkAlreadyUsed):
        return _refusal(LinkRefused(410, "Link already used", "This link has already been used; links work once."))
    if isinstance(err, (ApprovalNotPending, AlreadyVoted)):
        return _refusal(LinkRefused(409, "Not recorded", str(err), link.approval))
    if isinstance(err, NotAllowed):
        return _refusal(LinkRefused(403, "Not allowed", err.reason, link.approval))
    if not isinstance(err, InvalidInput):
        raise err
    if any(not field.startswith("inputs.") for field, _ in err.problems):
        # A comment or reason the store cannot keep (NUL): the link stays usable.
        return _confirm_page(link, 422, str(err))
    # Refused values leave the link usable: the page comes back with each field's problem.
    problems = {field.removeprefix("inputs."): message for field, message in err.problems}
    given = {name: form.get(f"input.{name}", "") for name in link.approval.inputs}
    return _confirm_page(link, 422, "Some inputs are not valid", given=given, errors=problems)


def _changed(manager: ApprovalManager, link: CheckedLink, form: dict[str, str]) -> HTMLResponse:
    """The request changed since its page was shown: shown again as it is now, with its own digest.

    Nothing was recorded and the link is not used up: the recipient reviews it and confirms again.
    """
    try:
        fresh = _check(manager, link.token)
    except LinkRefused as err:
        return _refusal(err)
    given = {name: form.get(f"input.{name}", "") for name in fresh.approval.inputs}
    heading = "This request changed since you opened it: review it and confirm again"
    return _confirm_page(fresh, 409, heading, given=given if fresh.claims.action == "approve" else None)


def _decide(manager: ApprovalManager, fields: dict[str, list[str]], client: dict[str, Any]) -> HTMLResponse:
    form = {k: v[0] for k, v in fields.items()}
    try:
        link = _check(manager, _token_of(fields.get("token", [])))
    except LinkRefused as err:
        return _refusal(err)
    claims = link.claims
    if claims.action == "details":
        return _page("page_result.html.j2", 405, heading="Nothing to decide", message="This link only shows details.")
    limit = HitlSettings.load().max_comment_length
    reason = (form.get("reason") or "").strip()
    comment = (form.get("comment") or "").strip() or None
    if claims.action == "reject" and not reason:
        return _confirm_page(link, 422, "A reason is required to reject")
    if len(reason) > limit or len(comment or "") > limit:
        return _confirm_page(link, 422, f"Comments are limited to {limit} characters")
    inputs: dict[str, Any] | None = None
    if claims.action == "approve" and link.approval.inputs:
        given = {name: form.get(f"input.{name}", "") for name in link.approval.inputs}
        inputs, unreadable = _posted_inputs(link.approval, form)
        if unreadable:
            return _confirm_page(link, 422, "Some inputs are not valid", given=given, errors=unreadable)
    directory = UserDirectory(use_auth_manager=True)
    user, refusal = decider(claims.recipient, link.approval.dag_id, extra_roles=directory.roles_of(claims.recipient))
    if user is None:
        return _refusal(LinkRefused(403, "Not allowed", refusal or "You may not decide this request."))
    eligibility = manager.queries.can_approve(user, link.approval, action=claims.action)
    if not eligibility.allowed:
        # Having voted already is a conflict (409), as on every other channel; the rest is 403.
        status, heading = (409, "Not recorded") if eligibility.code == "already_voted" else (403, "Not allowed")
        return _refusal(LinkRefused(status, heading, eligibility.reason or "You may not decide this request."))
    decision = Decision(
        action=Action(claims.action),
        user=user,
        source=Source.EMAIL,
        comment=comment,
        reason=reason or None,
        client={**client, "via": "email_link", "notification_id": claims.notification_id},
        # Used up in the vote's own transaction: a vote that is refused leaves the link usable.
        link=LinkUse(notification_id=claims.notification_id, recipient=claims.recipient),
        # Should a delegation ever decide through a link, the delegator's access is asked too.
        delegator_access=delegator_refusal,
        inputs=inputs,
        # The digest of the request as the confirmation page showed it (none from an older page).
        content_digest=form.get("content_digest") or None,
    )
    try:
        approval = manager.decide(claims.request_id, decision)
    except ContentChanged:
        return _changed(manager, link, form)
    except HitlError as err:
        return _not_recorded(err, link, form)
    verb = "approved" if claims.action == "approve" else "rejected"
    if approval.is_waiting:
        message = (
            f"Your approval is recorded, {claims.recipient}: {len(approval.approvers)} of "
            f"{approval.approvals_needed} approvals so far."
        )
    else:
        message = f"You {verb} “{approval.title}”. The request is now {approval.state}."
    log.info("approval request %s: %s by %s through an email link", approval.id, claims.action, claims.recipient)
    return _page(
        "page_result.html.j2",
        200,
        heading="Thank you",
        message=message,
        details_url=details_url(HitlSettings.load().base_url, approval),
    )

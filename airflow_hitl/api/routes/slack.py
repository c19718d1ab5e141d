"""``POST /slack/interactions``: Approve / Reject buttons and the reject-reason modal from Slack.

Every request is verified first (``X-Slack-Signature``: v0 HMAC-SHA256 of
``v0:{timestamp}:{body}`` with the app's signing secret, compared in constant time;
timestamps more than five minutes off are refused as replays); a refused request changes
nothing and gets 401. The Slack user is mapped to an Airflow user (``[hitl] slack_users``,
else Slack's ``users.info`` email matched against ``[hitl] user_emails`` or the auth
manager's users), the request's own policy is applied exactly as for the REST API, the vote
is recorded with source ``slack``, and the original message is updated to show who decided.
Reject opens a modal asking for the reason (``views.open``); its ``view_submission`` rejects.
Approve on a request whose form has required inputs opens a modal with one input block per
form input instead; its ``view_submission`` approves with the values, and refused values come
back into the modal next to their field (``response_action: errors``).

Slack expects an answer within three seconds and shows nothing for non-200 answers to
clicks, so refusals after verification are told to the clicker as an ephemeral message.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from airflow_hitl.api.deps import get_manager
from airflow_hitl.canonical import digest_problem
from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalNotPending,
    ContentChanged,
    HitlError,
    InvalidInput,
    NotAllowed,
)
from airflow_hitl.forms import required_names
from airflow_hitl.identity import roles_of
from airflow_hitl.limits import json_loads
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.notifications.access import decider, delegator_refusal
from airflow_hitl.notifications.channels import (
    APPROVE_ACTION_ID,
    REJECT_ACTION_ID,
    REJECT_MODAL_ID,
    approval_blocks,
    outcome_line,
    read_button_value,
    slack_escape,
)
from airflow_hitl.notifications.config import NotifySettings, conf_get
from airflow_hitl.notifications.dispatcher import details_url
from airflow_hitl.notifications.recipients import UserDirectory
from airflow_hitl.notifications.signing import verify_slack_request
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from airflow_hitl.settings import HitlSettings, conf_getint
from airflow_hitl.vocabulary import DecisionActionWord, Source

log = logging.getLogger(__name__)

router = APIRouter(prefix="/slack", tags=["slack"], include_in_schema=False)

MAX_BODY_BYTES = 256 * 1024

#: ``callback_id`` of the modal asking for a request's form inputs before approving.
APPROVE_MODAL_ID = "hitl_approve_inputs"
#: Slack keys an input block's errors by its ``block_id``: ``input:<name>``.
INPUT_BLOCK_PREFIX = "input:"


def signing_secret(settings: NotifySettings) -> bytes | None:
    """Slack's signing secret: ``[hitl] slack_signing_secret``, else the Slack connection's ``signing_secret`` extra."""
    configured = conf_get("slack_signing_secret")
    if configured:
        return configured.encode()
    from airflow_hitl.models.store import find_connection

    try:
        conn = find_connection(settings.slack_conn_id)
    except Exception:
        conn = None
    extra = conn.extra_dejson if conn is not None and hasattr(conn, "extra_dejson") else {}
    secret = extra.get("signing_secret")
    return str(secret).encode() if secret else None


def _slack_client(approval: Approval | None, settings: NotifySettings) -> Any:
    from airflow.providers.slack.hooks.slack import SlackHook

    conn_id = (approval.notify.get("slack_conn_id") if approval else None) or settings.slack_conn_id
    return SlackHook(slack_conn_id=conn_id).client


def _obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one.

    A verified payload of an unexpected shape (a Slack that changed, a replay edited before
    signing) reads as one that lacks the field: answered, never a 500.
    """
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


@router.post("/interactions")
async def interactions(request: Request) -> Response:
    """Verify a Slack interaction, then act on it (button click or modal submission)."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return JSONResponse({"detail": "payload too large"}, status_code=413)
    settings = NotifySettings.load()
    secret = await run_in_threadpool(signing_secret, settings)
    if secret is None:
        log.error("Slack interaction refused: no signing secret configured ([hitl] slack_signing_secret)")
        return JSONResponse({"detail": "Slack signing secret is not configured"}, status_code=503)
    refusal = verify_slack_request(
        secret,
        timestamp=request.headers.get("X-Slack-Request-Timestamp"),
        signature=request.headers.get("X-Slack-Signature"),
        body=body,
    )
    if refusal:
        log.warning("Slack interaction refused: %s", refusal)
        return JSONResponse({"detail": refusal}, status_code=401)
    try:
        # Verified, but still text from outside: thousands of nested "[" are no payload, not a 500.
        payload = json_loads(parse_qs(body.decode())["payload"][0])
    except (KeyError, IndexError, ValueError, TypeError):
        payload = None
    if not isinstance(payload, dict) or "type" not in payload:
        return JSONResponse({"detail": "not a Slack interaction payload"}, status_code=400)
    kind = payload["type"]
    callback_id = _obj(payload.get("view")).get("callback_id")
    manager = get_manager(request)
    handler = SlackInteraction(manager=manager, settings=settings, payload=payload)
    if kind == "block_actions":
        return await run_in_threadpool(handler.block_action)
    if kind == "view_submission" and callback_id == REJECT_MODAL_ID:
        return await run_in_threadpool(handler.reject_submission)
    if kind == "view_submission" and callback_id == APPROVE_MODAL_ID:
        return await run_in_threadpool(handler.approve_submission)
    return Response(status_code=200)


class SlackInteraction:
    """One verified interaction payload and what to do with it."""

    def __init__(self, *, manager: ApprovalManager, settings: NotifySettings, payload: dict[str, Any]) -> None:
        self.manager = manager
        self.settings = settings
        self.payload = payload
        self.directory = UserDirectory(settings=settings)
        self.slack_user = _text(_obj(payload.get("user")).get("id")) or ""

    # ------------------------------------------------------------------ helpers

    def _airflow_user(self, client: Any) -> str | None:
        known = self.directory.user_for_slack_id(self.slack_user)
        if known:
            return known
        try:
            info = client.users_info(user=self.slack_user)
            address = _text(_obj(_obj(info.get("user")).get("profile")).get("email"))
        except Exception as err:
            log.warning("Slack users.info for %s failed: %s", self.slack_user, err)
            return None
        return self.directory.user_for_email(address) if address else None

    def _principal(self, name: str, dag_id: str) -> tuple[Principal | None, str | None]:
        # The same questions the REST API asks: edit access to the DAG (auth manager), then the policy.
        return decider(name, dag_id, extra_roles=self.directory.roles_of(name))

    def _tell(self, client: Any, channel: str | None, text: str) -> Response:
        # Clicks cannot be answered in the HTTP response; an ephemeral message reaches the clicker only.
        if channel:
            try:
                # Refusals quote user names, states and reasons: escaped like everything we send.
                client.chat_postEphemeral(channel=channel, user=self.slack_user, text=slack_escape(text))
            except Exception as err:
                log.warning("could not tell Slack user %s: %s", self.slack_user, err)
        return Response(status_code=200)

    def _update_message(self, client: Any, approval: Approval, channel: str | None, ts: str | None) -> None:
        if not channel or not ts:
            return
        base = HitlSettings.load().base_url
        blocks = approval_blocks(
            approval,
            headline=("Approval required" if approval.is_waiting else outcome_line(approval))[:150],
            details_url=details_url(base, approval),
            buttons=approval.is_waiting,
            footer=outcome_line(approval),
        )
        try:
            client.chat_update(channel=channel, ts=ts, text=slack_escape(outcome_line(approval)), blocks=blocks)
            status = "sent"
            error = None
        except Exception as err:
            status, error = "failed", f"{type(err).__name__}: {err}"
            log.warning("chat.update for approval request %s failed: %s", approval.id, err)
        row = self.manager.notices.record_notification(
            request_id=approval.id,
            channel="slack",
            recipient=channel,
            event_type="decided" if not approval.is_waiting else "reminder",
            subject=outcome_line(approval),
            metadata={"channel": channel, "ts": ts, "update": True, "via": "interaction"},
        )
        if status == "sent":
            self.manager.notices.mark_notification_sent(row.id)
        else:
            self.manager.notices.mark_notification_failed(row.id, error=error or "failed")

    # ------------------------------------------------------------------ block_actions

    def block_action(self) -> Response:
        """Approve at once, or open the reason modal for Reject; refusals go to the clicker."""
        actions = self.payload.get("actions")
        action = _obj(actions[0]) if isinstance(actions, list) and actions else {}
        action_id = action.get("action_id")
        if action_id not in (APPROVE_ACTION_ID, REJECT_ACTION_ID):
            return Response(status_code=200)
        container = _obj(self.payload.get("container"))
        channel = _text(container.get("channel_id")) or _text(_obj(self.payload.get("channel")).get("id"))
        ts = _text(container.get("message_ts")) or _text(_obj(self.payload.get("message")).get("ts"))
        # ``<request id>:<digest of what the message showed>``; a message sent before digests has the id alone.
        request_id, digest = read_button_value(_text(action.get("value")) or "")
        try:
            approval = self.manager.queries.get(request_id)
        except (ApprovalNotFound, HitlError):
            return self._tell(_slack_client(None, self.settings), channel, "This approval request no longer exists.")
        client = _slack_client(approval, self.settings)
        name = self._airflow_user(client)
        if name is None:
            return self._tell(client, channel, "Your Slack account is not linked to an Airflow user.")
        user, refusal = self._principal(name, approval.dag_id)
        if user is None:
            return self._tell(client, channel, f"Not recorded: {refusal}")
        vote = "approve" if action_id == APPROVE_ACTION_ID else "reject"
        own = self.manager.queries.can_approve(user, approval, action=vote)
        # Or as a delegate: a click may cast the vote of someone who delegated to this user.
        delegations = self.manager.delegations.delegations_to(user.name) if not own.allowed else []
        eligibility = self.manager.delegations.can_decide(
            user, approval, own, delegations, roles_of=roles_of, action=vote, access=delegator_refusal
        )
        # Four eyes across a run: a delegator who voted on a gate this one names may not vote here either.
        eligibility = self.manager.queries.apart(approval, user.name, eligibility)
        if not eligibility.allowed:
            log.info(
                "Slack %s on %s by %s (%s) refused: %s", vote, approval.id, name, self.slack_user, eligibility.reason
            )
            return self._tell(client, channel, f"Not recorded: {eligibility.reason}")
        if digest is not None and (problem := digest_problem(digest)):
            return self._tell(client, channel, f"Not recorded: invalid content_digest: {problem}")
        if digest is not None and digest.lower() != approval.content_digest:
            # Said before a modal asks for anything; the manager checks again under the lock.
            return self._changed(client, approval, channel, ts)
        if vote == "reject" or required_names(approval.inputs):
            # A reason to reject, or the form's required inputs to approve: asked in a modal.
            if vote == "reject":
                view, form = reject_modal(approval, channel=channel, ts=ts, digest=digest), "rejection form"
            else:
                view, form = inputs_modal(approval, channel=channel, ts=ts, digest=digest), "approval form"
            try:
                client.views_open(trigger_id=self.payload.get("trigger_id"), view=view)
            except Exception as err:
                log.warning("views.open failed: %s", err)
                return self._tell(client, channel, f"Could not open the {form}; decide in Airflow instead.")
            return Response(status_code=200)
        try:
            decided = self.manager.decide(approval.id, self._decision(user, "approve", digest=digest))
        except ContentChanged:
            return self._changed(client, self.manager.queries.get(approval.id), channel, ts)
        except (ApprovalNotPending, AlreadyVoted, ApprovalConflict) as err:
            return self._tell(client, channel, f"Not recorded: {err}")
        except NotAllowed as err:
            return self._tell(client, channel, f"Not recorded: {err.reason}")
        self._update_message(client, decided, channel, ts)
        return Response(status_code=200)

    def _changed(self, client: Any, approval: Approval, channel: str | None, ts: str | None) -> Response:
        """The message is older than the request's last change: show it as it is now, and say so."""
        self._update_message(client, approval, channel, ts)
        return self._tell(
            client,
            channel,
            "Not recorded: the request changed since you opened it. The message now shows it as it is: "
            "review it and decide again.",
        )

    def _show_as_it_is(self, client: Any, request_id: str, meta: dict[str, Any]) -> None:
        """The modal's message, updated to the request as it is now (it changed since it was sent)."""
        self._update_message(
            client, self.manager.queries.get(request_id), _text(meta.get("channel")), _text(meta.get("ts"))
        )

    def _decision(
        self,
        user: Principal,
        action: DecisionActionWord,
        *,
        reason: str | None = None,
        inputs: dict[str, Any] | None = None,
        digest: str | None = None,
    ) -> Decision:
        return Decision(
            action=action,
            user=user,
            source=Source.SLACK,
            reason=reason,
            client={"via": "slack", "slack_user_id": self.slack_user},
            # A delegate's click may cast a delegator's vote: the policy sees the delegator's roles,
            # and the delegator must still have edit access to the DAG (asked under the row lock).
            delegator_roles=roles_of,
            delegator_access=delegator_refusal,
            inputs=inputs,
            # What the clicked message showed (carried through a modal's private_metadata).
            content_digest=digest,
        )

    # ------------------------------------------------------------------ view_submission

    def _submitted_view(self) -> tuple[dict[str, Any], dict[str, Any], str] | None:
        """The submitted modal, its ``private_metadata`` and the request it is about (None: not ours)."""
        view = _obj(self.payload.get("view"))
        try:
            meta = json_loads(view.get("private_metadata") or "{}")
        except (ValueError, TypeError):
            return None
        request_id = _text(_obj(meta).get("request_id"))
        return (view, meta, request_id) if request_id else None

    def approve_submission(self) -> Response:
        """Approve with the form inputs typed into the modal; refused values go back into it."""
        submitted = self._submitted_view()
        if submitted is None:
            return Response(status_code=200)
        view, meta, request_id = submitted
        try:
            approval = self.manager.queries.get(request_id)
        except HitlError:
            return Response(status_code=200)
        first_block = next((INPUT_BLOCK_PREFIX + name for name in approval.inputs), "")

        def errors(found: dict[str, str]) -> JSONResponse:
            return JSONResponse({"response_action": "errors", "errors": {k: v[:150] for k, v in found.items()}})

        inputs, unreadable = submitted_inputs(approval, _obj(_obj(view.get("state")).get("values")))
        if unreadable:
            return errors(unreadable)
        client = _slack_client(approval, self.settings)
        name = self._airflow_user(client)
        if name is None:
            return errors({first_block: "Your Slack account is not linked to an Airflow user."})
        user, refusal = self._principal(name, approval.dag_id)
        if user is None:
            return errors({first_block: f"Not recorded: {refusal}"})
        digest = _text(meta.get("content_digest"))
        try:
            decided = self.manager.decide(request_id, self._decision(user, "approve", inputs=inputs, digest=digest))
        except ContentChanged as err:
            self._show_as_it_is(client, request_id, meta)
            return errors({first_block: f"Not recorded: {err}"})
        except InvalidInput as err:
            found: dict[str, str] = {}
            for field, message in err.problems:
                input_name = field.removeprefix("inputs.")
                block = INPUT_BLOCK_PREFIX + input_name if input_name in approval.inputs else first_block
                found.setdefault(block, message)
            return errors(found)
        except NotAllowed as err:
            return errors({first_block: f"Not recorded: {err.reason}"})
        except HitlError as err:
            return errors({first_block: f"Not recorded: {err}"})
        self._update_message(client, decided, _text(meta.get("channel")), _text(meta.get("ts")))
        return Response(status_code=200)

    def reject_submission(self) -> Response:
        """Reject with the reason typed into the modal; errors are shown in the modal."""
        submitted = self._submitted_view()
        if submitted is None:
            return Response(status_code=200)
        view, meta, request_id = submitted
        values = _obj(_obj(view.get("state")).get("values"))
        reason = (_text(_obj(_obj(values.get("reason")).get("reason")).get("value")) or "").strip()

        def error(text: str) -> JSONResponse:
            return JSONResponse({"response_action": "errors", "errors": {"reason": text[:150]}})

        if not reason:
            return error("A reason is required to reject.")
        if len(reason) > HitlSettings.load().max_comment_length:
            return error("The reason is too long.")
        try:
            approval = self.manager.queries.get(request_id)
        except HitlError:
            return error("This approval request no longer exists.")
        client = _slack_client(approval, self.settings)
        name = self._airflow_user(client)
        if name is None:
            return error("Your Slack account is not linked to an Airflow user.")
        user, refusal = self._principal(name, approval.dag_id)
        if user is None:
            return error(f"Not recorded: {refusal}")
        digest = _text(meta.get("content_digest"))
        try:
            decided = self.manager.decide(request_id, self._decision(user, "reject", reason=reason, digest=digest))
        except ContentChanged as err:
            self._show_as_it_is(client, request_id, meta)
            return error(f"Not recorded: {err}")
        except NotAllowed as err:
            return error(f"Not recorded: {err.reason}")
        except HitlError as err:
            return error(f"Not recorded: {err}")
        self._update_message(client, decided, _text(meta.get("channel")), _text(meta.get("ts")))
        return Response(status_code=200)


def _modal(
    approval: Approval,
    *,
    callback_id: str,
    verb: str,
    fields: list[dict[str, Any]],
    channel: str | None,
    ts: str | None,
    digest: str | None = None,
) -> dict[str, Any]:
    """A decision modal: the request's title, then ``fields``; ``private_metadata`` carries the
    request, the message to update and the digest of what that message showed."""
    title = approval.title if len(approval.title) <= 200 else approval.title[:199] + "…"
    return {
        "type": "modal",
        "callback_id": callback_id,
        # Well under Slack's 3000 characters: an id, a channel, a timestamp and 64 hex digits.
        "private_metadata": json.dumps(
            {"request_id": approval.id, "channel": channel, "ts": ts, "content_digest": digest}
        ),
        "title": {"type": "plain_text", "text": f"{verb} request"},
        "submit": {"type": "plain_text", "text": verb},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [{"type": "section", "text": {"type": "plain_text", "text": slack_escape(title)}}, *fields],
    }


def reject_modal(
    approval: Approval, *, channel: str | None, ts: str | None, digest: str | None = None
) -> dict[str, Any]:
    """The modal asking why."""
    reason = {
        "type": "input",
        "block_id": "reason",
        "label": {"type": "plain_text", "text": "Reason"},
        "element": {"type": "plain_text_input", "action_id": "reason", "multiline": True, "max_length": 3000},
    }
    return _modal(
        approval, callback_id=REJECT_MODAL_ID, verb="Reject", fields=[reason], channel=channel, ts=ts, digest=digest
    )


def _input_element(spec: dict[str, Any]) -> dict[str, Any]:
    """The Block Kit element for one form input, from its JSON Schema."""
    schema = spec.get("schema") or {}
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    value = spec.get("value")
    if isinstance(schema.get("enum"), list):
        options = [
            {"text": {"type": "plain_text", "text": slack_escape(str(choice))[:75]}, "value": str(index)}
            for index, choice in enumerate(schema["enum"][:100])
        ]
        element: dict[str, Any] = {"type": "static_select", "action_id": "value", "options": options}
        if value in schema["enum"]:
            element["initial_option"] = options[schema["enum"].index(value)]
        return element
    if kind == "boolean":
        option = {"text": {"type": "plain_text", "text": "Yes"}, "value": "true"}
        element = {"type": "checkboxes", "action_id": "value", "options": [option]}
        if value is True:
            element["initial_options"] = [option]
        return element
    if kind in ("integer", "number"):
        element = {"type": "number_input", "action_id": "value", "is_decimal_allowed": kind == "number"}
        for bound, key in (("minimum", "min_value"), ("maximum", "max_value")):
            if isinstance(schema.get(bound), (int, float)):
                element[key] = str(schema[bound])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            element["initial_value"] = str(value)
        return element
    element = {"type": "plain_text_input", "action_id": "value", "multiline": kind != "string"}
    if value is not None:
        element["initial_value"] = value if kind == "string" and isinstance(value, str) else json.dumps(value)
    return element


def inputs_modal(
    approval: Approval, *, channel: str | None, ts: str | None, digest: str | None = None
) -> dict[str, Any]:
    """The modal asking for the form inputs before approving; one input block per input."""
    blocks: list[dict[str, Any]] = []
    for name, spec in list(approval.inputs.items())[:90]:
        block: dict[str, Any] = {
            "type": "input",
            "block_id": INPUT_BLOCK_PREFIX + name,
            "optional": not spec.get("required"),
            "label": {"type": "plain_text", "text": name[:2000]},
            "element": _input_element(spec),
        }
        if spec.get("description"):
            block["hint"] = {"type": "plain_text", "text": slack_escape(str(spec["description"]))[:2000]}
        blocks.append(block)
    return _modal(
        approval, callback_id=APPROVE_MODAL_ID, verb="Approve", fields=blocks, channel=channel, ts=ts, digest=digest
    )


def submitted_inputs(approval: Approval, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values typed into :func:`inputs_modal`, and per block the ones that are not even readable."""
    inputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, spec in approval.inputs.items():
        block_id = INPUT_BLOCK_PREFIX + name
        state = _obj(_obj(values.get(block_id)).get("value"))
        schema = spec.get("schema") or {}
        kind = state.get("type")
        if kind == "static_select":
            option = state.get("selected_option")
            if option is not None:
                # The option's value is its index in the enum, as inputs_modal wrote it.
                index = _obj(option).get("value")
                enum = schema.get("enum", [])
                if isinstance(index, str) and index.isascii() and index.isdigit() and int(index) < len(enum):
                    inputs[name] = enum[int(index)]
                else:
                    errors[block_id] = "Not one of the options."
        elif kind == "checkboxes":
            inputs[name] = bool(state.get("selected_options"))
        elif state.get("value") not in (None, ""):
            raw = str(state["value"])
            declared = schema.get("type")
            try:
                if kind == "number_input":
                    number = float(raw)
                    inputs[name] = int(number) if number.is_integer() and declared != "number" else number
                elif declared == "string" or (isinstance(declared, list) and "string" in declared):
                    inputs[name] = raw
                else:
                    inputs[name] = json_loads(raw, max_depth=conf_getint("max_json_depth"))
            except ValueError:
                errors[block_id] = "Not a valid value."
    return inputs, errors

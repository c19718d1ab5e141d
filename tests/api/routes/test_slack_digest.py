"""Slack decisions bound to what the message showed: the buttons carry the request's ``content_digest``.

A click (or a modal opened from it) on a message older than the request's last change records
nothing: the clicker is told so and the message is updated to the request as it is now.
Plays Slack against the local Web API stand-in, as tests/api/routes/test_slack.py does.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from airflow.sdk import Param
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.spec import utcnow
from tests.api.routes.test_slack import click, open_and_post, post, recorded, submission
from tests.api.routes.test_slack_inputs import approve_submission, opened_view
from tests.standins import SlackApi

ESCALATING = {
    "timeout_action": "escalate",
    "escalation_targets": [EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=10))],
    "escalation_final_action": "reject",
}
CHANGED = "the request changed since you opened it"


def escalate(manager: ApprovalManager, request_id: str) -> None:
    """Let the gate's first timeout pass (a manager whose clock is later): carol joins the approvers."""
    later = ApprovalManager(store=manager.store, clock=lambda: utcnow() + dt.timedelta(hours=1, minutes=1))
    assert later.apply_timeout(request_id).escalated


def buttons(blocks: Any) -> dict[str, str]:
    """The Approve / Reject buttons' values of a message's blocks, by action id."""
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    actions = next(b for b in blocks if b["type"] == "actions")
    return {e["action_id"]: e["value"] for e in actions["elements"] if "value" in e}


def pressed(payload: dict[str, Any], value: str) -> dict[str, Any]:
    """``payload`` (a click) on a button whose value is ``value``, as the message carried it."""
    return {**payload, "actions": [{**payload["actions"][0], "value": value}]}


@pytest.mark.usefixtures("notify_env")
class TestButtons:
    @pytest.mark.parametrize("action_id", ["hitl_approve", "hitl_reject"])
    def test_a_click_on_a_message_older_than_the_request_records_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi, action_id: str
    ) -> None:
        gate, message = open_and_post(sqlite_manager, **ESCALATING)
        [posted] = slack_api.of("chat.postMessage")
        stale = buttons(posted.params["blocks"])[action_id]
        assert stale == f"{gate.id}:{gate.content_digest}"
        escalate(sqlite_manager, gate.id)
        before = recorded(sqlite_manager, gate.id)
        response = post(client, pressed(click(gate, message, "UALICE001", action_id), stale))
        assert response.status_code == 200
        [told] = slack_api.of("chat.postEphemeral")
        assert CHANGED in told.params["text"]
        assert recorded(sqlite_manager, gate.id) == before
        assert slack_api.of("views.open") == []
        # The message now shows the request as it is, with buttons that decide it.
        [update] = slack_api.of("chat.update")
        fresh = buttons(update.params["blocks"])[action_id]
        assert fresh == f"{gate.id}:{sqlite_manager.queries.get(gate.id).content_digest}" != stale
        post(client, pressed(click(gate, message, "UALICE001", action_id), fresh))
        if action_id == "hitl_approve":
            assert sqlite_manager.queries.get(gate.id).state == "approved"
        else:
            assert json.loads(opened_view(slack_api)["private_metadata"])["content_digest"] == fresh.split(":")[1]

    def test_a_click_on_the_current_message_decides(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        [posted] = slack_api.of("chat.postMessage")
        value = buttons(posted.params["blocks"])["hitl_approve"]
        assert post(client, pressed(click(gate, message, "UALICE001", "hitl_approve"), value)).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"

    def test_a_malformed_digest_in_a_signed_value_records_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        before = recorded(sqlite_manager, gate.id)
        post(client, pressed(click(gate, message, "UALICE001", "hitl_approve"), f"{gate.id}:{'[' * 3000}"))
        [told] = slack_api.of("chat.postEphemeral")
        # Escaped for Slack: a zero-width joiner around the underscore keeps it from formatting.
        assert "invalid content_digest" in told.params["text"].replace("\u200d", "")
        assert recorded(sqlite_manager, gate.id) == before


@pytest.mark.usefixtures("notify_env")
class TestModals:
    def test_a_reject_modal_opened_before_a_change_records_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, **ESCALATING)
        [posted] = slack_api.of("chat.postMessage")
        value = buttons(posted.params["blocks"])["hitl_reject"]
        post(client, pressed(click(gate, message, "UALICE001", "hitl_reject"), value))
        meta = json.loads(opened_view(slack_api)["private_metadata"])
        assert meta["content_digest"] == gate.content_digest
        escalate(sqlite_manager, gate.id)
        before = recorded(sqlite_manager, gate.id)
        payload = submission(gate, message, "UALICE001", "metrics regressed")
        payload["view"]["private_metadata"] = json.dumps(meta)
        response = post(client, payload)
        assert response.status_code == 200
        body = response.json()
        assert body["response_action"] == "errors"
        assert CHANGED in body["errors"]["reason"]
        assert recorded(sqlite_manager, gate.id) == before
        [update] = slack_api.of("chat.update")
        assert buttons(update.params["blocks"])["hitl_reject"].endswith(
            sqlite_manager.queries.get(gate.id).content_digest
        )

    def test_an_inputs_modal_opened_before_a_change_records_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs={"ticket": Param(type="string")}, **ESCALATING)
        [posted] = slack_api.of("chat.postMessage")
        value = buttons(posted.params["blocks"])["hitl_approve"]
        post(client, pressed(click(gate, message, "UALICE001", "hitl_approve"), value))
        meta = json.loads(opened_view(slack_api)["private_metadata"])
        assert meta["content_digest"] == gate.content_digest
        escalate(sqlite_manager, gate.id)
        before = recorded(sqlite_manager, gate.id)
        payload = approve_submission(
            gate, message, "UALICE001", {"ticket": {"type": "plain_text_input", "value": "T-1"}}
        )
        payload["view"]["private_metadata"] = json.dumps(meta)
        body = post(client, payload).json()
        assert body["response_action"] == "errors"
        assert CHANGED in body["errors"]["input:ticket"]
        assert recorded(sqlite_manager, gate.id) == before

"""Slack and form inputs: Approve on a gate with required inputs opens a modal of input blocks; its
submission approves with the values, and refused values come back into the modal by field.

Plays Slack against the local Web API stand-in, as tests/api/routes/test_slack.py does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.sdk import Param
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.channels import slack_escape
from airflow_hitl.records import Approval
from tests.api.routes.test_slack import click, open_and_post, post, recorded
from tests.standins import SlackApi

FORM = {
    "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="Share of traffic"),
    "ticket": Param(type="string"),
    "region": Param("eu", enum=["eu", "us"]),
    "dry_run": Param(False, type="boolean"),
}


def approve_submission(gate: Approval, message: dict[str, str], slack_user: str, values: dict[str, Any]) -> dict:
    """A ``view_submission`` of the inputs modal: ``values`` as Slack's ``view.state.values``."""
    return {
        "type": "view_submission",
        "user": {"id": slack_user},
        "view": {
            "callback_id": "hitl_approve_inputs",
            "private_metadata": json.dumps({"request_id": gate.id, **message}),
            "state": {"values": {f"input:{name}": {"value": state} for name, state in values.items()}},
        },
    }


def opened_view(slack_api: SlackApi) -> dict[str, Any]:
    [opened] = slack_api.of("views.open")
    view = opened.params["view"]
    return json.loads(view) if isinstance(view, str) else view


@pytest.mark.usefixtures("notify_env")
class TestInputsModal:
    def test_approve_opens_the_form_and_its_submission_approves(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs=FORM)
        # The posted message lists the form.
        [posted] = slack_api.of("chat.postMessage")
        blocks = json.dumps(posted.params["blocks"], ensure_ascii=False)
        assert "Inputs to fill in when approving" in blocks
        assert "*ticket* (required)" in blocks
        assert f"*{slack_escape('rollout_percent')}* (default: 10)" in blocks
        assert post(client, click(gate, message, "UALICE001", "hitl_approve")).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "pending", "the click opens the form, it decides nothing"
        view = opened_view(slack_api)
        assert view["callback_id"] == "hitl_approve_inputs"
        blocks = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
        assert set(blocks) == {"input:rollout_percent", "input:ticket", "input:region", "input:dry_run"}
        percent = blocks["input:rollout_percent"]
        assert percent["element"]["type"] == "number_input"
        assert (percent["element"]["min_value"], percent["element"]["max_value"]) == ("1", "100")
        assert percent["element"]["initial_value"] == "10"
        assert percent["optional"] is True and percent["hint"]["text"] == "Share of traffic"
        assert blocks["input:ticket"]["optional"] is False
        assert blocks["input:region"]["element"]["type"] == "static_select"
        assert blocks["input:dry_run"]["element"]["type"] == "checkboxes"

        values = {
            "rollout_percent": {"type": "number_input", "value": "25"},
            "ticket": {"type": "plain_text_input", "value": "CHG-99"},
            "region": {"type": "static_select", "selected_option": {"value": "1"}},
            "dry_run": {"type": "checkboxes", "selected_options": [{"value": "true"}]},
        }
        done = post(client, approve_submission(gate, message, "UALICE001", values))
        assert done.status_code == 200, done.text
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        [vote] = approval.votes
        assert (vote.user, vote.source) == ("alice", "slack")
        assert vote.inputs == {"rollout_percent": 25, "ticket": "CHG-99", "region": "us", "dry_run": True}
        [update] = slack_api.of("chat.update")
        assert "Approved by alice" in json.dumps(update.params["blocks"])

    def test_refused_values_come_back_into_the_modal_by_field(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs=FORM)
        before = recorded(sqlite_manager, gate.id)
        values = {"rollout_percent": {"type": "number_input", "value": "500"}}
        answer = post(client, approve_submission(gate, message, "UALICE001", values)).json()
        assert answer["response_action"] == "errors"
        assert set(answer["errors"]) == {"input:rollout_percent", "input:ticket"}
        assert "100" in answer["errors"]["input:rollout_percent"]
        assert answer["errors"]["input:ticket"] == "is required"
        assert recorded(sqlite_manager, gate.id) == before

    def test_submission_by_someone_who_may_not_decide_is_refused_in_the_modal(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs=FORM, requested_by="alice")
        before = recorded(sqlite_manager, gate.id)
        values = {"ticket": {"type": "plain_text_input", "value": "CHG-1"}}
        answer = post(client, approve_submission(gate, message, "UALICE001", values)).json()
        assert answer["response_action"] == "errors"
        assert "Not recorded" in next(iter(answer["errors"].values()))
        assert recorded(sqlite_manager, gate.id) == before

    def test_without_required_inputs_approve_decides_at_once_with_the_defaults(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs={"rollout_percent": FORM["rollout_percent"]})
        assert post(client, click(gate, message, "UALICE001", "hitl_approve")).status_code == 200
        assert slack_api.of("views.open") == []
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        assert approval.votes[0].inputs == {"rollout_percent": 10}

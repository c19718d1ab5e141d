"""Slack buttons and form inputs on real Airflow (issue 13).

On the shared ``notifying_airflow`` stack, whose api-server's outbox posts to a Slack Web API
stand-in served by this process on loopback. The test plays Slack: it clicks Approve on the
posted message through the real api-server's ``/hitl/slack/interactions`` (signed as Slack
signs), gets the inputs modal (``views.open``), submits a refused value (the errors come back
into the modal, nothing is recorded), then valid values: the gate is approved with them and
the task after it reads them from the decision.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.routes.test_slack import click, post
from tests.api.routes.test_slack_inputs import approve_submission
from tests.e2e.harness import AirflowHarness, wait_until
from tests.standins import SlackApi

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_slack_inputs"


class _Interactions(httpx.Client):
    """The real api-server's Slack endpoint, under the plugin's ``/hitl`` prefix."""

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return super().post("/hitl" + str(url), **kwargs)


class TestSlackInputs:
    def test_inputs_from_the_slack_modal_refused_then_approved(
        self, notifying_airflow: AirflowHarness, slack: SlackApi
    ) -> None:
        airflow = notifying_airflow
        run_id = airflow.trigger(DAG_ID)
        gate = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])

        def posted() -> dict[str, str] | None:
            sent = airflow.manager.notices.list_notifications(request_id=gate.id, channel="slack", status="sent")
            return {"channel": sent[0].metadata["channel"], "ts": sent[0].metadata["ts"]} if sent else None

        message = wait_until(posted, timeout=120, what="the Slack message of the gate")
        with _Interactions(base_url=airflow.base_url, timeout=60, trust_env=False) as slack_client:
            opened_before = len(slack.of("views.open"))
            answer = post(slack_client, click(gate, message, "UALICE001", "hitl_approve"))
            assert answer.status_code == 200, answer.text
            assert airflow.manager.queries.get(gate.id).state == "pending", (
                "the click opens the form, it decides nothing"
            )
            wait_until(lambda: len(slack.of("views.open")) > opened_before, timeout=30, what="views.open")
            view = slack.of("views.open")[-1].params["view"]
            view = json.loads(view) if isinstance(view, str) else view
            assert {b["block_id"] for b in view["blocks"] if b["type"] == "input"} == {
                "input:rollout_percent",
                "input:ticket",
            }

            refused = {"rollout_percent": {"type": "number_input", "value": "500"}}
            errors = post(slack_client, approve_submission(gate, message, "UALICE001", refused)).json()
            assert errors["response_action"] == "errors"
            assert set(errors["errors"]) == {"input:rollout_percent", "input:ticket"}
            assert not airflow.manager.queries.get(gate.id).votes

            valid = {
                "rollout_percent": {"type": "number_input", "value": "25"},
                "ticket": {"type": "plain_text_input", "value": "CHG-7"},
            }
            done = post(slack_client, approve_submission(gate, message, "UALICE001", valid))
            assert done.status_code == 200, done.text

        decided = airflow.manager.queries.get(gate.id)
        assert decided.state == "approved"
        assert [(v.user, v.source, v.inputs) for v in decided.votes] == [
            ("alice", "slack", {"rollout_percent": 25, "ticket": "CHG-7"})
        ]
        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/after/xcomEntries/return_value"
        assert airflow.api("GET", path, params={"deserialize": True}).json()["value"] == {
            "rollout_percent": 25,
            "ticket": "CHG-7",
        }

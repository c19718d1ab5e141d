"""Slack end to end against a local stand-in for the Web API: post, click, modal, update.

The gate's message is posted through ``SlackHook`` to the stand-in; the test then plays
Slack: it signs interaction payloads with the app's signing secret (or fails to) and posts
them to ``/hitl/slack/interactions``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.notifications.signing import slack_signature
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from tests.airflow_api import USERS, AirflowApi
from tests.standins import SLACK_SIGNING_SECRET, SlackApi

URL = "/slack/interactions"


def open_and_post(manager: ApprovalManager, **overrides: Any) -> tuple[Approval, dict[str, str]]:
    """Open a gate that notifies #approvals on Slack; return it and the posted message's channel/ts."""
    fields: dict[str, Any] = {
        "dag_id": "release",
        "run_id": f"manual__{time.monotonic_ns()}",
        "task_id": "gate",
        "try_number": 1,
        "title": "Release churn model",
        "requested_by": "ricky",
        "allowed_approvers": ("alice", "op"),
        "timeout": dt.timedelta(hours=1),
        "timeout_action": "reject",
        "context": {"metrics": {"accuracy": 0.962}},
        "notify": {"channels": ["slack"], "slack_channel": "C0APPROVALS"},
    }
    fields.update(overrides)
    gate = manager.create(ApprovalSpec(**fields))
    [row] = NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=lambda s: None).dispatch(
        gate, "required"
    )
    assert row.status == "sent", row.error
    return gate, {"channel": row.metadata["channel"], "ts": row.metadata["ts"]}


def click(gate: Approval, message: dict[str, str], slack_user: str, action_id: str) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a button click."""
    return {
        "type": "block_actions",
        "user": {"id": slack_user},
        "trigger_id": "trigger-123",
        "container": {"type": "message", "channel_id": message["channel"], "message_ts": message["ts"]},
        "actions": [{"action_id": action_id, "value": gate.id, "type": "button"}],
    }


def submission(gate: Approval, message: dict[str, str], slack_user: str, reason: str) -> dict[str, Any]:
    """A ``view_submission`` payload of the reject modal."""
    return {
        "type": "view_submission",
        "user": {"id": slack_user},
        "view": {
            "callback_id": "hitl_reject_reason",
            "private_metadata": json.dumps({"request_id": gate.id, **message}),
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
        },
    }


def post(
    client: TestClient,
    payload: dict[str, Any],
    *,
    secret: str = SLACK_SIGNING_SECRET,
    age: float = 0,
    signature: str | None = None,
    path: str = URL,
) -> Any:
    """POST ``payload`` the way Slack does: form-encoded, timestamped and signed (to ``path``)."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time() - age))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature or slack_signature(secret.encode(), timestamp=timestamp, body=body),
    }
    return client.post(path, content=body, headers=headers)


def recorded(manager: ApprovalManager, request_id: str) -> tuple[Any, ...]:
    """State, votes and audit length: equal before and after means nothing was recorded."""
    approval = manager.queries.get(request_id)
    return approval.state, approval.votes, len(manager.audit.events(request_id))


@pytest.mark.usefixtures("notify_env")
class TestSlackMessage:
    def test_message_has_the_gate_the_context_and_two_buttons(
        self, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, _ = open_and_post(sqlite_manager)
        [call] = slack_api.of("chat.postMessage")
        assert call.params["channel"] == "C0APPROVALS"
        text = json.dumps(call.params["blocks"])
        for fact in ("Release churn model", "release", "ricky", "accuracy", "Expires"):
            assert fact in text
        actions = next(b for b in call.params["blocks"] if b["type"] == "actions")
        buttons = {e["action_id"]: e for e in actions["elements"]}
        assert buttons["hitl_approve"]["value"] == f"{gate.id}:{gate.content_digest}"
        assert buttons["hitl_reject"]["style"] == "danger"
        assert buttons["hitl_open"]["url"].startswith("http://hitl.test/dags/release/runs/")


@pytest.mark.usefixtures("notify_env")
class TestInteractions:
    def test_signed_approve_click_votes_as_the_mapped_user_and_updates_the_message(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        response = post(client, click(gate, message, "UALICE001", "hitl_approve"))
        assert response.status_code == 200, response.text
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        [vote] = approval.votes
        assert (vote.user, vote.source) == ("alice", "slack")
        event = next(e for e in sqlite_manager.audit.events(gate.id) if e.event_type == "vote")
        assert event.details["slack_user_id"] == "UALICE001"
        [update] = slack_api.of("chat.update")
        assert (update.params["channel"], update.params["ts"]) == (message["channel"], message["ts"])
        assert "Approved by alice" in json.dumps(update.params["blocks"])
        assert not any(b["type"] == "actions" and len(b["elements"]) > 1 for b in update.params["blocks"])

    def test_slack_user_is_mapped_by_email_through_users_info(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        # op has no Slack id in [hitl] slack_users; users.info gives the email, user_emails maps it.
        assert post(client, click(gate, message, "UOPS00001", "hitl_approve")).status_code == 200
        assert [call.params["user"] for call in slack_api.of("users.info")] == ["UOPS00001"]
        assert [(v.user, v.source) for v in sqlite_manager.queries.get(gate.id).votes] == [("op", "slack")]

    @pytest.mark.parametrize(
        ("how", "options"),
        [
            pytest.param("bad signature", {"signature": "v0=" + "0" * 64}, id="bad-signature"),
            pytest.param("wrong secret", {"secret": "not-the-secret"}, id="wrong-secret"),
            pytest.param("stale timestamp", {"age": 301}, id="stale-timestamp"),
        ],
    )
    def test_unverified_requests_are_refused_with_nothing_recorded(
        self,
        client: TestClient,
        sqlite_manager: ApprovalManager,
        slack_api: SlackApi,
        how: str,
        options: dict[str, Any],
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        before = recorded(sqlite_manager, gate.id)
        calls = len(slack_api.calls)
        response = post(client, click(gate, message, "UALICE001", "hitl_approve"), **options)
        assert response.status_code == 401, how
        assert recorded(sqlite_manager, gate.id) == before
        assert len(slack_api.calls) == calls, "nothing was sent to Slack either"

    def test_missing_headers_are_refused(self, client: TestClient, sqlite_manager: ApprovalManager) -> None:
        gate, message = open_and_post(sqlite_manager)
        body = urlencode({"payload": json.dumps(click(gate, message, "UALICE001", "hitl_approve"))})
        response = client.post(URL, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 401
        assert sqlite_manager.queries.get(gate.id).votes == ()

    @pytest.mark.parametrize(
        ("slack_user", "said"),
        [
            pytest.param("UBOB00001", "not an allowed approver", id="known-but-not-allowed"),
            pytest.param("UMALLORY1", "not linked to an Airflow user", id="unknown-slack-user"),
        ],
    )
    def test_a_slack_user_who_may_not_decide_is_refused_with_nothing_recorded(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi, slack_user: str, said: str
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        before = recorded(sqlite_manager, gate.id)
        for action in ("hitl_approve", "hitl_reject"):
            assert post(client, click(gate, message, slack_user, action)).status_code == 200
        assert recorded(sqlite_manager, gate.id) == before
        assert slack_api.of("chat.update") == []
        assert slack_api.of("views.open") == []
        ephemeral = slack_api.of("chat.postEphemeral")
        assert len(ephemeral) == 2
        assert all(e.params["user"] == slack_user for e in ephemeral)
        assert said in ephemeral[0].params["text"].lower() or said in ephemeral[0].params["text"]

    def test_a_delegates_click_casts_the_delegators_vote(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        now = dt.datetime.now(dt.timezone.utc)
        sqlite_manager.delegations.create_delegation(
            actor=Principal.of("alice"),
            delegate="bob",
            starts_at=now - dt.timedelta(minutes=1),
            ends_at=now + dt.timedelta(hours=1),
            dag_ids=["release"],
        )
        assert post(client, click(gate, message, "UBOB00001", "hitl_approve")).status_code == 200
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        assert [(v.user, v.delegate, v.source) for v in approval.votes] == [("alice", "bob", "slack")]

    def test_four_eyes_across_a_run_refuses_a_click_and_a_delegates_click(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, task_id="deploy", distinct_from=["review"])
        review = sqlite_manager.create(
            ApprovalSpec(dag_id="release", run_id=gate.run_id, task_id="review", try_number=1, title="Review")
        )
        sqlite_manager.approve(review.id, user=Principal.of("alice"), source="ui")
        now = dt.datetime.now(dt.timezone.utc)
        sqlite_manager.delegations.create_delegation(
            actor=Principal.of("alice"),
            delegate="bob",
            starts_at=now - dt.timedelta(minutes=1),
            ends_at=now + dt.timedelta(hours=1),
        )
        before = recorded(sqlite_manager, gate.id)
        for slack_user in ("UALICE001", "UBOB00001"):
            assert post(client, click(gate, message, slack_user, "hitl_approve")).status_code == 200
        assert recorded(sqlite_manager, gate.id) == before
        refusals = [e.params["text"] for e in slack_api.of("chat.postEphemeral")]
        assert (
            refusals
            == ["Not recorded: alice already voted on gate 'review' of this run; this gate needs someone else"] * 2
        )

    def test_requester_cannot_self_approve_from_slack(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, requested_by="alice")
        before = recorded(sqlite_manager, gate.id)
        assert post(client, click(gate, message, "UALICE001", "hitl_approve")).status_code == 200
        assert recorded(sqlite_manager, gate.id) == before
        assert "triggered" in slack_api.of("chat.postEphemeral")[0].params["text"]

    def test_reject_opens_a_modal_and_its_submission_rejects_with_the_reason(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        assert post(client, click(gate, message, "UALICE001", "hitl_reject")).status_code == 200
        [opened] = slack_api.of("views.open")
        assert opened.params["trigger_id"] == "trigger-123"
        view = opened.params["view"]
        view = json.loads(view) if isinstance(view, str) else view
        assert view["callback_id"] == "hitl_reject_reason"
        assert sqlite_manager.queries.get(gate.id).state == "pending", "a click on Reject alone decides nothing"

        empty = post(client, submission(gate, message, "UALICE001", "   "))
        assert empty.json()["response_action"] == "errors"
        assert sqlite_manager.queries.get(gate.id).votes == ()

        done = post(client, submission(gate, message, "UALICE001", "accuracy regressed on segment B"))
        assert done.status_code == 200
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "rejected"
        assert (approval.votes[0].user, approval.votes[0].reason, approval.votes[0].source) == (
            "alice",
            "accuracy regressed on segment B",
            "slack",
        )
        [update] = slack_api.of("chat.update")
        assert "Rejected by alice" in json.dumps(update.params["blocks"])

    def test_click_after_the_decision_changes_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager)
        assert post(client, click(gate, message, "UALICE001", "hitl_approve")).status_code == 200
        before = recorded(sqlite_manager, gate.id)
        assert post(client, click(gate, message, "UOPS00001", "hitl_approve")).status_code == 200
        assert recorded(sqlite_manager, gate.id) == before
        assert "approved" in slack_api.of("chat.postEphemeral")[0].params["text"]


HOSTILE_SLACK = (
    "<!channel> <!everyone> <!here> <@U0BOSS> <#C0SECRET> <https://evil.example/steal|click here> "
    "*bold* _it_ ~gone~ `code`\n> quoted & done"
)
LIVE_MARKUP = re.compile(r"<(?!!date\^)[^>]*>")
QUOTE_LINE = re.compile(r"^[ \t]*(>|&gt;)", re.MULTILINE)


def texts(params: dict[str, Any]) -> list[str]:
    """Every text Slack renders from a Web API call: top-level ``text`` and every text object in blocks."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    blocks = params.get("blocks")
    walk({"text": params.get("text"), "blocks": json.loads(blocks) if isinstance(blocks, str) else blocks})
    return found


def live_markup(text: str) -> list[str]:
    """What in ``text`` Slack would act on: mentions, links, formatting or a quote from the hostile value."""
    problems = LIVE_MARKUP.findall(text) + [m.group(0) for m in QUOTE_LINE.finditer(text)]
    problems += [s for s in ("*bold*", "_it_", "~gone~", "`code`") if s in text]
    return problems


def shown(text: str) -> str:
    """Roughly what a reader sees: entities decoded, zero-width joiners invisible."""
    return html.unescape(text.replace("\u200d", ""))


@pytest.mark.usefixtures("notify_env")
class TestSlackEscaping:
    """Everything from a user or a DAG reaches Slack as inert text, in blocks and in ``text``."""

    def test_the_posted_message_has_no_live_mention_link_or_formatting(
        self, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        open_and_post(
            sqlite_manager,
            title=HOSTILE_SLACK,
            reason=HOSTILE_SLACK,
            requested_by="<!channel>*boss*",
            context={HOSTILE_SLACK: HOSTILE_SLACK, "nested": {"x": HOSTILE_SLACK}},
        )
        [call] = slack_api.of("chat.postMessage")
        rendered = texts(call.params)
        assert call.params["text"] in rendered
        for text in rendered:
            assert live_markup(text) == [], text
        # Escaped, not dropped: the reader still sees what was written.
        body = "\n".join(shown(t) for t in rendered)
        assert HOSTILE_SLACK in body
        assert "<!channel>*boss*" in body
        assert "<!channel>" in shown(call.params["text"])

    def test_decisions_update_the_message_without_live_markup(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, title=HOSTILE_SLACK)
        assert post(client, click(gate, message, "UALICE001", "hitl_reject")).status_code == 200
        [opened] = slack_api.of("views.open")
        view = opened.params["view"]
        for text in texts({"blocks": [json.loads(view) if isinstance(view, str) else view]}):
            assert live_markup(text) == [], text
        assert post(client, submission(gate, message, "UALICE001", HOSTILE_SLACK)).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "rejected"
        [update] = slack_api.of("chat.update")
        rendered = texts(update.params)
        for text in rendered:
            assert live_markup(text) == [], text
        assert "Rejected by alice: " + HOSTILE_SLACK in shown(update.params["text"])

    def test_the_workers_outcome_update_and_refusals_are_escaped_too(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, title=HOSTILE_SLACK)
        decided = sqlite_manager.reject(gate.id, user=Principal.of("alice"), reason=HOSTILE_SLACK)
        [row] = NotificationDispatcher(
            manager=sqlite_manager, settings=NotifySettings.load(), sleep=lambda s: None
        ).dispatch(decided, "decided")
        assert row.status == "sent", row.error
        [update] = slack_api.of("chat.update")
        for text in texts(update.params):
            assert live_markup(text) == [], text
        # A click on the old message is refused with the outcome, quoting the reason: escaped as well.
        assert post(client, click(gate, message, "UOPS00001", "hitl_approve")).status_code == 200
        [ephemeral] = slack_api.of("chat.postEphemeral")
        assert live_markup(ephemeral.params["text"]) == [], ephemeral.params["text"]


@pytest.mark.usefixtures("notify_env")
class TestADelegatorWhoLostTheRight:
    """On Airflow's real api-server: a delegate's click needs the delegator's edit access now (issue 23)."""

    def test_a_demoted_delegators_vote_is_not_cast_by_their_delegate(
        self, api: AirflowApi, api_manager: ApprovalManager, slack_api: SlackApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        gate, message = open_and_post(api_manager, required_approvals=2)
        now = dt.datetime.now(dt.timezone.utc)
        api_manager.delegations.create_delegation(
            actor=Principal.of("alice"),
            delegate="bob",
            starts_at=now - dt.timedelta(minutes=1),
            ends_at=now + dt.timedelta(hours=1),
        )
        users = {**USERS, "alice": "viewer"}
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in users.items()))
        before = recorded(api_manager, gate.id)
        response = post(api.client, click(gate, message, "UBOB00001", "hitl_approve"), path="/hitl" + URL)
        assert response.status_code == 200, response.text
        assert recorded(api_manager, gate.id) == before
        assert "Not recorded" in slack_api.of("chat.postEphemeral")[-1].params["text"]
        # With her access back the same click casts her vote.
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in USERS.items()))
        again = post(api.client, click(gate, message, "UBOB00001", "hitl_approve"), path="/hitl" + URL)
        assert again.status_code == 200
        assert [(v.user, v.delegate) for v in api_manager.queries.get(gate.id).votes] == [("alice", "bob")]

"""Links and Slack buttons on Airflow's real api-server app: the auth manager is asked too.

A link's recipient or a mapped Slack user decides only with edit access to the DAG, exactly
as through the REST API (SimpleAuthManager users of ``tests/airflow_api.py``: ``viewer``
may read but not edit; ``alice`` may edit).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.notifications.access import delegator_refusal
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.dispatcher import NotificationDispatcher
from airflow_hitl.notifications.signing import slack_signature
from tests.airflow_api import AirflowApi
from tests.standins import BASE_URL, SLACK_SIGNING_SECRET, SlackApi, SmtpSink

LINK = re.compile(re.escape(BASE_URL) + r"/hitl/links\?token=([\w\-]+\.[\w\-]+)")


@pytest.fixture
def app(airflow_api: AirflowApi, sqlite_manager: ApprovalManager) -> Any:
    """Airflow's api-server with our plugin, over this test's store."""
    airflow_api.hitl_app.state.hitl_manager = sqlite_manager
    yield airflow_api
    airflow_api.hitl_app.state.hitl_manager = None


def open_gate(manager: ApprovalManager, channels: list[str]) -> Any:
    """A gate anyone with edit access may approve, told to viewer and alice."""
    gate = manager.create(
        ApprovalSpec(
            dag_id="billing",
            run_id=f"manual__{time.monotonic_ns()}",
            task_id="gate",
            title="Load the billing extract",
            requested_by="trigger-user",
            timeout=dt.timedelta(hours=1),
            timeout_action="reject",
            notify={"channels": channels, "users": ["viewer", "alice"]},
        )
    )
    rows = NotificationDispatcher(manager=manager, settings=NotifySettings.load(), sleep=lambda s: None).dispatch(
        gate, "required"
    )
    assert all(r.status == "sent" for r in rows), rows
    return gate


@pytest.mark.usefixtures("notify_env")
class TestAuthManagerAccess:
    def test_email_link_of_a_read_only_user_is_refused(
        self, app: Any, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate = open_gate(sqlite_manager, ["email"])
        smtp_server.wait(2)
        links = {
            str(m["To"]).split("@")[0]: LINK.findall(m.get_body(("plain",)).get_content())[0]
            for m in smtp_server.messages
        }
        refused = app.client.post("/hitl/links", data={"token": links["viewer"]})
        assert refused.status_code == 403
        assert "edit access" in refused.text
        assert sqlite_manager.queries.get(gate.id).votes == ()
        accepted = app.client.post("/hitl/links", data={"token": links["alice"]})
        assert accepted.status_code == 200, accepted.text
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        assert "user" in approval.votes[0].user_roles, "roles come from the auth manager"

    def test_slack_click_of_a_read_only_user_is_refused(
        self, app: Any, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate = open_gate(sqlite_manager, ["slack"])
        posted = {c.params["channel"]: c for c in slack_api.of("chat.postMessage")}
        assert set(posted) == {"UVIEWER01", "UALICE001"}

        def click(slack_user: str) -> int:
            payload = {
                "type": "block_actions",
                "user": {"id": slack_user},
                "container": {"channel_id": "D1", "message_ts": "1.1"},
                "actions": [{"action_id": "hitl_approve", "value": gate.id}],
            }
            body = urlencode({"payload": json.dumps(payload)}).encode()
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": slack_signature(SLACK_SIGNING_SECRET.encode(), timestamp=ts, body=body),
            }
            return int(app.client.post("/hitl/slack/interactions", content=body, headers=headers).status_code)

        assert click("UVIEWER01") == 200
        assert sqlite_manager.queries.get(gate.id).votes == ()
        assert "edit access" in slack_api.of("chat.postEphemeral")[0].params["text"]
        assert click("UALICE001") == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"


@pytest.mark.usefixtures("notify_env")
class TestAccessLog:
    """What Airflow's api-server writes to its access log for our links: never a token."""

    def test_link_tokens_do_not_reach_the_access_log(
        self, app: Any, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        from structlog.testing import capture_logs

        gate = open_gate(sqlite_manager, ["email"])
        smtp_server.wait(2)
        mail = next(m for m in smtp_server.messages if str(m["To"]).startswith("alice@"))
        token = LINK.findall(mail.get_body(("plain",)).get_content())[0]
        payload, signature = token.split(".")
        with capture_logs() as logs:
            # The emailed link, a tampered spelling of it, a doubled parameter, then the decision.
            assert app.client.get(f"/hitl/links?token={token}").status_code == 200
            assert app.client.get(f"/hitl/links?token={token}=").status_code == 403
            assert app.client.get(f"/hitl/links?token={token}&token={token}").status_code == 403
            assert app.client.post("/hitl/links", data={"token": token}).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"
        access = [entry for entry in logs if str(entry.get("path", "")).startswith("/hitl/links")]
        assert len(access) == 4, logs
        for secret in (token, payload, signature):
            assert not [entry for entry in logs if secret in repr(entry)], f"{secret[:12]}... was logged"


class TestDelegatorRefusal:
    """What a delegate's vote asks about the delegator, on the real auth manager (SimpleAuthManager)."""

    @pytest.mark.parametrize(
        ("delegator", "refusal"),
        [
            pytest.param("alice", None, id="may-edit"),
            pytest.param("viewer", "viewer does not have edit access to DAG 'billing'", id="read-only"),
            pytest.param("carol", "'carol' is not a user of this Airflow", id="unknown"),
        ],
    )
    def test_the_delegators_own_edit_access_now(self, app: AirflowApi, delegator: str, refusal: str | None) -> None:
        assert delegator_refusal(delegator, "billing") == refusal

    def test_a_role_change_counts_at_once(self, app: AirflowApi, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "alice:viewer,bob:user")
        assert delegator_refusal("alice", "billing") == "alice does not have edit access to DAG 'billing'"

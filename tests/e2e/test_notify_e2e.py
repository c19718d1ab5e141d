"""Email notifications on real Airflow: the gate mails its approver, who approves by the link.

On the shared ``notifying_airflow`` stack (tests/e2e/conftest.py), whose processes have the
SMTP connection and ``[hitl]`` notification options in their environment; the SMTP server is
``aiosmtpd`` in this test process, on loopback.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.harness import GATE_WAITS, AirflowHarness, wait_until
from tests.e2e.mail import MailServer

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_notify_email"


class TestEmailLinkApproval:
    def test_approve_by_following_the_emailed_link(self, notifying_airflow: AirflowHarness, mail: MailServer) -> None:
        airflow = notifying_airflow
        run_id = airflow.trigger(DAG_ID, user="admin")
        approval = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])
        airflow.wait_for_ti_state(DAG_ID, run_id, "gate", GATE_WAITS)

        # The stack is shared: this run's message is the one naming its run.
        message = wait_until(
            lambda: next((m for m in mail.sink.messages if run_id in str(m["Subject"])), None),
            timeout=120,
            what="the approval email",
        )
        assert str(message["To"]) == "alice@example.com"
        assert str(message["Subject"]).strip() == f"Approval required: Ship build {run_id}"
        html = message.get_body(("html",)).get_content()
        assert "&lt;b&gt;not bold&lt;/b&gt;" in html
        text = message.get_body(("plain",)).get_content()
        approve = re.search(re.escape(airflow.base_url) + r"(/hitl/links\?token=[\w\-]+\.[\w\-]+)", text)
        assert approve, text
        link = approve.group(1)

        notices = airflow.manager.notices.list_notifications(request_id=approval.id)
        assert {(n.channel, n.recipient, n.status) for n in notices} == {
            ("email", "alice", "sent"),
            ("in_app", "alice", "sent"),
        }

        with httpx.Client(base_url=airflow.base_url, timeout=30, trust_env=False) as browser:
            page = browser.get(link)
            assert page.status_code == 200, page.text
            assert "Approve as alice" in page.text
            assert airflow.manager.queries.get(approval.id).state == "pending", "GET decides nothing"

            # Submit the page's form as a browser does: the token goes in the body, not the URL.
            action = re.search(r'<form method="post" action="([^"]*)">', page.text)
            token = re.search(r'<input type="hidden" name="token" value="([^"]+)">', page.text)
            assert action and token, page.text
            target = urljoin(str(page.url), action.group(1))
            done = browser.post(target, data={"token": token.group(1), "comment": "shipping it"})
            assert done.status_code == 200, done.text
            assert browser.post(target, data={"token": token.group(1)}).status_code == 410

        decided = airflow.manager.queries.get(approval.id)
        assert decided.state == "approved"
        assert [(v.user, v.source) for v in decided.votes] == [("alice", "email")]

        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        assert airflow.task_states(DAG_ID, run_id) == {"gate": "success", "after": "success"}

        # The api-server's outbox drainer told alice and the requester how it ended; admin (the
        # requester) has no email address configured: recorded failed, not crashed on.
        def outcome() -> set[tuple[str, str, str]]:
            final = airflow.manager.notices.list_notifications(request_id=approval.id, event_type="decided")
            return {(n.channel, n.recipient, n.status) for n in final}

        wait_until(
            lambda: {("email", "alice", "sent"), ("email", "admin", "failed")} <= outcome(),
            timeout=120,
            what="the decided notices",
        )

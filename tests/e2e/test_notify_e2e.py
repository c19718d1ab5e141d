"""Email notifications on real Airflow: the gate mails its approver, who approves by the link.

Its own Airflow (api-server, scheduler, triggerer, dag-processor) because the processes need
the SMTP connection and ``[hitl]`` notification options in their environment; the SMTP
server is ``aiosmtpd`` in this test process, on loopback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.harness import AirflowHarness, wait_until
from tests.notifications.conftest import SmtpSink, notify_environment

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_notify_email"


@pytest.fixture(scope="module")
def smtp_module() -> Iterator[SmtpSink]:
    """A real SMTP server for the whole module."""
    from aiosmtpd.controller import Controller

    from tests.e2e.harness import free_port
    from tests.notifications.conftest import _Handler

    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture(scope="module")
def notifying_airflow(tmp_path_factory: pytest.TempPathFactory, smtp_module: SmtpSink) -> Iterator[AirflowHarness]:
    """Airflow whose processes send email to the loopback SMTP server."""
    harness = AirflowHarness(root=tmp_path_factory.mktemp("airflow-notify"))
    env = notify_environment(smtp_port=smtp_module.port)
    env["AIRFLOW__HITL__BASE_URL"] = harness.base_url
    harness.env.update(env)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


class TestEmailLinkApproval:
    def test_approve_by_following_the_emailed_link(
        self, notifying_airflow: AirflowHarness, smtp_module: SmtpSink
    ) -> None:
        airflow = notifying_airflow
        run_id = airflow.trigger(DAG_ID, user="admin")
        approval = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])
        airflow.wait_for_ti_state(DAG_ID, run_id, "gate", "deferred")

        [mail] = smtp_module.wait(1, timeout=120)
        assert str(mail["To"]) == "alice@example.com"
        assert str(mail["Subject"]).strip() == f"Approval required: Ship build {run_id}"
        html = mail.get_body(("html",)).get_content()
        assert "&lt;b&gt;not bold&lt;/b&gt;" in html
        text = mail.get_body(("plain",)).get_content()
        approve = re.search(re.escape(airflow.base_url) + r"(/hitl/links\?token=[\w\-]+\.[\w\-]+)", text)
        assert approve, text
        link = approve.group(1)

        notices = airflow.manager.list_notifications(request_id=approval.id)
        assert {(n.channel, n.recipient, n.status) for n in notices} == {
            ("email", "alice", "sent"),
            ("in_app", "alice", "sent"),
        }

        with httpx.Client(base_url=airflow.base_url, timeout=30, trust_env=False) as browser:
            page = browser.get(link)
            assert page.status_code == 200, page.text
            assert "Approve as alice" in page.text
            assert airflow.manager.get(approval.id).state == "pending", "GET decides nothing"

            # Submit the page's form as a browser does: the token goes in the body, not the URL.
            action = re.search(r'<form method="post" action="([^"]*)">', page.text)
            token = re.search(r'<input type="hidden" name="token" value="([^"]+)">', page.text)
            assert action and token, page.text
            target = urljoin(str(page.url), action.group(1))
            done = browser.post(target, data={"token": token.group(1), "comment": "shipping it"})
            assert done.status_code == 200, done.text
            assert browser.post(target, data={"token": token.group(1)}).status_code == 410

        decided = airflow.manager.get(approval.id)
        assert decided.state == "approved"
        assert [(v.user, v.source) for v in decided.votes] == [("alice", "email")]

        airflow.wait_for_run_state(DAG_ID, run_id, "success")
        assert airflow.task_states(DAG_ID, run_id) == {"gate": "success", "after": "success"}

        # The api-server's outbox drainer told alice and the requester how it ended; admin (the
        # requester) has no email address configured: recorded failed, not crashed on.
        def outcome() -> set[tuple[str, str, str]]:
            final = airflow.manager.list_notifications(request_id=approval.id, event_type="decided")
            return {(n.channel, n.recipient, n.status) for n in final}

        wait_until(
            lambda: {("email", "alice", "sent"), ("email", "admin", "failed")} <= outcome(),
            timeout=120,
            what="the decided notices",
        )

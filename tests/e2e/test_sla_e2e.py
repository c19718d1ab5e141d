"""A gate's SLA on real Airflow: overdue is recorded once by the api-server, its approver told, the gate waits on.

On the shared ``notifying_airflow`` stack (PostgreSQL store, a loopback SMTP server, StatsD):
nothing but the api-server's outbox drainer acts on the SLA, so the triggerer plays no part.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import AirflowHarness, wait_until
from tests.e2e.mail import MailServer
from tests.helpers import StatsdListener

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_sla"
API = "/hitl/api/v1/approvals"


def test_an_overdue_gate_is_recorded_told_and_keeps_waiting(
    notifying_airflow: AirflowHarness, mail: MailServer, statsd: StatsdListener
) -> None:
    airflow = notifying_airflow
    run_id = airflow.trigger(DAG_ID, user="admin")
    approval = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])
    assert airflow.api("GET", f"{API}/{approval.id}", user="alice").json()["sla_seconds"] == 3

    def overdue() -> dict | None:
        item = airflow.api("GET", f"{API}/{approval.id}", user="alice").json()
        return item if item["sla_breached_at"] else None

    item = wait_until(overdue, timeout=120, interval=0.5, what="the SLA breach recorded")
    assert item["state"] == "pending", "an SLA is not a timeout"
    events = [e for e in airflow.manager.audit.events(approval.id) if e.event_type == "sla_breached"]
    assert len(events) == 1 and events[0].details["sla_seconds"] == 3

    message = wait_until(
        lambda: next(
            (m for m in mail.sink.messages if run_id in str(m["Subject"]) and "overdue" in str(m["Subject"])), None
        ),
        timeout=120,
        what="the overdue email",
    )
    assert str(message["To"]) == "alice@example.com"
    assert str(message["Subject"]).strip() == f"Approval overdue: Load {run_id}"
    assert "/hitl/links?token=" in message.get_body(("plain",)).get_content(), "it carries decision links"
    notices = airflow.manager.notices.list_notifications(request_id=approval.id)
    assert {(n.channel, n.recipient) for n in notices if n.event_type == "sla_breached"} == {
        ("email", "alice"),
        ("in_app", "alice"),
    }
    statsd.wait_for(f"airflow.hitl.sla_breached.{DAG_ID}.gate", timeout=60)

    airflow.api("POST", f"{API}/{approval.id}/approve", user="alice", json_body={})
    airflow.wait_for_run_state(DAG_ID, run_id, "success")
    assert len([e for e in airflow.manager.audit.events(approval.id) if e.event_type == "sla_breached"]) == 1

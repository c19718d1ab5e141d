"""A gate's SLA on real Airflow: overdue is recorded once by the api-server, its approver told, the gate waits on.

On the shared ``notifying_airflow`` stack (PostgreSQL store, a loopback SMTP server, StatsD):
nothing but the api-server's outbox drainer acts on the SLA, so the triggerer plays no part.
The last test reads the analytics of the gates this module decided (issue 28, item 4).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_hitl.analytics import HISTOGRAM_BUCKETS
from tests.e2e.harness import AirflowHarness, wait_until
from tests.e2e.mail import MailServer
from tests.helpers import StatsdListener

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_sla"
API = "/hitl/api/v1/approvals"
ANALYTICS = "/hitl/api/v1/analytics"
#: What this module's tests did to the gates of ``DAG_ID``: request id -> how each ended.
DECIDED: dict[str, str] = {}


def overdue_and_waiting(airflow: AirflowHarness, approval_id: str) -> dict[str, Any]:
    """The request once the api-server has recorded it overdue (an SLA is not a timeout: still pending)."""

    def overdue() -> dict[str, Any] | None:
        item: dict[str, Any] = airflow.api("GET", f"{API}/{approval_id}", user="alice").json()
        return item if item["sla_breached_at"] else None

    item = wait_until(overdue, timeout=120, interval=0.5, what="the SLA breach recorded")
    assert item["state"] == "pending", "an SLA is not a timeout"
    return item


def test_an_overdue_gate_is_recorded_told_and_keeps_waiting(
    notifying_airflow: AirflowHarness, mail: MailServer, statsd: StatsdListener
) -> None:
    airflow = notifying_airflow
    run_id = airflow.trigger(DAG_ID, user="admin")
    approval = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])
    assert airflow.api("GET", f"{API}/{approval.id}", user="alice").json()["sla_seconds"] == 3

    overdue_and_waiting(airflow, approval.id)
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
    DECIDED[approval.id] = "approved"
    airflow.wait_for_run_state(DAG_ID, run_id, "success")
    assert len([e for e in airflow.manager.audit.events(approval.id) if e.event_type == "sla_breached"]) == 1


def _seconds(later: str, earlier: str) -> float:
    return (dt.datetime.fromisoformat(later) - dt.datetime.fromisoformat(earlier)).total_seconds()


def test_the_analytics_count_what_the_module_did(notifying_airflow: AirflowHarness) -> None:
    airflow = notifying_airflow
    # One more gate, rejected once overdue: with the first test's, an approval and a rejection,
    # both past their SLA (recorded before the decision, however slow the machine).
    run_id = airflow.trigger(DAG_ID, user="admin")
    approval = airflow.wait_for_approval(DAG_ID, run_id, "gate", states=["pending"])
    overdue_and_waiting(airflow, approval.id)
    airflow.api("POST", f"{API}/{approval.id}/reject", user="alice", json_body={"reason": "the load is stale"})
    DECIDED[approval.id] = "rejected"
    airflow.wait_for_run_state(DAG_ID, run_id, "failed")

    # What the store holds of the DAG is exactly what this module did.
    listed = airflow.api("GET", API, user="alice", params={"dag_id": DAG_ID, "limit": 100}).json()["approvals"]
    items = {item["id"]: item for item in listed}
    assert {i: item["state"] for i, item in items.items()} == DECIDED

    body = airflow.api("GET", ANALYTICS, user="alice", params={"dag_id": DAG_ID}).json()
    (gate,) = body["gates"]
    outcomes = list(DECIDED.values())
    assert (gate["dag_id"], gate["task_id"]) == (DAG_ID, "gate")
    assert gate["requests"] == len(DECIDED)
    assert (gate["approved"], gate["rejected"]) == (outcomes.count("approved"), outcomes.count("rejected"))
    assert (gate["timed_out"], gate["cancelled"], gate["pending_now"]) == (0, 0, 0)
    assert gate["sla_breaches"] == len(DECIDED), "each gate was decided only once overdue"
    # The histogram: each decision in the bar of its own wait (decided_at - requested_at, as listed).
    expected = [[0, 0] for _ in HISTOGRAM_BUCKETS]
    for item in items.values():
        waited = _seconds(item["decided_at"], item["requested_at"])
        assert waited > 3, "decided after the 3 s SLA ran out"
        bar = next(i for i, (bound, _label) in enumerate(HISTOGRAM_BUCKETS) if bound is None or waited <= bound)
        expected[bar][1 if item["state"] == "rejected" else 0] += 1
    histogram = body["time_to_decision_histogram"]
    assert [[b["approved"], b["rejected"]] for b in histogram] == expected
    assert sum(b["approved"] for b in histogram) == gate["approved"]
    assert sum(b["rejected"] for b in histogram) == gate["rejected"]
    # alice cast every vote; one UTC day or two (a run around midnight), every request in them.
    assert [(a["user"], a["decisions"], a["rejections"]) for a in body["approvers"]] == [
        ("alice", len(DECIDED), outcomes.count("rejected"))
    ]
    assert sum(d["requests"] for d in body["daily"]) == len(DECIDED)
    assert sum(d["decided"] for d in body["daily"]) == len(DECIDED)

    # The CSV of the histogram says the same; a window before the first gate holds nothing.
    csv_text = airflow.api(
        "GET", f"{ANALYTICS}.csv", user="alice", params={"dag_id": DAG_ID, "table": "histogram"}
    ).text
    assert csv_text.splitlines()[1:] == [
        f"{'' if b['le_s'] is None else b['le_s']},{b['label']},{b['approved']},{b['rejected']}" for b in histogram
    ]
    first = min(item["requested_at"] for item in items.values())
    before = (dt.datetime.fromisoformat(first) - dt.timedelta(seconds=1)).isoformat()
    empty = airflow.api("GET", ANALYTICS, user="alice", params={"dag_id": DAG_ID, "until": before}).json()
    assert empty["gates"] == [] and sum(b["approved"] + b["rejected"] for b in empty["time_to_decision_histogram"]) == 0

"""Metrics from real Airflow processes reach a StatsD listener (issue 13).

On the shared ``notifying_airflow`` stack, whose processes have ``[metrics] statsd_on`` pointed
at a UDP listener in this test process: the worker opening a gate, the api-server recording a
decision and delivering notices, the triggerer applying a timeout each send their own.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import AirflowHarness
from tests.helpers import StatsdListener

pytestmark = pytest.mark.e2e


def count(statsd: StatsdListener, name: str) -> int:
    """How many times ``name`` arrived (StatsD counters here always send 1)."""
    return statsd.names().count(name)


class TestMetricsFromAirflow:
    def test_gate_opened_decided_over_the_api_and_timed(
        self, notifying_airflow: AirflowHarness, statsd: StatsdListener
    ) -> None:
        airflow = notifying_airflow
        opened = count(statsd, "airflow.hitl.requests.opened")
        decided = count(statsd, "airflow.hitl.decided.approved.api")
        dag_id = "e2e_notify_email"  # alice approves; she is told by email and in the pages
        run_id = airflow.trigger(dag_id)
        approval = airflow.wait_for_approval(dag_id, run_id, "gate", states=["pending"])
        # Sent by the worker that ran execute(): the request is committed before it defers.
        statsd.wait_for_count("airflow.hitl.requests.opened", opened + 1, timeout=120)
        statsd.wait_for("airflow.hitl.notices.sent.in_app", timeout=120)
        statsd.wait_for("airflow.hitl.notices.sent.email", timeout=120)

        airflow.api("POST", f"/hitl/api/v1/approvals/{approval.id}/approve", user="alice", json_body={})
        # Sent by the api-server that recorded the decision.
        statsd.wait_for_count("airflow.hitl.decided.approved.api", decided + 1, timeout=120)
        timer = statsd.wait_for("airflow.hitl.time_to_decision:", timeout=60)
        assert timer.endswith("|ms")
        airflow.wait_for_run_state(dag_id, run_id, "success")

    def test_timeout_counted_by_the_triggerer(self, notifying_airflow: AirflowHarness, statsd: StatsdListener) -> None:
        airflow = notifying_airflow
        timeouts = count(statsd, "airflow.hitl.timeouts")
        ended = count(statsd, "airflow.hitl.decided.timeout.timeout")
        dag_id = "e2e_resume_timeout"
        run_id = airflow.trigger(dag_id)
        airflow.wait_for_run_state(dag_id, run_id, "success")
        statsd.wait_for_count("airflow.hitl.timeouts", timeouts + 1, timeout=60)
        statsd.wait_for_count("airflow.hitl.decided.timeout.timeout", ended + 1, timeout=60)

"""Metrics reach a real StatsD listener on loopback through Airflow's own ``Stats``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_hitl import metrics
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel, Principal
from tests.helpers import Clock, StatsdListener, spec

ALICE = Principal.of("alice")


def _initialise_stats() -> None:
    # What each Airflow process does at start, from [metrics] as the environment now says. Both
    # copies of Stats: an earlier test's api-server app (TestClient runs its lifespan) leaves the
    # core's initialised, and then metrics.py sends through that one.
    from airflow._shared.observability.metrics import stats as core_stats
    from airflow.observability.metrics import stats_utils as core_utils
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.observability.metrics import stats_utils

    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    core_stats.initialize(factory=core_utils.get_stats_factory(), export_legacy_names=False)
    metrics.reset()


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    """StatsD on, pointed at a listener of our own."""
    listener = StatsdListener()
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    _initialise_stats()
    yield listener
    monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON")
    _initialise_stats()
    listener.close()


class TestStatsd:
    def test_opened_decided_and_timed(self, statsd: StatsdListener, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec())
        assert statsd.wait_for("airflow.hitl.requests.opened:1|c")
        assert statsd.wait_for("airflow.hitl.requests.waiting:1|g")
        clock.advance(seconds=90)
        mgr.approve(a.id, user=ALICE, source="ui")
        assert statsd.wait_for("airflow.hitl.decided.approved.ui:1|c")
        timer = statsd.wait_for("airflow.hitl.time_to_decision:")
        assert timer.endswith("|ms")
        assert float(timer.split(":")[1].split("|")[0]) == pytest.approx(90_000, abs=1)
        assert statsd.wait_for("airflow.hitl.requests.waiting:0|g")

    def test_timeout_and_escalation(self, statsd: StatsdListener, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=1))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=2)
        assert mgr.apply_timeout(a.id).escalated
        assert statsd.wait_for("airflow.hitl.escalations:1|c")
        clock.advance(minutes=2)
        assert mgr.apply_timeout(a.id).approval.state == "timeout"
        assert statsd.wait_for("airflow.hitl.decided.timeout.timeout:1|c")
        # Sent after decided.timeout.timeout, by UDP: wait for it rather than count at once.
        statsd.wait_for_count("airflow.hitl.timeouts", 2)
        assert statsd.names().count("airflow.hitl.timeouts") == 2

    def test_refused_decision_counts_nothing(self, statsd: StatsdListener, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(requested_by="alice"))
        statsd.wait_for("airflow.hitl.requests.opened")
        with pytest.raises(Exception, match="cannot approve"):
            mgr.approve(a.id, user=ALICE)
        # The refusal rolled back: a later decision is the only one counted.
        mgr.reject(a.id, user=Principal.of("bob"), reason="no")
        statsd.wait_for("airflow.hitl.decided.rejected.api")
        assert not [n for n in statsd.names() if n.startswith("airflow.hitl.decided.approved")]

    def test_notices_sent_and_failed_by_channel(self, statsd: StatsdListener, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.notices.record_notification(
            request_id=a.id, channel="in_app", recipient="alice", event_type="requested", status="sent"
        )
        assert statsd.wait_for("airflow.hitl.notices.sent.in_app:1|c")
        mail = mgr.notices.record_notification(
            request_id=a.id, channel="email", recipient="alice", event_type="requested"
        )
        assert not [n for n in statsd.names() if n.startswith("airflow.hitl.notices.") and n.endswith(".email")]
        mgr.notices.mark_notification_failed(
            mail.id, error="connection refused", next_attempt_at=dt.datetime.now(dt.UTC)
        )
        assert statsd.wait_for("airflow.hitl.notices.failed.email:1|c")
        mgr.notices.mark_notification_sent(mail.id, retry_count=1)
        assert statsd.wait_for("airflow.hitl.notices.sent.email:1|c")


def test_docs_list_every_metric() -> None:
    names = re.findall(r"``(hitl\.[\w.<>]+)``", metrics.__doc__ or "")
    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    assert len(names) >= 8
    assert [n for n in names if f"`{n}`" not in page] == []


class TestEnabled:
    def test_read_once_per_process_and_again_after_reset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON", raising=False)
        metrics.reset()
        assert metrics.enabled() is False
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
        assert metrics.enabled() is False, "not read again after every decision"
        metrics.reset()
        assert metrics.enabled() is True
        monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON")
        metrics.reset()
        assert metrics.enabled() is False

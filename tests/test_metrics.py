"""Metrics reach a real StatsD listener on loopback through Airflow's own ``Stats``."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from airflow_hitl import metrics
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel, Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")


class StatsdListener:
    """A UDP server that keeps every StatsD line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.lines.extend(data.decode().splitlines())

    def wait_for(self, prefix: str, *, timeout: float = 30.0) -> str:
        """The first line starting with ``prefix``, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no StatsD line starting {prefix!r}; got {self.lines}")

    def names(self) -> list[str]:
        return [line.split(":", 1)[0] for line in self.lines]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


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

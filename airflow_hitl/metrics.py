"""Metrics of the approval gates, sent through Airflow's own ``Stats``.

Whatever the user configured in ``[metrics]`` (StatsD, DataDog's DogStatsD or OpenTelemetry)
receives them, under Airflow's ``statsd_prefix``. The names (all under ``hitl.``):

=====================================  =======  ==============================================
name                                   type     meaning
=====================================  =======  ==============================================
``hitl.requests.opened``               counter  a gate opened a request
``hitl.decided.<state>.<source>``      counter  a request ended: ``approved``, ``rejected``,
                                                ``timeout`` or ``cancelled``, by ``api``, ``ui``,
                                                ``email``, ``slack``, ``bulk``, ``cli``,
                                                ``timeout``, ``auto``, ``condition``, ``airflow``
``hitl.timeouts``                      counter  a request expired (its action applied)
``hitl.escalations``                   counter  a request expired and escalated to a new level
``hitl.notices.sent.<channel>``        counter  a notice was delivered (``email``, ``slack``,
                                                ``webhook``, ``in_app``)
``hitl.notices.failed.<channel>``      counter  one attempt to send a notice failed
``hitl.time_to_decision``              timer    from the request's opening to its end
``hitl.requests.waiting``              gauge    requests waiting for people, store-wide
=====================================  =======  ==============================================

Each process of Airflow 3.3 initialises its ``Stats`` (api-server, scheduler, triggerer,
task runner), but in two copies (the core's and the Task SDK's): :mod:`airflow_hitl.seam.stats`
picks the one this process initialised, and initialises the Task SDK's from ``[metrics]``
where neither was (the trigger runner's subprocess, a script). Sending a metric never raises.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from airflow_hitl.seam.stats import StatsClient, stats_client

log = logging.getLogger(__name__)

PREFIX = "hitl"

_lock = threading.Lock()
_backend: StatsClient | None = None
_enabled: bool | None = None


def _stats() -> StatsClient:
    """The ``Stats`` facade of this process (:func:`airflow_hitl.seam.stats.stats_client`), chosen once."""
    global _backend
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            _backend = stats_client()
        return _backend


def enabled() -> bool:
    """True when ``[metrics]`` sends metrics anywhere (then a gauge is worth a query).

    Read once per process, as Airflow reads ``[metrics]`` once when it sets up ``Stats``: it is
    asked after every decision. :func:`reset` reads it again.
    """
    global _enabled
    if _enabled is None:
        try:
            from airflow.configuration import conf

            _enabled = any(
                conf.getboolean("metrics", option, fallback=False)
                for option in ("statsd_on", "statsd_datadog_enabled", "otel_on")
            )
        except Exception:
            return False
    return _enabled


def _send(kind: str, name: str, *args: Any) -> None:
    try:
        getattr(_stats(), kind)(f"{PREFIX}.{name}", *args)
    except Exception:
        # Metrics are an aside: a broken StatsD must never fail a decision.
        log.debug("could not send metric %s", name, exc_info=True)


def request_opened() -> None:
    """A gate opened a request."""
    _send("incr", "requests.opened")


def request_ended(*, state: str, source: str, requested_at: dt.datetime, ended_at: dt.datetime) -> None:
    """A request reached a final state; also times it from its opening."""
    _send("incr", f"decided.{state}.{source}")
    if source == "timeout":
        _send("incr", "timeouts")
    _send("timing", "time_to_decision", ended_at - requested_at)


def request_escalated() -> None:
    """A request expired and escalated to its next level."""
    _send("incr", "timeouts")
    _send("incr", "escalations")


def sla_breached(*, dag_id: str, task_id: str | None) -> None:
    """A gate still waited when its SLA ran out (named by DAG and task, as Airflow names ``ti.finish``)."""
    _send("incr", "sla_breached")
    _send("incr", f"sla_breached.{dag_id}.{task_id or 'api'}")


def standing_used() -> None:
    """A standing approval cast its owner's vote on a gate."""
    _send("incr", "standing.used")


def notice(*, channel: str, delivered: bool) -> None:
    """A notice was delivered, or its send failed."""
    _send("incr", f"notices.{'sent' if delivered else 'failed'}.{channel}")


def waiting(count_waiting: Callable[[], int]) -> None:
    """The gauge of waiting requests; ``count_waiting`` runs only when metrics are on."""
    if not enabled():
        return
    try:
        value = count_waiting()
    except Exception:
        log.debug("could not count waiting requests", exc_info=True)
        return
    _send("gauge", "requests.waiting", value)


def reset() -> None:
    """Forget the chosen backend and whether metrics are on (tests that change ``[metrics]``)."""
    global _backend, _enabled
    with _lock:
        _backend = None
        _enabled = None

"""Airflow's ``Stats``: the one object every process sends its metrics through.

Airflow 3.1 and 3.2 have one ``Stats`` (``airflow.stats``; on 3.2 we set it up from ``[metrics]``
in a process where Airflow did not, as on 3.3); Airflow 3.3
keeps two copies of it (the core's and the Task SDK's, both ``_shared`` code) and each process
initialises one: we use whichever this process initialised, and initialise the Task SDK's from
``[metrics]`` where neither was (the trigger runner's subprocess, a script). Whether a copy is
initialised is its private ``_factory``. See the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, cast


class StatsClient(Protocol):
    """What we send through: counters, gauges and timers (Airflow's ``Stats`` facade)."""

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        """Add ``count`` to counter ``stat``."""

    def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False) -> None:
        """Set gauge ``stat`` to ``value``."""

    def timing(self, stat: str, dt: Any) -> None:
        """Record ``dt`` (a timedelta or milliseconds) in timer ``stat``."""


def _initialised(module: Any) -> bool:
    return getattr(module, "_factory", None) is not None


def stats_client() -> StatsClient:
    """The ``Stats`` of this process, initialised from ``[metrics]`` if nobody did (callers cache it)."""
    sdk_stats: Any = None
    with contextlib.suppress(ImportError):  # Airflow 3.1 has no SDK copy
        import airflow.sdk._shared.observability.metrics.stats as sdk_stats
    if sdk_stats is None or not hasattr(sdk_stats, "initialize"):
        # Airflow 3.1 and 3.2: one Stats. (3.2 has the SDK's module, but not 3.3's module-level
        # initialize: initialising that failed there, and every metric was dropped.)
        try:  # 3.2 moved it to the SDK, and warns on the old import
            from airflow.sdk.observability.stats import Stats
        except ImportError:  # 3.1
            from airflow.stats import Stats

        meta: Any = type(Stats)
        # Read as Airflow reads it: initialize() sets it on Stats, the metaclass holds the default.
        if hasattr(meta, "initialize") and type.__getattribute__(Stats, "factory") is None:
            # Airflow 3.2 sets it up in its scheduler, triggerer and task runner only: elsewhere
            # (the api-server, a script) from [metrics], as those do. 3.1 does it on first use.
            import airflow.sdk.observability.metrics.stats_utils as stats_utils

            # Typed as Any: these are 3.2's signatures, and mypy reads 3.3's.
            factory_of: Any = stats_utils.get_stats_factory
            meta.initialize(Stats, factory=factory_of(Stats))
        return cast("StatsClient", Stats)
    core_stats: Any = None
    with contextlib.suppress(ImportError):
        import airflow._shared.observability.metrics.stats as core_stats
    if core_stats is not None and _initialised(core_stats):
        return cast("StatsClient", core_stats)
    if not _initialised(sdk_stats):
        import airflow.sdk.observability.metrics.stats_utils as stats_utils
        from airflow.sdk import conf

        sdk_stats.initialize(
            factory=stats_utils.get_stats_factory(),
            export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False),
        )
    return cast("StatsClient", sdk_stats)

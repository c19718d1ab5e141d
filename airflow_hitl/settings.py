"""The ``[hitl]`` configuration section, read in one place.

Defaults live in ``get_provider_info()`` (so ``airflow config list`` documents them) and
are repeated here as fallbacks, because a provider's defaults are only registered once
Airflow's providers manager has loaded, which a test or a bare script may never do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SECTION = "hitl"

DEFAULTS: dict[str, str] = {
    "conn_id": "hitl_default",
    "sqlite_path": "",
    "auto_migrate": "True",
    "poll_interval": "2.0",
    "store_retry_max_backoff": "30.0",
    "pool_size": "5",
    "max_comment_length": "4000",
    "base_url": "http://localhost:8080",
    "outbox_drainer": "True",
    "outbox_poll_interval": "1.0",
    "outbox_lease_seconds": "120.0",
    "outbox_final_retry_seconds": "3600.0",
}


def _conf_get(key: str) -> str:
    try:
        from airflow.configuration import conf

        value = conf.get(SECTION, key, fallback=None)
    except Exception:
        # Reading config must never break a gate; fall back to the environment and defaults.
        value = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{key.upper()}")
    return DEFAULTS[key] if value is None else str(value)


def _as_bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def airflow_home() -> str:
    """Return ``AIRFLOW_HOME`` the way Airflow itself resolves it."""
    return os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))


@dataclass(frozen=True, kw_only=True)
class HitlSettings:
    """Typed view of the ``[hitl]`` section."""

    conn_id: str
    sqlite_path: str
    auto_migrate: bool
    poll_interval: float
    store_retry_max_backoff: float
    pool_size: int
    max_comment_length: int
    base_url: str
    outbox_drainer: bool
    outbox_poll_interval: float
    outbox_lease_seconds: float
    outbox_final_retry_seconds: float

    @classmethod
    def load(cls) -> HitlSettings:
        """Read the current configuration (environment variables included)."""
        sqlite_path = _conf_get("sqlite_path") or os.path.join(airflow_home(), "hitl.db")
        return cls(
            conn_id=_conf_get("conn_id"),
            sqlite_path=sqlite_path,
            auto_migrate=_as_bool(_conf_get("auto_migrate")),
            poll_interval=float(_conf_get("poll_interval")),
            store_retry_max_backoff=float(_conf_get("store_retry_max_backoff")),
            pool_size=int(_conf_get("pool_size")),
            max_comment_length=int(_conf_get("max_comment_length")),
            base_url=_conf_get("base_url").rstrip("/"),
            outbox_drainer=_as_bool(_conf_get("outbox_drainer")),
            outbox_poll_interval=float(_conf_get("outbox_poll_interval")),
            outbox_lease_seconds=float(_conf_get("outbox_lease_seconds")),
            outbox_final_retry_seconds=float(_conf_get("outbox_final_retry_seconds")),
        )

"""Notification options of the ``[hitl]`` section, read in one place.

Kept apart from :mod:`airflow_hitl.settings` so the store's settings stay small; the
defaults are also declared in ``get_provider_info()`` so ``airflow config list`` documents them.
Secrets (the link signing key, Slack's signing secret) are read here and nowhere else, and
never logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_hitl.settings import SECTION

log = logging.getLogger(__name__)

NOTIFY_DEFAULTS: dict[str, str] = {
    "notify_smtp_conn_id": "smtp_default",
    "notify_slack_conn_id": "slack_api_default",
    "notify_webhook_conn_id": "hitl_webhook",
    "notify_from_email": "",
    "notify_max_retries": "3",
    "notify_retry_backoff": "1.0",
    "notify_retry_max_backoff": "30.0",
    "user_emails": "{}",
    "slack_users": "{}",
    "role_members": "{}",
    "signing_key": "",
    "signing_conn_id": "hitl_signing",
    "slack_signing_secret": "",
    "link_max_age": "604800",
}


def conf_get(key: str) -> str:
    """One ``[hitl]`` option as a string (config file, environment, then the default)."""
    try:
        from airflow.configuration import conf

        value = conf.get(SECTION, key, fallback=None)
    except Exception:
        # Reading config must never break a gate: use the environment and defaults.
        value = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{key.upper()}")
    return NOTIFY_DEFAULTS[key] if value is None else str(value)


def _json_mapping(key: str) -> dict[str, Any]:
    raw = conf_get(key).strip() or "{}"
    try:
        value = json.loads(raw)
    except ValueError:
        log.error("[hitl] %s is not valid JSON; ignoring it", key)
        return {}
    if not isinstance(value, Mapping):
        log.error("[hitl] %s must be a JSON object; ignoring it", key)
        return {}
    return dict(value)


@dataclass(frozen=True, kw_only=True)
class NotifySettings:
    """Typed view of the notification options of ``[hitl]``.

    ``user_emails`` maps Airflow user names to email addresses, ``slack_users`` maps them to
    Slack member ids (``U...``), ``role_members`` maps role names to user names; each is a
    JSON object in the config, used where the auth manager has no such record.
    """

    smtp_conn_id: str = "smtp_default"
    slack_conn_id: str = "slack_api_default"
    webhook_conn_id: str = "hitl_webhook"
    from_email: str = ""
    max_retries: int = 3
    retry_backoff: float = 1.0
    retry_max_backoff: float = 30.0
    user_emails: dict[str, str] = field(default_factory=dict)
    slack_users: dict[str, str] = field(default_factory=dict)
    role_members: dict[str, list[str]] = field(default_factory=dict)
    link_max_age: float = 604800.0

    @classmethod
    def load(cls) -> NotifySettings:
        """Read the current configuration (environment variables included)."""
        roles = {str(k): [str(u) for u in v] for k, v in _json_mapping("role_members").items() if isinstance(v, list)}
        return cls(
            smtp_conn_id=conf_get("notify_smtp_conn_id"),
            slack_conn_id=conf_get("notify_slack_conn_id"),
            webhook_conn_id=conf_get("notify_webhook_conn_id"),
            from_email=conf_get("notify_from_email"),
            max_retries=max(0, int(conf_get("notify_max_retries"))),
            retry_backoff=max(0.0, float(conf_get("notify_retry_backoff"))),
            retry_max_backoff=max(0.0, float(conf_get("notify_retry_max_backoff"))),
            user_emails={str(k): str(v) for k, v in _json_mapping("user_emails").items()},
            slack_users={str(k): str(v) for k, v in _json_mapping("slack_users").items()},
            role_members=roles,
            link_max_age=float(conf_get("link_max_age")),
        )

"""Typed view of the notification options of the ``[hitl]`` section.

The options are declared, with their defaults, in :data:`airflow_hitl.settings.OPTIONS` and
read through :mod:`airflow_hitl.settings`, like every other ``[hitl]`` option: numbers as Airflow
reads them, a misspelt one an error naming it.
Secrets (the link signing key, Slack's signing secret) are read where they are used, and
never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NotifySettings", "conf_get"]

from airflow_hitl.settings import conf_get, read_options

log = logging.getLogger(__name__)


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

    smtp_conn_id: str
    slack_conn_id: str
    webhook_conn_id: str
    from_email: str
    max_retries: int
    retry_backoff: float
    retry_max_backoff: float
    user_emails: dict[str, str]
    slack_users: dict[str, str]
    role_members: dict[str, list[str]]
    link_max_age: float

    @classmethod
    def load(cls) -> NotifySettings:
        """Read the current configuration (environment variables included)."""
        # Numbers as Airflow reads them: a misspelt one is ConfigInvalid naming it (all at once).
        number = read_options(
            ("notify_max_retries", "notify_retry_backoff", "notify_retry_max_backoff", "link_max_age")
        )
        roles = {str(k): [str(u) for u in v] for k, v in _json_mapping("role_members").items() if isinstance(v, list)}
        return cls(
            smtp_conn_id=conf_get("notify_smtp_conn_id"),
            slack_conn_id=conf_get("notify_slack_conn_id"),
            webhook_conn_id=conf_get("notify_webhook_conn_id"),
            from_email=conf_get("notify_from_email"),
            max_retries=max(0, number["notify_max_retries"]),
            retry_backoff=max(0.0, number["notify_retry_backoff"]),
            retry_max_backoff=max(0.0, number["notify_retry_max_backoff"]),
            user_emails={str(k): str(v) for k, v in _json_mapping("user_emails").items()},
            slack_users={str(k): str(v) for k, v in _json_mapping("slack_users").items()},
            role_members=roles,
            link_max_age=float(number["link_max_age"]),
        )

"""Immutable view of an ``approval_notifications`` row, and the errors of its lifecycle.

Light on imports on purpose: :mod:`airflow_hitl.manager` imports it, and the manager must
not pull in the SMTP, Slack or HTTP providers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from airflow_hitl.exceptions import HitlError
from airflow_hitl.models.tables import ApprovalNotificationRow


class LinkAlreadyUsed(HitlError):
    """An emailed action link was already used once; links work once."""

    status_code = 410

    def __init__(self, notification_id: str) -> None:
        self.notification_id = notification_id
        super().__init__("this link has already been used")


@dataclass(frozen=True, kw_only=True)
class Notification:
    """One notice to one recipient on one channel, with its delivery state."""

    id: str
    request_id: str
    channel: str
    recipient: str
    event_type: str
    status: str
    retry_count: int
    error: str | None
    subject: str | None
    body: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    next_attempt_at: dt.datetime | None = None
    outbox_id: str | None = None
    sent_at: dt.datetime | None = None
    read_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: ApprovalNotificationRow) -> Notification:
        """Copy a notification row."""
        return cls(
            id=row.id,
            request_id=row.request_id,
            channel=row.channel,
            recipient=row.recipient,
            event_type=row.event_type,
            status=row.status,
            retry_count=row.retry_count,
            error=row.error,
            subject=row.subject,
            body=row.body,
            metadata=dict(row.metadata_ or {}),
            next_attempt_at=row.next_attempt_at,
            outbox_id=row.outbox_id,
            sent_at=row.sent_at,
            read_at=row.read_at,
            failed_at=row.failed_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the UI)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out

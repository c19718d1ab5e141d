"""The approval store: tables, engine and schema management."""

from __future__ import annotations

from airflow_hitl.models.tables import (
    ApprovalEventRow,
    ApprovalNotificationRow,
    ApprovalRequestRow,
    ApprovalVoteRow,
    Base,
)

__all__ = [
    "ApprovalEventRow",
    "ApprovalNotificationRow",
    "ApprovalRequestRow",
    "ApprovalVoteRow",
    "Base",
]

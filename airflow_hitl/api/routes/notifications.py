"""``/api/v1/notifications``: the caller's in-app notifications (the pages' bell).

A notice sent on the ``in_app`` channel is a row addressed to one Airflow user; these
handlers only ever read and mark the rows of the authenticated caller, so nobody can see or
touch another person's notices (ids of other people's rows are simply not found). Thin
handlers over :class:`~airflow_hitl.manager.ApprovalManager`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from airflow_hitl.api.datamodels import MAX_ID_LENGTH, StorableBody, error_responses
from airflow_hitl.api.deps import ManagerDep
from airflow_hitl.api.security import CallerDep, current_caller
from airflow_hitl.records import Notification

router = APIRouter(
    prefix="/notifications",
    tags=["notifications"],
    dependencies=[Depends(current_caller)],
    responses=error_responses(401, 422, 503),
)

IN_APP = "in_app"
UNREAD = "sent"  # an in-app row is delivered ("sent") once written, until its reader marks it read
MAX_LIMIT = 500
MAX_READ_IDS = 500


class NotificationResponse(BaseModel):
    """One in-app notification of the caller."""

    id: str
    request_id: str = Field(description="The approval request it is about.")
    event_type: str = Field(description="required, reminder, escalated, timed_out, decided or cancelled.")
    subject: str | None
    body: str | None
    read: bool
    created_at: dt.datetime | None
    read_at: dt.datetime | None
    details_url: str | None = Field(description="Where the request can be seen and decided.")


class NotificationCollectionResponse(BaseModel):
    """A page of the caller's notifications, newest first."""

    notifications: list[NotificationResponse]
    total_entries: int
    unread_count: int


class MarkReadBody(StorableBody):
    """Body of ``POST /notifications/read``: the ids to mark, or none for every unread one."""

    ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00]*$")]] | None = Field(
        default=None, max_length=MAX_READ_IDS, description="Notification ids; omit (or null) to mark all read."
    )


class MarkReadResponse(BaseModel):
    """How many notifications were marked read, and how many stay unread."""

    marked: int
    unread_count: int


def _item(notification: Notification) -> dict[str, Any]:
    return {
        "id": notification.id,
        "request_id": notification.request_id,
        "event_type": notification.event_type,
        "subject": notification.subject,
        "body": notification.body,
        "read": notification.status != UNREAD,
        "created_at": notification.created_at,
        "read_at": notification.read_at,
        "details_url": notification.metadata.get("details_url"),
    }


@router.get("", response_model=NotificationCollectionResponse, summary="The caller's in-app notifications")
def list_notifications(
    caller: CallerDep,
    manager: ManagerDep,
    unread_only: Annotated[bool, Query(description="Only notifications not read yet.")] = False,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT, description=f"Page size, 0 to {MAX_LIMIT}.")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000, description="Rows to skip.")] = 0,
) -> dict[str, Any]:
    """The caller's own in-app notifications, newest first, with the unread count."""
    status = UNREAD if unread_only else None
    rows = manager.notices.list_notifications(
        recipient=caller.name, channel=IN_APP, status=status, limit=limit, offset=offset, newest_first=True
    )
    return {
        "notifications": [_item(row) for row in rows],
        "total_entries": manager.notices.count_notifications(recipient=caller.name, channel=IN_APP, status=status),
        "unread_count": manager.notices.unread_count(caller.name),
    }


@router.post(
    "/read",
    response_model=MarkReadResponse,
    summary="Mark the caller's notifications read",
    responses=error_responses(413),
)
def mark_read(caller: CallerDep, manager: ManagerDep, body: MarkReadBody) -> dict[str, int]:
    """Mark the given notifications (all when ``ids`` is omitted) of the caller read."""
    marked = manager.notices.mark_read(caller.name, body.ids)
    return {"marked": marked, "unread_count": manager.notices.unread_count(caller.name)}

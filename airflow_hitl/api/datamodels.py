"""Request and response bodies of the ``/hitl/api/v1`` REST API (snake_case, like Airflow's).

Every request body forbids unknown fields, so a typo or an attempt to choose the acting
user (``user_id``, ``decided_by``) is a 422 instead of being silently ignored: identity only
ever comes from the Airflow token.

Free text (``comment``, ``reason``) is limited to ``[hitl] max_comment_length`` characters
(default 4000), read once when the API module is imported; longer text is a 422.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_hitl.settings import HitlSettings

MAX_COMMENT_LENGTH: int = HitlSettings.load().max_comment_length
# A bulk call decides one request per transaction; a bound keeps one call from holding a
# worker thread for minutes.
MAX_BULK_IDS = 500
MAX_ID_LENGTH = 64

STATES = ("pending", "approved", "rejected", "timeout", "escalated", "cancelled")
DECIDED_STATES = ("approved", "rejected", "timeout", "cancelled")

_TEXT_HELP = f"At most {MAX_COMMENT_LENGTH} characters (`[hitl] max_comment_length`)."


def _unstorable(value: Any) -> str | None:
    """What in a raw body the store cannot keep or JSON cannot return, if anything."""
    if isinstance(value, str):
        return "text must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite (no NaN or Infinity)"
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
        return next((p for p in map(_unstorable, items) if p), None)
    if isinstance(value, (list, tuple)):
        return next((p for p in map(_unstorable, value) if p), None)
    return None


class _Body(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Python's JSON parser accepts NaN, and PostgreSQL refuses NUL in text and NaN in
        # JSON: refuse both here as bad input (422) instead of failing later with a 500.
        problem = _unstorable(data)
        if problem:
            raise ValueError(problem)
        return data


class _Response(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="ignore")


def _blank_to_none(value: str | None) -> str | None:
    return value or None


class ApproveBody(_Body):
    """Body of ``POST /approvals/{id}/approve``."""

    comment: str | None = Field(default=None, max_length=MAX_COMMENT_LENGTH, description=_TEXT_HELP)
    metadata: dict[str, Any] | None = Field(default=None, description="Recorded with the vote.")

    _clean_comment = field_validator("comment")(_blank_to_none)


class RejectBody(_Body):
    """Body of ``POST /approvals/{id}/reject``: a reason is required."""

    reason: str = Field(min_length=1, max_length=MAX_COMMENT_LENGTH, description=f"Required. {_TEXT_HELP}")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_LENGTH, description=_TEXT_HELP)

    _clean_comment = field_validator("comment")(_blank_to_none)


class CancelBody(_Body):
    """Body of ``POST /approvals/{id}/cancel``: a reason is required."""

    reason: str = Field(min_length=1, max_length=MAX_COMMENT_LENGTH, description=f"Required. {_TEXT_HELP}")


class BulkBody(_Body):
    """Body of ``POST /approvals/bulk``: one action applied to many requests."""

    ids: list[str] = Field(min_length=1, max_length=MAX_BULK_IDS, description="Approval request ids.")
    action: Literal["approve", "reject", "cancel"]
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_LENGTH, description=_TEXT_HELP)
    reason: str | None = Field(
        default=None, max_length=MAX_COMMENT_LENGTH, description=f"Required to reject or cancel. {_TEXT_HELP}"
    )

    _clean_comment = field_validator("comment", "reason")(_blank_to_none)

    @model_validator(mode="after")
    def _reason_when_needed(self) -> BulkBody:
        if self.action in ("reject", "cancel") and not self.reason:
            raise ValueError(f"`reason` is required to {self.action}")
        return self


class EscalationBody(_Body):
    """One escalation level of a request opened over the API."""

    approvers: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(gt=0)
    required_approvals: int | None = Field(default=None, ge=1)


class CreateBody(_Body):
    """Body of ``POST /approvals``: a gate opened from outside a task.

    ``requested_by`` is the authenticated caller; it cannot be set in the body.
    """

    dag_id: str = Field(min_length=1, max_length=250)
    title: str = Field(min_length=1, max_length=500)
    run_id: str | None = Field(default=None, max_length=250)
    task_id: str | None = Field(default=None, max_length=250)
    map_index: int = -1
    description: str | None = Field(default=None, max_length=20_000)
    reason: str | None = Field(default=None, max_length=MAX_COMMENT_LENGTH)
    context: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0)
    timeout_action: Literal["approve", "reject", "escalate"] | None = None
    escalate_to: list[EscalationBody] = Field(default_factory=list)
    escalation_final_action: Literal["approve", "reject"] | None = None
    required_approvals: int = Field(default=1, ge=1)
    require_all: bool = False
    allowed_approvers: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False
    on_reject: Literal["fail", "skip"] = "fail"
    metadata: dict[str, Any] = Field(default_factory=dict)


class VoteResponse(_Response):
    """One person's vote on a request."""

    user: str
    vote: str
    comment: str | None = None
    reason: str | None = None
    source: str
    escalation_level: int
    created_at: dt.datetime
    user_roles: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class NoticeResponse(_Response):
    """One notice about a request to one recipient on one channel, and how its delivery went."""

    channel: str
    recipient: str
    event_type: str
    status: str = Field(description="pending, sent, failed (with error) or read")
    error: str | None = None
    retry_count: int
    sent_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class ApprovalResponse(_Response):
    """An approval request with its votes.

    ``can_approve`` and ``can_approve_reason`` are filled on the pending list and the single
    item: whether the caller may approve now (edit access to the DAG and the request's own
    policy), and if not, why.
    """

    id: str
    dag_id: str
    run_id: str | None = None
    task_id: str | None = None
    map_index: int
    try_number: int | None = None
    title: str
    description: str | None = None
    reason: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    approval_type: str
    state: str
    requested_by: str | None = None
    requested_at: dt.datetime
    expires_at: dt.datetime | None = None
    timeout_action: str | None = None
    escalation_level: int
    escalation_targets: list[dict[str, Any]] = Field(default_factory=list)
    escalation_final_action: str | None = None
    required_approvals: int
    require_all: bool
    approvals_needed: int
    approvers: list[str] = Field(default_factory=list, description="Users whose approvals count now.")
    allowed_approvers: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    allow_self_approval: bool
    on_reject: str
    votes: list[VoteResponse] = Field(default_factory=list)
    decided_by: str | None = None
    decided_at: dt.datetime | None = None
    decision: str | None = None
    decision_source: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime
    updated_at: dt.datetime
    can_approve: bool | None = None
    can_approve_reason: str | None = None
    notices: list[NoticeResponse] | None = Field(
        default=None, description="On the single item: the request's notices and their delivery."
    )


class ApprovalCollectionResponse(_Response):
    """A page of approval requests and how many match in all (Airflow's list shape)."""

    approvals: list[ApprovalResponse]
    total_entries: int


class BulkItemResult(_Response):
    """What happened to one id of a bulk call."""

    id: str
    ok: bool
    status_code: int = Field(description="The status a single call for this id would have answered.")
    state: str | None = Field(default=None, description="The request's state afterwards, when known.")
    detail: str | None = Field(default=None, description="Why it failed.")


class BulkResponse(_Response):
    """One result per id of a bulk call, in the order given."""

    action: str
    results: list[BulkItemResult]
    succeeded: int
    failed: int

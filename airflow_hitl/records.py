"""Immutable views of store rows handed to callers (operator, trigger, API, UI, CLI).

The manager never returns ORM objects: a detached row that lazily loads on attribute
access is a bug waiting in every caller that outlives its session.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_hitl.models.tables import WAITING_STATES, ApprovalNotificationRow, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.policy import EscalationLevel, PolicyView, approvals_needed, counted_approvals


@dataclass(frozen=True, kw_only=True)
class Vote:
    """One person's recorded vote."""

    user: str
    vote: str
    comment: str | None
    reason: str | None
    source: str
    escalation_level: int
    created_at: dt.datetime
    user_roles: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: ApprovalVoteRow) -> Vote:
        """Copy a vote row."""
        return cls(
            user=row.user,
            vote=row.vote,
            comment=row.comment,
            reason=row.reason,
            source=row.source,
            escalation_level=row.escalation_level,
            created_at=row.created_at,
            user_roles=tuple(row.user_roles or ()),
            metadata=dict(row.metadata_ or {}),
            inputs=dict(row.inputs or {}),
        )


@dataclass(frozen=True, kw_only=True)
class Approval:
    """An approval request with its votes."""

    id: str
    dag_id: str
    run_id: str | None
    task_id: str | None
    map_index: int
    try_number: int | None
    origin: str
    title: str
    description: str | None
    reason: str | None
    context: dict[str, Any]
    approval_type: str
    state: str
    requested_by: str | None
    requested_at: dt.datetime
    expires_at: dt.datetime | None
    timeout_action: str | None
    escalation_level: int
    escalation_targets: tuple[EscalationLevel, ...]
    escalation_final_action: str | None
    required_approvals: int
    require_all: bool
    allowed_approvers: tuple[str, ...]
    allowed_roles: tuple[str, ...]
    allow_self_approval: bool
    on_reject: str
    decided_by: str | None
    decided_at: dt.datetime | None
    decision: str | None
    decision_source: str | None
    comment: str | None
    metadata: dict[str, Any]
    notify: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    votes: tuple[Vote, ...] = ()
    #: The form approvers fill in: name -> {value, schema, description, required}.
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: ApprovalRequestRow) -> Approval:
        """Copy a request row and its votes."""
        return cls(
            id=row.id,
            dag_id=row.dag_id,
            run_id=row.run_id,
            task_id=row.task_id,
            map_index=row.map_index,
            try_number=row.try_number,
            origin=row.origin,
            title=row.title,
            description=row.description,
            reason=row.reason,
            context=dict(row.context or {}),
            approval_type=row.approval_type,
            state=row.state,
            requested_by=row.requested_by,
            requested_at=row.requested_at,
            expires_at=row.expires_at,
            timeout_action=row.timeout_action,
            escalation_level=row.escalation_level,
            escalation_targets=tuple(EscalationLevel.from_json(t) for t in row.escalation_targets or ()),
            escalation_final_action=row.escalation_final_action,
            required_approvals=row.required_approvals,
            require_all=row.require_all,
            allowed_approvers=tuple(row.allowed_approvers or ()),
            allowed_roles=tuple(row.allowed_roles or ()),
            allow_self_approval=row.allow_self_approval,
            on_reject=row.on_reject,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
            decision=row.decision,
            decision_source=row.decision_source,
            comment=row.comment,
            metadata=dict(row.metadata_ or {}),
            notify=dict(row.notify or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            votes=tuple(Vote.from_row(v) for v in row.votes),
            inputs=dict(row.inputs or {}),
        )

    @property
    def is_waiting(self) -> bool:
        """True while the request can still be decided (pending or escalated)."""
        return self.state in WAITING_STATES

    @property
    def opened_over_api(self) -> bool:
        """True for a request opened over the REST API: it is no task's gate, whatever ids it names."""
        return self.origin == "api"

    @property
    def approved(self) -> bool:
        """True when the gate opened: approved by people, or by the timeout action."""
        return self.decision == "approved" and self.state in {"approved", "timeout"}

    @property
    def policy(self) -> PolicyView:
        """The policy fields, for :mod:`airflow_hitl.policy`."""
        return policy_of(self)

    @property
    def approvers(self) -> list[str]:
        """Users whose approvals count now."""
        return sorted(counted_approvals(self.policy, ((v.user, v.user_roles, v.vote) for v in self.votes)))

    @property
    def approvals_needed(self) -> int:
        """Distinct allowed approvals that complete the request."""
        return approvals_needed(self.policy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (datetimes as ISO strings), used for XCom and the API."""
        data = asdict(self)
        data["escalation_targets"] = [t.to_json() for t in self.escalation_targets]
        data["approvers"] = self.approvers
        data["approvals_needed"] = self.approvals_needed
        return jsonable(data)


def policy_of(row: Approval | ApprovalRequestRow) -> PolicyView:
    """The policy fields of a request, row or snapshot."""
    return PolicyView(
        requested_by=row.requested_by,
        allowed_approvers=tuple(row.allowed_approvers or ()),
        allowed_roles=tuple(row.allowed_roles or ()),
        allow_self_approval=row.allow_self_approval,
        required_approvals=row.required_approvals,
        require_all=row.require_all,
    )


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of a stored value: ISO datetimes, lists for tuples (every output uses it)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class WaitState:
    """What a waiting trigger needs to know about its request."""

    id: str
    state: str
    expires_at: dt.datetime | None
    escalation_level: int

    @property
    def is_waiting(self) -> bool:
        """True while the request is pending or escalated."""
        return self.state in WAITING_STATES


def read_decision(value: Any) -> dict[str, Any]:
    """The gate's decision XCom as a dict, however it reached the reading task.

    A gate ended by its trigger hands Airflow the decision with the task end event; Airflow
    3.3 stores such XComs serialized once more than the ones a worker pushes, so a downstream
    task receives a JSON string where it expects a dict. Pass what you pulled through this.
    """
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise TypeError(f"not an approval decision: {type(value).__name__}")
    return value


def decision_summary(approval: Approval) -> dict[str, Any]:
    """The gate's XCom: outcome, deciders, comments and times (JSON-ready)."""
    return {
        "request_id": approval.id,
        "state": approval.state,
        "decision": approval.decision,
        "approved": approval.approved,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at.isoformat() if approval.decided_at else None,
        "decision_source": approval.decision_source,
        "comment": approval.comment,
        "approvers": approval.approvers,
        "requested_by": approval.requested_by,
        "requested_at": approval.requested_at.isoformat(),
        "escalation_level": approval.escalation_level,
        "inputs": deciding_inputs(approval),
        "votes": [
            {
                "user": v.user,
                "vote": v.vote,
                "comment": v.comment,
                "reason": v.reason,
                "source": v.source,
                "at": v.created_at.isoformat(),
                "inputs": jsonable(v.inputs),
            }
            for v in approval.votes
        ],
    }


def deciding_inputs(approval: Approval) -> dict[str, Any]:
    """The inputs of the vote that decided the request; the form's defaults when no person did.

    A quorum gate is decided by the vote that completed it (``decided_by``). A timeout or an
    automatic approval has no such vote: an approval then carries the defaults (required inputs
    without one are left out), a rejection carries nothing.
    """
    if approval.decided_by:
        for vote in reversed(approval.votes):
            if vote.user == approval.decided_by:
                return jsonable(vote.inputs)
    if approval.approved:
        return {name: spec.get("value") for name, spec in approval.inputs.items() if not spec.get("required")}
    return {}


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

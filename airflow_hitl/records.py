"""Immutable views of store rows handed to callers (operator, trigger, API, UI, CLI).

The manager never returns ORM objects: a detached row that lazily loads on attribute
access is a bug waiting in every caller that outlives its session.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, TypeVar, get_type_hints

from airflow_hitl.canonical import bound_digest, content_digest
from airflow_hitl.models.tables import ApprovalNotificationRow, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.policy import EscalationLevel, PolicyView, approvals_needed, counted_approvals, gate_opened
from airflow_hitl.vocabulary import WAITING_STATES, Action, Origin

R = TypeVar("R")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # Once per record class: ``dataclasses.fields`` walks the class on every call.
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def record_of(cls: type[R], row: Any, **converted: Any) -> R:
    """The frozen record ``cls`` copied from an ORM ``row``.

    Each field takes the row's attribute of the same name, except those given in
    ``converted`` (JSON columns copied into plain dicts and tuples, ``metadata_``, children):
    a field added to a table and its record is copied without touching this.
    """
    values = {name: getattr(row, name) for name in _field_names(cls) if name not in converted}
    return cls(**values, **converted)


def _record_of_columns(cls: type[R], values: Mapping[str, Any], **converted: Any) -> R:
    # ``record_of`` for a Core row's mapping (columns by name): no ORM object to build first.
    return cls(**{name: values[name] for name in _field_names(cls) if name not in converted}, **converted)


def json_column(value: Any) -> Any:
    """A JSON column read as its text (see :mod:`airflow_hitl.queries`), as values.

    Most stored objects are empty; ``{}`` and ``[]`` skip the parser (a page of 100 requests
    holds about 700 JSON values).
    """
    if value is None or not isinstance(value, str):
        return value
    if value == "{}":
        return {}
    if value == "[]":
        return []
    return json.loads(value)


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
    #: Who cast this vote for ``user`` through a delegation (None: ``user`` did).
    delegate: str | None = None
    #: The form inputs this voter submitted (validated; defaults filled on approve).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 (hex) of what the voter was shown when they voted (None: not known).
    content_digest: str | None = None

    @classmethod
    def from_row(cls, row: ApprovalVoteRow) -> Vote:
        """Copy a vote row."""
        return record_of(
            cls,
            row,
            user_roles=tuple(row.user_roles or ()),
            metadata=dict(row.metadata_ or {}),
            inputs=dict(row.inputs or {}),
        )

    @classmethod
    def from_columns(cls, values: Mapping[str, Any]) -> Vote:
        """Copy a vote read as a Core row (columns by name, JSON columns already values)."""
        return _record_of_columns(
            cls,
            values,
            user_roles=tuple(values["user_roles"] or ()),
            metadata=dict(values["metadata"] or {}),
            inputs=dict(values["inputs"] or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: every field, datetimes as ISO strings."""
        return {name: convert(getattr(self, name)) for name, convert in _VOTE_CONVERTERS}

    @property
    def cast_by(self) -> str:
        """Who cast it, as shown everywhere: ``alice``, or ``bob for alice`` through a delegation."""
        return f"{self.delegate} for {self.user}" if self.delegate else self.user


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
    #: Task ids of the run's gates whose voters may not vote on this one (four eyes across a run).
    distinct_from: tuple[str, ...] = ()
    #: Approve exactly this artifact: the gate's rendered ``bind`` values (name -> text), shown and digested.
    bound: dict[str, str] = field(default_factory=dict)
    #: How long a decision should take, in seconds (``sla``; None: none), and when it was found overdue.
    sla_seconds: float | None = None
    sla_breached_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: ApprovalRequestRow, *, votes: Iterable[Vote] | None = None) -> Approval:
        """Copy a request row and its votes (``votes`` when given, else the row's loaded ones)."""
        return record_of(
            cls,
            row,
            context=dict(row.context or {}),
            escalation_targets=tuple(EscalationLevel.from_json(t) for t in row.escalation_targets or ()),
            allowed_approvers=tuple(row.allowed_approvers or ()),
            allowed_roles=tuple(row.allowed_roles or ()),
            metadata=dict(row.metadata_ or {}),
            notify=dict(row.notify or {}),
            votes=tuple(votes) if votes is not None else tuple(Vote.from_row(v) for v in row.votes),
            inputs=dict(row.inputs or {}),
            distinct_from=tuple(row.distinct_from or ()),
            bound=dict(row.bound or {}),
        )

    @classmethod
    def from_columns(cls, values: Mapping[str, Any], *, votes: tuple[Vote, ...] = ()) -> Approval:
        """Copy a request read as a Core row (columns by name, JSON columns already values) with its votes.

        The list queries read pages this way: building ORM objects first cost more than the
        database did. Converts exactly as :meth:`from_row` does.
        """
        return _record_of_columns(
            cls,
            values,
            context=dict(values["context"] or {}),
            escalation_targets=tuple(EscalationLevel.from_json(t) for t in values["escalation_targets"] or ()),
            allowed_approvers=tuple(values["allowed_approvers"] or ()),
            allowed_roles=tuple(values["allowed_roles"] or ()),
            metadata=dict(values["metadata"] or {}),
            notify=dict(values["notify"] or {}),
            votes=votes,
            inputs=dict(values["inputs"] or {}),
            distinct_from=tuple(values["distinct_from"] or ()),
            bound=dict(values["bound"] or {}),
        )

    @property
    def is_waiting(self) -> bool:
        """True while the request can still be decided (pending or escalated)."""
        return self.state in WAITING_STATES

    @property
    def opened_over_api(self) -> bool:
        """True for a request opened over the REST API: it is no task's gate, whatever ids it names."""
        return self.origin == Origin.API

    @property
    def approved(self) -> bool:
        """True when the gate opened: approved by people, or by the timeout action."""
        return gate_opened(state=self.state, decision=self.decision)

    @cached_property
    def policy(self) -> PolicyView:
        """The policy fields, for :mod:`airflow_hitl.policy` (built once: a listed item asks three times)."""
        return policy_of(self)

    @property
    def approvers(self) -> list[str]:
        """Users whose approvals count now."""
        return sorted(counted_approvals(self.policy, ((v.user, v.user_roles, v.vote) for v in self.votes)))

    @property
    def decider(self) -> str | None:
        """Who decided, as notices show it: ``alice``, or ``bob for alice`` through a delegation."""
        deciding = self.deciding_vote
        return deciding.cast_by if deciding is not None else self.decided_by

    @property
    def deciding_vote(self) -> Vote | None:
        """The vote that decided the request (the last of ``decided_by``); None when no person did."""
        if not self.decided_by:
            return None
        return next((v for v in reversed(self.votes) if v.user == self.decided_by), None)

    def approvers_shown(self) -> list[str]:
        """:attr:`approvers` as notices show them, each with the delegate who cast the vote, if any."""
        cast_by = {v.user: v.cast_by for v in self.votes if v.vote == Action.APPROVE}
        return [cast_by.get(name, name) for name in self.approvers]

    @property
    def approvals_needed(self) -> int:
        """Distinct allowed approvals that complete the request."""
        return approvals_needed(self.policy)

    @cached_property
    def content_digest(self) -> str:
        """SHA-256 of what approvers are shown (see :func:`content_digest_of`); a decision may name it."""
        return content_digest_of(self)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON-ready form of an approval (datetimes as ISO strings); every output derives from it.

        Every dataclass field, in declaration order, plus the derived ``approvers``,
        ``approvals_needed`` and ``content_digest``: a field added to :class:`Approval` (or :class:`Vote`) reaches
        the REST API, the pages, the CLI, webhooks and the XCom summary from here. Built
        field by field, not with ``dataclasses.asdict``: the API serialises pages of 100
        requests with it, and ``asdict``'s deep copies cost more than the database.
        """
        data = {name: convert(getattr(self, name)) for name, convert in _APPROVAL_CONVERTERS}
        data["approvers"] = self.approvers
        data["approvals_needed"] = self.approvals_needed
        data["content_digest"] = self.content_digest
        return data


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _same(value: Any) -> Any:
    return value


_SCALARS = (str, int, bool, float, str | None, int | None, bool | None, float | None)
_SPECIAL: dict[str, Callable[[Any], Any]] = {
    "votes": lambda votes: [v.to_dict() for v in votes],
    "escalation_targets": lambda targets: [t.to_json() for t in targets],
}


def _converters(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    # Each field's conversion to JSON, chosen once from its type: ``jsonable`` on every value of
    # every field (each a walk of isinstance checks) was a third of a 100-item page's cost.
    hints = get_type_hints(cls)
    chosen: list[tuple[str, Callable[[Any], Any]]] = []
    for name in _field_names(cls):
        hint = hints[name]
        if name in _SPECIAL:
            chosen.append((name, _SPECIAL[name]))
        elif hint in _SCALARS:
            chosen.append((name, _same))
        elif hint in (dt.datetime, dt.datetime | None):
            chosen.append((name, _iso))
        elif hint == tuple[str, ...]:
            chosen.append((name, list))
        else:
            chosen.append((name, jsonable))
    return tuple(chosen)


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


#: What approvers are shown of a request, by the names its JSON gives them: what a decision's
#: ``content_digest`` binds. Votes, state and times are not in it: another approver's vote does
#: not change what this one is asked; an escalation (approvers, quorum) does.
SHOWN_FIELDS = (
    "title",
    "description",
    "reason",
    "context",
    "inputs",
    "allowed_approvers",
    "allowed_roles",
    "required_approvals",
    "require_all",
)


def content_digest_of(row: Approval | ApprovalRequestRow) -> str:
    """SHA-256 (hex) of the RFC 8785 canonical JSON of the request's :data:`SHOWN_FIELDS`.

    The same object as ``{name: item[name] for name in SHOWN_FIELDS}`` of the request's JSON
    (REST item, webhook, CLI), plus ``bound`` when the gate binds values (``bind``), so anyone
    holding an item can recompute it. Read from a record
    or from the row locked by a decision, which compares it with the digest the decider saw.
    """
    shown = {
        "title": row.title,
        "description": row.description,
        "reason": row.reason,
        "context": jsonable(row.context or {}),
        "inputs": jsonable(row.inputs or {}),
        "allowed_approvers": list(row.allowed_approvers or ()),
        "allowed_roles": list(row.allowed_roles or ()),
        "required_approvals": row.required_approvals,
        "require_all": bool(row.require_all),
    }
    if row.bound:
        # Only when the gate binds values: the digest of every other request stays what it was.
        shown["bound"] = dict(row.bound)
    return content_digest(shown)


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of a stored value: ISO datetimes, lists for tuples (every output uses it)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_VOTE_CONVERTERS = _converters(Vote)
_APPROVAL_CONVERTERS = _converters(Approval)


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


@dataclass(frozen=True, kw_only=True)
class TaskGate:
    """The task instance try whose gate a closed request was (what the gate closer looks up)."""

    id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int


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
    """The gate's XCom: outcome, deciders, comments and times; a subset of :meth:`Approval.to_dict`."""
    data = approval.to_dict()
    summary = {
        "request_id": data["id"],
        "state": data["state"],
        "decision": data["decision"],
        "approved": approval.approved,
        "decided_by": data["decided_by"],
        "decided_at": data["decided_at"],
        "decision_source": data["decision_source"],
        "comment": data["comment"],
        "approvers": data["approvers"],
        "requested_by": data["requested_by"],
        "requested_at": data["requested_at"],
        "escalation_level": data["escalation_level"],
        "inputs": deciding_inputs(approval),
        "votes": [{**{k: v[k] for k in _SUMMARY_VOTE_FIELDS}, "at": v["created_at"]} for v in data["votes"]],
    }
    if approval.bound:
        # Approve exactly this artifact: each bound value's SHA-256, for airflow_hitl.verify_bound downstream.
        summary["bound"] = {name: bound_digest(value) for name, value in approval.bound.items()}
    return summary


_SUMMARY_VOTE_FIELDS = ("user", "vote", "comment", "reason", "source", "delegate", "inputs")


def deciding_inputs(approval: Approval) -> dict[str, Any]:
    """The inputs of the vote that decided the request; the form's defaults when no person did.

    A quorum gate is decided by the vote that completed it (``decided_by``). A timeout or an
    automatic approval has no such vote: an approval then carries the defaults (required inputs
    without one are left out), a rejection carries nothing.
    """
    deciding = approval.deciding_vote
    if deciding is not None:
        inputs: dict[str, Any] = jsonable(deciding.inputs)
        return inputs
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
        return record_of(cls, row, metadata=dict(row.metadata_ or {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the UI)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out

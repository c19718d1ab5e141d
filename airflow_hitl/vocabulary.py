"""The words of an approval, declared once: states, actions, sources, channels and events.

Every other module (the tables' check constraints, the manager, the API's models, the
notices, the operator) imports them from here, and the pages receive them from the server
(:func:`for_pages`), so adding a state or a channel is one change in one place.

Each kind of word is an enum whose members are ``str`` (``State.PENDING == "pending"``), so
the store, JSON, the audit chain's canonical JSON, Jinja and logs all see the plain value, and
a value read back from the store compares equal to its member. Next to each enum, a
``Literal`` alias of its values (``StateWord``...) types the fields a caller fills in with a
plain string (``ApprovalSpec.timeout_action="escalate"``), so mypy names a misspelt word; a
test keeps each alias equal to its enum.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal


class _Word(str, Enum):
    """A word of the vocabulary: a ``str`` whose every text form is its value.

    Python 3.10 has no ``enum.StrEnum``, and a ``str`` mixin alone gives ``State.PENDING`` for
    ``str()`` (and, from 3.12, for f-strings and ``format``), so both are set here. ``repr`` is
    the value's too: messages list allowed words with ``list(WORDS)`` and ``!r``, and must read
    ``['approve', 'reject']`` as they did when the words were plain strings.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return format(str.__str__(self), format_spec)

    def __repr__(self) -> str:
        return repr(str.__str__(self))


# ---------------------------------------------------------------- request states
class State(_Word):
    """Where a request stands; stored in ``approval_requests.state``."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    ESCALATED = "escalated"
    CANCELLED = "cancelled"


StateWord = Literal["pending", "approved", "rejected", "timeout", "escalated", "cancelled"]
#: How a request was decided (``approval_requests.decision``): it opened the gate or not.
DecisionWord = Literal["approved", "rejected"]

STATES: tuple[State, ...] = tuple(State)
#: Still waiting for people (the trigger keeps watching these).
WAITING_STATES = (State.PENDING, State.ESCALATED)
#: Finished for good: nothing changes a request in one of these.
TERMINAL_STATES = (State.APPROVED, State.REJECTED, State.TIMEOUT, State.CANCELLED)
#: The decisions a closed request records (a timeout records the one its action took).
DECISIONS = (State.APPROVED, State.REJECTED)


# ---------------------------------------------------------------- what people and expiry do
class Action(_Word):
    """What a person, a REST caller or an expiry does to a request."""

    APPROVE = "approve"
    REJECT = "reject"
    ESCALATE = "escalate"
    CANCEL = "cancel"


ActionWord = Literal["approve", "reject", "escalate", "cancel"]
#: A person's vote (``approval_votes.vote``), and a branch gate's outcomes.
VoteWord = Literal["approve", "reject"]
#: What :class:`~airflow_hitl.spec.Decision` may ask for.
DecisionActionWord = Literal["approve", "reject", "cancel"]
#: What happens when a request expires.
TimeoutActionWord = Literal["approve", "reject", "escalate"]
#: What happens when the last escalation level expires.
FinalActionWord = Literal["approve", "reject"]

#: A person's vote.
VOTES = (Action.APPROVE, Action.REJECT)
#: The decisions a REST/UI caller can ask for (bulk included).
ACTIONS = (Action.APPROVE, Action.REJECT, Action.CANCEL)
#: What happens when a request expires.
TIMEOUT_ACTIONS = (Action.APPROVE, Action.REJECT, Action.ESCALATE)
#: What happens when the last escalation level expires.
FINAL_ACTIONS = (Action.APPROVE, Action.REJECT)


class ApprovalType(_Word):
    """Who decides a gate: people, nobody (approved at once), or a condition first."""

    MANUAL = "manual"
    AUTO = "auto"
    CONDITIONAL = "conditional"


ApprovalTypeWord = Literal["manual", "auto", "conditional"]
APPROVAL_TYPES: tuple[ApprovalType, ...] = tuple(ApprovalType)


class Origin(_Word):
    """Who opened a request: a task's gate (the operator) or someone over the REST API.

    Only ``task`` requests ever stand for a task instance's gate.
    """

    TASK = "task"
    API = "api"


OriginWord = Literal["task", "api"]
ORIGINS: tuple[Origin, ...] = tuple(Origin)


class OnReject(_Word):
    """What a rejected gate does to its task: fail it, or skip it and its downstream tasks."""

    FAIL = "fail"
    SKIP = "skip"


OnRejectWord = Literal["fail", "skip"]
ON_REJECT: tuple[OnReject, ...] = tuple(OnReject)


# ---------------------------------------------------------------- where a decision came from
class Source(_Word):
    """Where a decision or a transition came from; stored with votes, requests and audit events."""

    # Channels through which a person votes.
    API = "api"
    UI = "ui"
    EMAIL = "email"
    SLACK = "slack"
    BULK = "bulk"
    CLI = "cli"
    #: A vote cast ahead of time: the owner of a standing approval, applied when a gate opens
    #: or escalates inside its window (:mod:`airflow_hitl.standing`).
    STANDING = "standing"
    #: A cancel written straight to the store by whoever holds its credentials, without the
    #: api-server (``airflow hitl approvals cancel --break-glass``): it can stop a gate, never
    #: approve or reject one, and its actor is ``<os user>@<host>``.
    BREAK_GLASS = "break-glass"
    # Sources of a decision no person made.
    TIMEOUT = "timeout"
    AUTO = "auto"
    CONDITION = "condition"
    AIRFLOW = "airflow"
    SYSTEM = "system"
    OPERATOR = "operator"


SourceWord = Literal[
    "api",
    "ui",
    "email",
    "slack",
    "bulk",
    "cli",
    "standing",
    "break-glass",
    "timeout",
    "auto",
    "condition",
    "airflow",
    "system",
    "operator",
]
#: A source a REST client may name (header :data:`CLIENT_HEADER`).
RestSourceWord = Literal["api", "cli"]

#: Channels through which a person votes.
VOTE_SOURCES = (Source.API, Source.UI, Source.EMAIL, Source.SLACK, Source.BULK, Source.CLI, Source.STANDING)
#: Sources of a decision no person made.
SYSTEM_SOURCES = (Source.TIMEOUT, Source.AUTO, Source.CONDITION, Source.AIRFLOW, Source.SYSTEM, Source.OPERATOR)
SOURCES = (*VOTE_SOURCES, Source.BREAK_GLASS, *SYSTEM_SOURCES)
#: Gates the operator opens and closes itself (``approval_type`` auto, a true condition): they tell nobody.
AUTOMATIC_SOURCES = (Source.AUTO, Source.CONDITION)
#: Who a REST client says it is (header :data:`CLIENT_HEADER`): the source its decisions are
#: recorded with. Only a label: the decider is always the caller of the token.
REST_SOURCES = (Source.API, Source.CLI)
CLIENT_HEADER = "X-HITL-Client"
#: Where the command line says it ran (headers), recorded with its decisions as ``client`` details.
CLIENT_DETAIL_HEADERS = {"os_user": "X-HITL-OS-User", "hostname": "X-HITL-Host"}


# ---------------------------------------------------------------- notices
class Channel(_Word):
    """Where notices go."""

    EMAIL = "email"
    SLACK = "slack"
    WEBHOOK = "webhook"
    IN_APP = "in_app"
    #: Microsoft Teams: an Adaptive Card posted to a Workflows or incoming-webhook URL.
    TEAMS = "teams"


ChannelWord = Literal["email", "slack", "webhook", "in_app", "teams"]
CHANNELS: tuple[Channel, ...] = tuple(Channel)


class Event(_Word):
    """What a notice announces, in the order a request can go through them."""

    REQUIRED = "required"
    REMINDER = "reminder"
    ESCALATED = "escalated"
    TIMED_OUT = "timed_out"
    DECIDED = "decided"
    CANCELLED = "cancelled"
    #: To the owner of a standing approval: it cast their vote on a gate (never to approvers).
    STANDING_USED = "standing_used"
    #: A gate still waits at ``requested_at + sla``: its current approvers are told (it keeps waiting).
    SLA_BREACHED = "sla_breached"


EventWord = Literal[
    "required", "reminder", "escalated", "timed_out", "decided", "cancelled", "standing_used", "sla_breached"
]
#: Notice events, in the order a request can go through them.
EVENTS: tuple[Event, ...] = tuple(Event)
#: Events that ask people to act (they carry decision links and buttons).
ACTION_EVENTS = (Event.REQUIRED, Event.REMINDER, Event.ESCALATED, Event.SLA_BREACHED)
#: Events that tell people how a request ended.
FINAL_EVENTS = (Event.DECIDED, Event.TIMED_OUT, Event.CANCELLED)


class NoticeStatus(_Word):
    """Where one notice to one recipient stands (``approval_notifications.status``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    READ = "read"


NOTIFICATION_STATUSES: tuple[NoticeStatus, ...] = tuple(NoticeStatus)


class OutboxStatus(_Word):
    """An outbox intent: waiting to be sent (or retried), delivered, given up, or no longer needed."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


OUTBOX_STATUSES: tuple[OutboxStatus, ...] = tuple(OutboxStatus)


class StandingDue(_Word):
    """A standing approval's vote owed to a gate: not cast yet, cast, or refused (with the reason)."""

    DUE = "due"
    USED = "used"
    SKIPPED = "skipped"


STANDING_DUE_STATUSES: tuple[StandingDue, ...] = tuple(StandingDue)


# ---------------------------------------------------------------- the gate's task
class TaskEnd(_Word):
    """How a closed request ends its gate's task in Airflow (never stored: Airflow's own states)."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


# ---------------------------------------------------------------- the audit trail
class AuditType(_Word):
    """The ``event_type`` of an audit event: what happened to a request (or a delegation)."""

    REQUESTED = "requested"
    VOTE = "vote"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    ESCALATED = "escalated"
    CANCELLED = "cancelled"
    #: Audit events of delegations (``request_id`` NULL: a delegation belongs to no request).
    DELEGATION_CREATED = "delegation_created"
    DELEGATION_ENDED = "delegation_ended"
    #: Audit events of standing approvals (``request_id`` NULL); their uses are the votes they cast.
    STANDING_CREATED = "standing_created"
    STANDING_REVOKED = "standing_revoked"
    #: A gate still waited when its SLA ran out (``sla``): recorded once; the gate keeps waiting.
    SLA_BREACHED = "sla_breached"


DELEGATION_EVENTS = (AuditType.DELEGATION_CREATED, AuditType.DELEGATION_ENDED)
STANDING_EVENTS = (AuditType.STANDING_CREATED, AuditType.STANDING_REVOKED)
#: Where a standing approval stands at a given time.
STANDING_STATES = ("scheduled", "active", "expired", "used_up", "revoked")
#: Where a delegation stands at a given time.
DELEGATION_STATES = ("scheduled", "active", "expired", "ended")


def final_event(state: str) -> Event:
    """The notice event that announces a request that ended in ``state``."""
    if state == State.TIMEOUT:
        return Event.TIMED_OUT
    if state == State.CANCELLED:
        return Event.CANCELLED
    return Event.DECIDED


def for_pages() -> dict[str, Any]:
    """The vocabulary the Approvals pages need, embedded in each page as JSON."""
    return {
        "states": [str(s) for s in STATES],
        "waiting_states": [str(s) for s in WAITING_STATES],
        "terminal_states": [str(s) for s in TERMINAL_STATES],
        "votes": [str(v) for v in VOTES],
        "sources": [str(s) for s in SOURCES],
        "channels": [str(c) for c in CHANNELS],
        "events": [str(e) for e in EVENTS],
    }

"""The words of an approval, declared once: states, actions, sources, channels and events.

Every other module (the tables' check constraints, the manager, the API's models, the
notices, the operator) imports them from here, and the pages receive them from the server
(:func:`for_pages`), so adding a state or a channel is one change in one place.
"""

from __future__ import annotations

from typing import Any

# ---------------------------------------------------------------- request states
PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
TIMEOUT = "timeout"
ESCALATED = "escalated"
CANCELLED = "cancelled"

STATES = (PENDING, APPROVED, REJECTED, TIMEOUT, ESCALATED, CANCELLED)
#: Still waiting for people (the trigger keeps watching these).
WAITING_STATES = (PENDING, ESCALATED)
#: Finished for good: nothing changes a request in one of these.
TERMINAL_STATES = (APPROVED, REJECTED, TIMEOUT, CANCELLED)

# ---------------------------------------------------------------- what people and expiry do
APPROVE = "approve"
REJECT = "reject"
ESCALATE = "escalate"
CANCEL = "cancel"

#: A person's vote.
VOTES = (APPROVE, REJECT)
#: The decisions a REST/UI caller can ask for (bulk included).
ACTIONS = (APPROVE, REJECT, CANCEL)
#: What happens when a request expires.
TIMEOUT_ACTIONS = (APPROVE, REJECT, ESCALATE)
#: What happens when the last escalation level expires.
FINAL_ACTIONS = (APPROVE, REJECT)

APPROVAL_TYPES = ("manual", "auto", "conditional")

#: Who opened a request: a task's gate (the operator) or someone over the REST API. Only
#: ``task`` requests ever stand for a task instance's gate.
TASK_ORIGIN = "task"
API_ORIGIN = "api"
ORIGINS = (TASK_ORIGIN, API_ORIGIN)
ON_REJECT = ("fail", "skip")

# ---------------------------------------------------------------- where a decision came from
#: Channels through which a person votes.
VOTE_SOURCES = ("api", "ui", "email", "slack", "bulk", "cli")
#: Sources of a decision no person made.
SYSTEM_SOURCES = ("timeout", "auto", "condition", "airflow", "system", "operator")
#: A cancel written straight to the store by whoever holds its credentials, without the
#: api-server (``airflow hitl approvals cancel --break-glass``): it can stop a gate, never
#: approve or reject one, and its actor is ``<os user>@<host>``.
BREAK_GLASS = "break-glass"
SOURCES = (*VOTE_SOURCES, BREAK_GLASS, *SYSTEM_SOURCES)
#: Who a REST client says it is (header :data:`CLIENT_HEADER`): the source its decisions are
#: recorded with. Only a label: the decider is always the caller of the token.
REST_SOURCES = ("api", "cli")
CLIENT_HEADER = "X-HITL-Client"
#: Where the command line says it ran (headers), recorded with its decisions as ``client`` details.
CLIENT_DETAIL_HEADERS = {"os_user": "X-HITL-OS-User", "hostname": "X-HITL-Host"}

# ---------------------------------------------------------------- notices
EMAIL = "email"
SLACK = "slack"
WEBHOOK = "webhook"
IN_APP = "in_app"
CHANNELS = (EMAIL, SLACK, WEBHOOK, IN_APP)

REQUIRED = "required"
REMINDER = "reminder"
ESCALATED_EVENT = "escalated"
TIMED_OUT = "timed_out"
DECIDED = "decided"
CANCELLED_EVENT = "cancelled"
#: Notice events, in the order a request can go through them.
EVENTS = (REQUIRED, REMINDER, ESCALATED_EVENT, TIMED_OUT, DECIDED, CANCELLED_EVENT)
#: Events that ask people to act (they carry decision links and buttons).
ACTION_EVENTS = (REQUIRED, REMINDER, ESCALATED_EVENT)
#: Events that tell people how a request ended.
FINAL_EVENTS = (DECIDED, TIMED_OUT, CANCELLED_EVENT)

# ---------------------------------------------------------------- delegation
#: Audit events of delegations (``request_id`` NULL: a delegation belongs to no request).
DELEGATION_CREATED = "delegation_created"
DELEGATION_ENDED = "delegation_ended"
DELEGATION_EVENTS = (DELEGATION_CREATED, DELEGATION_ENDED)
#: Where a delegation stands at a given time.
DELEGATION_STATES = ("scheduled", "active", "expired", "ended")

NOTIFICATION_STATUSES = ("pending", "sent", "failed", "read")
#: An outbox intent: waiting to be sent (or retried), delivered, given up, or no longer needed.
OUTBOX_STATUSES = ("pending", "sent", "failed", "cancelled")


def final_event(state: str) -> str:
    """The notice event that announces a request that ended in ``state``."""
    if state == TIMEOUT:
        return TIMED_OUT
    if state == CANCELLED:
        return CANCELLED_EVENT
    return DECIDED


def for_pages() -> dict[str, Any]:
    """The vocabulary the Approvals pages need, embedded in each page as JSON."""
    return {
        "states": list(STATES),
        "waiting_states": list(WAITING_STATES),
        "terminal_states": list(TERMINAL_STATES),
        "votes": list(VOTES),
        "sources": list(SOURCES),
        "channels": list(CHANNELS),
        "events": list(EVENTS),
    }

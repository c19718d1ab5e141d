"""Approval policy: who may vote, when quorum is reached, how escalation widens the circle.

Pure functions over plain values so the manager, the API's ``can_approve`` flag and the
UI's disabled buttons all give the same answer for the same request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_hitl.exceptions import InvalidApprovalConfig, InvalidInput
from airflow_hitl.limits import MAX_TIMEOUT_SECONDS
from airflow_hitl.vocabulary import WAITING_STATES, Action, OnReject, State, TaskEnd

T = TypeVar("T")
D = TypeVar("D")


class ConfigProblems:
    """Every wrong option found so far, so one error can name them all at once.

    A DAG author fixing a gate should see all of its mistakes in one parse, the way Airflow
    lists every misspelled keyword, not one field per attempt.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, field_name: str, message: str) -> None:
        """Record one problem with ``field_name``."""
        self.items.append((field_name, message))

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Record the problems of an :class:`InvalidInput` raised inside instead of raising it."""
        try:
            yield
        except InvalidInput as err:
            self.items.extend(err.problems)

    def parse(self, parse: Callable[..., T], *args: Any, default: D, **kwargs: Any) -> T | D:
        """``parse(*args, **kwargs)``, or ``default`` (recording the problems) when it raises InvalidInput."""
        with self.collecting():
            return parse(*args, **kwargs)
        return default

    def raise_if_any(self, error: type[InvalidInput] = InvalidApprovalConfig, *, where: str = "") -> None:
        """Raise one ``error`` listing every recorded problem (nothing when there is none)."""
        if self.items:
            raise error.of(self.items, where=where)


@dataclass(frozen=True, kw_only=True)
class Principal:
    """An Airflow user as our policy sees them: a name and the roles the auth manager gives."""

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, name: str, roles: Iterable[str] = ()) -> Principal:
        """Convenience constructor taking any iterable of roles."""
        return cls(name=name, roles=frozenset(r for r in roles if r))


@dataclass(frozen=True, kw_only=True)
class Eligibility:
    """Whether a user may vote now, and if not, why (shown in the API and UI)."""

    allowed: bool
    reason: str | None = None
    code: str | None = None
    #: Allowed through a delegation: whose vote the user would cast.
    on_behalf_of: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, kw_only=True)
class EscalationLevel:
    """One escalation step: who is added as approvers, and how long they have."""

    approvers: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    timeout: dt.timedelta
    required_approvals: int | None = None

    def __post_init__(self) -> None:
        # One name is a one-item list, as everywhere else; tuple("bob") would spell it out.
        for name in ("approvers", "roles"):
            object.__setattr__(self, name, names_tuple(getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        """The form stored in ``approval_requests.escalation_targets``."""
        return {
            "approvers": list(self.approvers),
            "roles": list(self.roles),
            "timeout_seconds": self.timeout.total_seconds(),
            "required_approvals": self.required_approvals,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EscalationLevel:
        """Inverse of :meth:`to_json`."""
        return cls(
            approvers=tuple(data.get("approvers") or ()),
            roles=tuple(data.get("roles") or ()),
            timeout=dt.timedelta(seconds=float(data["timeout_seconds"])),
            required_approvals=data.get("required_approvals"),
        )

    @classmethod
    def parse(cls, value: Any, *, field_name: str = "escalate_to", index: int = 0) -> EscalationLevel:
        """Accept an ``EscalationLevel`` or a dict, validating it with errors naming every wrong field."""
        name = f"{field_name}[{index}]"
        problems = ConfigProblems()
        names_ok = True
        if isinstance(value, EscalationLevel):
            # Built by a Python caller: its fields are checked like a dict's.
            value = {
                "approvers": value.approvers,
                "roles": value.roles,
                "timeout": value.timeout,
                "required_approvals": value.required_approvals,
            }
        if isinstance(value, Mapping):
            unknown = set(value) - {"approvers", "roles", "timeout", "required_approvals"}
            if unknown:
                problems.add(name, f"unknown keys {sorted(unknown)}")
            timeout = value.get("timeout")
            if not isinstance(timeout, dt.timedelta):
                problems.add(f"{name}.timeout", "must be a datetime.timedelta")
                timeout = dt.timedelta(seconds=1)  # a placeholder so the other fields are checked too
            level = cls(
                approvers=tuple(problems.parse(_str_list, value.get("approvers"), f"{name}.approvers", default=[])),
                roles=tuple(problems.parse(_str_list, value.get("roles"), f"{name}.roles", default=[])),
                timeout=timeout,
                required_approvals=value.get("required_approvals"),
            )
            names_ok = not any(f in (f"{name}.approvers", f"{name}.roles") for f, _ in problems.items)
        else:
            raise InvalidApprovalConfig(name, "must be an EscalationLevel or a dict with approvers/roles/timeout")
        if names_ok and not level.approvers and not level.roles:
            problems.add(name, "names no approvers and no roles to escalate to")
        if level.timeout <= dt.timedelta(0):
            problems.add(f"{name}.timeout", "must be positive")
        elif level.timeout.total_seconds() > MAX_TIMEOUT_SECONDS:
            # As for the gate's own timeout: the level's deadline must stay a time we can store.
            problems.add(f"{name}.timeout", f"must be at most {MAX_TIMEOUT_SECONDS} seconds (ten years)")
        if level.required_approvals is not None and (
            not isinstance(level.required_approvals, int)
            or isinstance(level.required_approvals, bool)
            or level.required_approvals < 1
        ):
            problems.add(f"{name}.required_approvals", "must be a positive integer")
        problems.raise_if_any()
        return level


def _str_list(value: Any, field_name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) and v for v in value):
        raise InvalidApprovalConfig(field_name, "must be a list of non-empty strings")
    return list(value)


def names_tuple(value: Any) -> Any:
    """``value`` as a tuple of names when it is one name or a collection of them; else unchanged.

    For frozen dataclasses that take names: anything else stays as given, for their validation
    to name it.
    """
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return value


def str_list(value: Any, field_name: str) -> list[str]:
    """Validate a list of names (users, roles); a single string is taken as a one-item list."""
    return _str_list(value, field_name)


@dataclass(frozen=True, kw_only=True)
class PolicyView:
    """The parts of a request the policy looks at."""

    requested_by: str | None
    allowed_approvers: Sequence[str]
    allowed_roles: Sequence[str]
    allow_self_approval: bool
    required_approvals: int
    require_all: bool


def is_allowed_approver(policy: PolicyView, name: str, roles: Iterable[str]) -> bool:
    """True when the user is named, holds a named role, or nobody is named at all."""
    if not policy.allowed_approvers and not policy.allowed_roles:
        return True
    return name in policy.allowed_approvers or bool(set(roles) & set(policy.allowed_roles))


def check_vote(policy: PolicyView, user: Principal, *, action: str, voters: Iterable[str]) -> Eligibility:
    """May ``user`` cast ``action`` (:attr:`Action.APPROVE` or :attr:`Action.REJECT`) now? The reason says why not."""
    if user.name in set(voters):
        return Eligibility(allowed=False, code="already_voted", reason="you have already voted on this request")
    if not is_allowed_approver(policy, user.name, user.roles):
        return Eligibility(allowed=False, code="not_allowed", reason="you are not an allowed approver of this request")
    if action == Action.APPROVE and not policy.allow_self_approval and user.name == policy.requested_by:
        return Eligibility(
            allowed=False,
            code="self_approval",
            reason="you triggered this run and cannot approve it yourself",
        )
    return Eligibility(allowed=True)


def separation_check(deciders: Iterable[str | None], took_part: Mapping[str, Iterable[str]]) -> Eligibility:
    """Four eyes across a run: may ``deciders`` vote on a gate whose named gates had ``took_part`` in them?

    ``deciders`` are everyone a vote would stand for: its voter and, through a delegation, the
    delegate who casts it. ``took_part`` maps each gate the request names (``distinct_from``) to
    everyone who voted there in the same run, voters and their delegates alike: whoever is in
    both may not vote, whichever way round the delegation went.
    """
    names = [name for name in deciders if name]
    for gate, people in took_part.items():
        found = next((name for name in names if name in set(people)), None)
        if found is not None:
            return Eligibility(
                allowed=False,
                code="distinct_from",
                reason=f"{found} already voted on gate {gate!r} of this run; this gate needs someone else",
            )
    return Eligibility(allowed=True)


def approvals_needed(policy: PolicyView) -> int:
    """How many distinct allowed approvals complete the request."""
    if policy.require_all and policy.allowed_approvers:
        eligible = [u for u in policy.allowed_approvers if policy.allow_self_approval or u != policy.requested_by]
        return max(len(set(eligible)), 1)
    return policy.required_approvals


def counted_approvals(policy: PolicyView, votes: Iterable[tuple[str, Iterable[str], str]]) -> set[str]:
    """The distinct users whose approve votes count now: (user, roles at vote time, vote)."""
    counted: set[str] = set()
    for user, roles, vote in votes:
        if vote != Action.APPROVE or not is_allowed_approver(policy, user, roles):
            continue
        if not policy.allow_self_approval and user == policy.requested_by:
            continue
        counted.add(user)
    return counted


def quorum_reached(policy: PolicyView, votes: Iterable[tuple[str, Iterable[str], str]]) -> bool:
    """True when enough distinct allowed approvers have approved."""
    counted = counted_approvals(policy, votes)
    if policy.require_all and policy.allowed_approvers:
        needed = {u for u in policy.allowed_approvers if policy.allow_self_approval or u != policy.requested_by}
        return needed <= counted
    return len(counted) >= policy.required_approvals


# ---------------------------------------------------------------------- how a closed gate ends its task


def gate_opened(*, state: str, decision: str | None) -> bool:
    """True when a request opened its gate: approved by people, or by the timeout action."""
    return decision == State.APPROVED and state in (State.APPROVED, State.TIMEOUT)


@dataclass(frozen=True, kw_only=True)
class GateOutcome:
    """How a closed request ends its gate's task.

    :param end: Success, failure or skip of the task instance.
    :param follow: For a branch gate that did not fail, the outcome whose branch the task follows
        (``approve`` or ``reject``); None otherwise.
    """

    end: TaskEnd
    follow: Action | None = None


def gate_outcome(*, state: str, decision: str | None, on_reject: str, branching: bool) -> GateOutcome:
    """How a request that ended in ``state`` ends its task; the trigger and the operator both ask this.

    Approved (by people or by the timeout action): success. Rejected (by people or the timeout
    action): failure, or a skip with ``on_reject="skip"``. Cancelled: failure, whatever the gate
    (a branch gate takes no branch). A branch gate (``branching``) succeeds when approved or
    rejected and follows that outcome's branch; ``on_reject`` does not apply to it.

    :raises ValueError: The request is still waiting: it ends nothing yet.
    """
    if state in WAITING_STATES:
        raise ValueError(f"a {state} request ends no task yet")
    if state == State.CANCELLED:
        return GateOutcome(end=TaskEnd.FAILED)
    opened = gate_opened(state=state, decision=decision)
    if branching:
        return GateOutcome(end=TaskEnd.SUCCESS, follow=Action.APPROVE if opened else Action.REJECT)
    if opened:
        return GateOutcome(end=TaskEnd.SUCCESS)
    if on_reject == OnReject.SKIP:
        return GateOutcome(end=TaskEnd.SKIPPED)
    return GateOutcome(end=TaskEnd.FAILED)

"""What a gate asks for, and how requests are looked up.

:class:`ApprovalSpec` is everything needed to open a gate, validated before anything is
written (naming every wrong field at once); :class:`ApprovalFilter` the filters shared by
the lists; :class:`TimeoutOutcome` what applying a timeout did. The
:class:`~airflow_hitl.manager.ApprovalManager` takes and returns them. Which request a task
instance try's gate is, and which waiting ones its new request closes, is decided here too
(:func:`same_task_try`, :func:`adopted`, :func:`closed_by`, :func:`why_closed`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, false, or_, select, text

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.forms import parse_inputs
from airflow_hitl.limits import INT32_MAX, MAX_TIMEOUT_SECONDS, json_problem, text_problem, time_problem
from airflow_hitl.models.tables import WAITING_PREDICATE, ApprovalRequestRow
from airflow_hitl.policy import ConfigProblems, EscalationLevel, Principal, names_tuple, str_list
from airflow_hitl.records import Approval
from airflow_hitl.settings import HitlSettings
from airflow_hitl.vocabulary import (
    APPROVAL_TYPES,
    FINAL_ACTIONS,
    ON_REJECT,
    TERMINAL_STATES,
    TIMEOUT_ACTIONS,
    WAITING_STATES,
    Action,
    ApprovalType,
    ApprovalTypeWord,
    DecisionActionWord,
    FinalActionWord,
    OnReject,
    OnRejectWord,
    Origin,
    OriginWord,
    Source,
    SourceWord,
    State,
    StateWord,
    TimeoutActionWord,
)

DagAccess = Callable[[str], str | None]
"""Checks the caller's access to a request's DAG: returns why not, or None when allowed."""

#: Columns a list may be ordered by (``-`` in front for descending).
ORDERABLE = {
    "requested_at": ApprovalRequestRow.requested_at,
    "expires_at": ApprovalRequestRow.expires_at,
    "decided_at": ApprovalRequestRow.decided_at,
    "updated_at": ApprovalRequestRow.updated_at,
    "dag_id": ApprovalRequestRow.dag_id,
    "state": ApprovalRequestRow.state,
    "title": ApprovalRequestRow.title,
}


#: At most this many gates in one ``distinct_from`` (a DAG with more gates than that is not separation of duties).
MAX_DISTINCT_FROM = 100
#: At most this many bound values on one gate.
MAX_BOUND = 50


def utcnow() -> dt.datetime:
    """The current time, UTC-aware."""
    return dt.datetime.now(dt.timezone.utc)


def aware_utc(value: Any, field_name: str, problems: ConfigProblems) -> dt.datetime | None:
    """``value`` as a UTC time, or None with the problem added: a date and time, with a zone, the store can keep."""
    if not isinstance(value, dt.datetime):
        problems.add(field_name, "must be a date and time")
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        problems.add(field_name, "must carry a time zone (e.g. 2026-12-01T09:00:00Z)")
        return None
    if problem := time_problem(value):
        problems.add(field_name, problem)
        return None
    return value.astimezone(dt.timezone.utc)


def add_text_problems(problems: ConfigProblems, **texts: Any) -> None:
    """Record each of ``texts`` that is not a string, or that the store cannot keep (None is fine)."""
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            problems.add(name, "must be a string")
        elif value and (problem := text_problem(value)):
            problems.add(name, problem)


def check_texts(**texts: str | None) -> None:
    """Raise :class:`InvalidInput` naming every text the store could not keep (NUL, lone surrogates).

    The REST API refuses them in its bodies; an emailed link's form, a Slack modal and the CLI's
    arguments reach the manager as they came, and PostgreSQL would refuse them only at INSERT,
    as an error of the store rather than of the input.
    """
    problems = ConfigProblems()
    add_text_problems(problems, **texts)
    problems.raise_if_any(InvalidInput)


@dataclass(frozen=True, kw_only=True)
class ApprovalSpec:
    """Everything needed to open an approval gate; validated before anything is written."""

    dag_id: str
    title: str
    run_id: str | None = None
    task_id: str | None = None
    map_index: int = -1
    try_number: int | None = None
    description: str | None = None
    reason: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    approval_type: ApprovalTypeWord | ApprovalType = ApprovalType.MANUAL
    requested_by: str | None = None
    timeout: dt.timedelta | None = None
    timeout_action: TimeoutActionWord | Action | None = None
    #: How long a decision should take: past it, the approvers are told and it is recorded (no timeout).
    sla: dt.timedelta | None = None
    escalation_targets: Sequence[EscalationLevel] = ()
    escalation_final_action: FinalActionWord | Action | None = None
    required_approvals: int = 1
    require_all: bool = False
    allowed_approvers: Sequence[str] = ()
    allowed_roles: Sequence[str] = ()
    allow_self_approval: bool = False
    on_reject: OnRejectWord | OnReject = OnReject.FAIL
    metadata: Mapping[str, Any] = field(default_factory=dict)
    notify: Mapping[str, Any] = field(default_factory=dict)
    #: Form inputs approvers fill in: name -> Airflow ``Param``, its stored form, or a plain default.
    inputs: Mapping[str, Any] = field(default_factory=dict)
    #: Task ids of gates of the same DAG run whose voters may not vote on this one (four eyes across a run).
    distinct_from: Sequence[str] = ()
    #: Approve exactly this artifact: the rendered ``bind`` values, name -> text, shown to approvers.
    bound: Mapping[str, str] = field(default_factory=dict)
    #: Airflow's id of the task instance try whose gate this is (``ti.id``: a UUID, new for every
    #: try). A DAG run deleted and created again under its run id starts again at try 1 with new
    #: task instances: the id tells its gate from the old run's. None: not known.
    task_instance_id: str | None = None

    def __post_init__(self) -> None:
        # One name is a one-item list, as the operator takes it; list("alice") would spell it out.
        for name in ("allowed_approvers", "allowed_roles", "distinct_from"):
            object.__setattr__(self, name, names_tuple(getattr(self, name)))
        # One spelling of an id (Airflow hands a UUID, its DB 32 hex digits on SQLite): compared as text.
        if (canonical := canonical_uuid(self.task_instance_id)) is not None:
            object.__setattr__(self, "task_instance_id", canonical)

    def validate(self, error: type[InvalidInput] = InvalidInput, *, where: str = "") -> None:
        """Raise one ``error`` naming every wrong field; the operator passes its own subclass."""
        self.problems().raise_if_any(error, where=where)

    def problems(self) -> ConfigProblems:
        """Every wrong field, checked independently so one look shows them all."""
        problems = ConfigProblems()
        if not isinstance(self.dag_id, str) or not self.dag_id:
            problems.add("dag_id", "is required")
        if not isinstance(self.title, str) or not self.title.strip():
            problems.add("title", "is required and must be a non-empty string")
        elif len(self.title) > 500:
            problems.add("title", "must be at most 500 characters")
        if self.approval_type not in APPROVAL_TYPES:
            problems.add("approval_type", f"must be one of {list(APPROVAL_TYPES)}, got {self.approval_type!r}")
        self._timing_problems(problems)
        self._people_problems(problems)
        self._bound_problems(problems)
        self._task_instance_problems(problems)
        if self.on_reject not in ON_REJECT:
            problems.add("on_reject", f"must be one of {list(ON_REJECT)}, got {self.on_reject!r}")
        self._validate_storable(problems)
        with problems.collecting():
            parse_inputs(self.inputs)
        for name in ("context", "metadata", "notify"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                problems.add(name, "must be a dict")
                continue
            try:
                json.dumps(value, default=json_default)
            except (TypeError, ValueError, RecursionError) as err:
                problems.add(name, f"must be JSON-serialisable: {err}")
        return problems

    def _timing_problems(self, problems: ConfigProblems) -> None:
        # How long people have, and what happens then.
        if self.timeout is not None:
            if not isinstance(self.timeout, dt.timedelta):
                problems.add("timeout", "must be a datetime.timedelta")
            elif self.timeout <= dt.timedelta(0):
                problems.add("timeout", "must be positive")
        self._sla_problems(problems)
        if self.timeout_action is not None and self.timeout_action not in TIMEOUT_ACTIONS:
            problems.add("timeout_action", f"must be one of {list(TIMEOUT_ACTIONS)}, got {self.timeout_action!r}")
        if self.timeout_action is not None and self.timeout is None:
            problems.add("timeout", f"is required when timeout_action={self.timeout_action!r}")
        if self.timeout_action == Action.ESCALATE:
            if not self.escalation_targets:
                problems.add("escalate_to", "is required when timeout_action='escalate'")
            if self.escalation_final_action not in FINAL_ACTIONS:
                problems.add(
                    "escalation_final_action",
                    f"must be one of {list(FINAL_ACTIONS)}, got {self.escalation_final_action!r}",
                )
        elif self.escalation_targets:
            problems.add("escalate_to", "is only used with timeout_action='escalate'")
        if not isinstance(self.escalation_targets, (list, tuple)):
            problems.add("escalate_to", "must be a list of EscalationLevel")
            return
        for i, level in enumerate(self.escalation_targets):
            # The operator and the REST API convert first; a Python caller may not have.
            if not isinstance(level, EscalationLevel):
                problems.add(f"escalate_to[{i}]", f"must be an EscalationLevel, got {type(level).__name__}")
            else:
                problems.parse(EscalationLevel.parse, level, index=i, default=None)

    def _sla_problems(self, problems: ConfigProblems) -> None:
        # An SLA tells people a gate is overdue: it must run out while the gate can still wait.
        if self.sla is None:
            return
        if not isinstance(self.sla, dt.timedelta):
            problems.add("sla", "must be a datetime.timedelta")
        elif self.sla <= dt.timedelta(0):
            problems.add("sla", "must be positive")
        elif isinstance(self.timeout, dt.timedelta) and self.sla >= self.timeout:
            problems.add("sla", f"must be shorter than the timeout ({self.timeout}): nothing waits past it")

    def _people_problems(self, problems: ConfigProblems) -> None:
        # Who may decide, and how many of them must approve.
        quorum_ok = (
            isinstance(self.required_approvals, int)
            and not isinstance(self.required_approvals, bool)
            and self.required_approvals >= 1
        )
        if not quorum_ok:
            problems.add("required_approvals", "must be a positive integer")
        approvers = problems.parse(str_list, self.allowed_approvers, "allowed_approvers", default=[])
        problems.parse(str_list, self.allowed_roles, "allowed_roles", default=[])
        if quorum_ok and approvers and not self.allowed_roles and self.required_approvals > len(set(approvers)):
            problems.add(
                "required_approvals",
                f"asks for {self.required_approvals} approvals but allowed_approvers names only "
                f"{len(set(approvers))} people",
            )
        if self.require_all and not approvers:
            problems.add("require_all", "needs allowed_approvers: 'all' must be a known list of people")
        self._separation_problems(problems)

    def _separation_problems(self, problems: ConfigProblems) -> None:
        # Four eyes across a run: gates of the same run, so only a task's gate can name them.
        names = problems.parse(str_list, self.distinct_from, "distinct_from", default=[])
        if not names:
            return
        if len(names) > MAX_DISTINCT_FROM:
            problems.add("distinct_from", f"names at most {MAX_DISTINCT_FROM} gates")
        if any(len(name) > 250 for name in names):
            problems.add("distinct_from", "task ids are at most 250 characters")
        if self.task_id is not None and self.task_id in names:
            problems.add("distinct_from", f"names the gate itself ({self.task_id!r})")
        add_text_problems(problems, **{f"distinct_from[{i}]": name for i, name in enumerate(names)})

    def _bound_problems(self, problems: ConfigProblems) -> None:
        # Bound values are shown and digested as they are: names like inputs', texts the store can keep.
        if not isinstance(self.bound, Mapping):
            problems.add("bind", "must be a dict of name -> value")
            return
        if len(self.bound) > MAX_BOUND:
            problems.add("bind", f"binds at most {MAX_BOUND} values")
        for name, value in self.bound.items():
            if not isinstance(name, str) or not name.isidentifier() or len(name) > 100:
                problems.add("bind", f"names must be identifiers of at most 100 characters, got {name!r}")
            elif not isinstance(value, str):
                problems.add(f"bind[{name!r}]", f"must render to a string, got {type(value).__name__}")
            elif len(value) > 10_000:
                problems.add(f"bind[{name!r}]", "must be at most 10000 characters")
            else:
                add_text_problems(problems, **{f"bind[{name!r}]": value})

    def _task_instance_problems(self, problems: ConfigProblems) -> None:
        # It names one try of one task instance: the try's own key must come with it.
        if self.task_instance_id is None:
            return
        if canonical_uuid(self.task_instance_id) is None:
            problems.add("task_instance_id", "must be a UUID (Airflow's id of the task instance try)")
        elif not self.run_id or not self.task_id or self.try_number is None:
            problems.add("task_instance_id", "names a task instance try: run_id, task_id and try_number go with it")

    def _validate_storable(self, problems: ConfigProblems) -> None:
        # The same limits as the REST API's bodies (airflow_hitl.limits): what the store
        # cannot keep is refused here, naming the field, not by the database later.
        names = ("dag_id", "title", "run_id", "task_id", "description", "reason", "requested_by")
        add_text_problems(problems, **{name: getattr(self, name) for name in names})
        if not isinstance(self.map_index, int) or not -1 <= self.map_index <= INT32_MAX:
            problems.add("map_index", f"must be an integer from -1 to {INT32_MAX}")
        if isinstance(self.required_approvals, int) and self.required_approvals > INT32_MAX:
            problems.add("required_approvals", f"must be at most {INT32_MAX}")
        if isinstance(self.timeout, dt.timedelta) and self.timeout.total_seconds() > MAX_TIMEOUT_SECONDS:
            problems.add("timeout", f"must be at most {MAX_TIMEOUT_SECONDS} seconds (ten years)")
        limits = HitlSettings.load()
        for name in ("context", "metadata"):
            problem = json_problem(
                getattr(self, name), max_depth=limits.max_json_depth, max_bytes=limits.max_json_bytes
            )
            if problem:
                problems.add(name, problem)


@dataclass(frozen=True, kw_only=True)
class ApprovalFilter:
    """Filters shared by list, pending and history."""

    states: Sequence[StateWord | State] | None = None
    dag_id: str | None = None
    dag_ids: Iterable[str] | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    origin: OriginWord | Origin | None = None
    requested_by: str | None = None
    decided_by: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    ids: Iterable[str] | None = None


@dataclass(frozen=True, kw_only=True)
class LinkUse:
    """The emailed link that carries a decision: used up in the same transaction as its vote."""

    notification_id: str
    recipient: str


@dataclass(frozen=True, kw_only=True)
class StandingUse:
    """The standing approval whose owed vote a decision casts: spent in the same transaction as its vote."""

    due_id: int
    standing_id: str


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One person's decision from any channel, as :meth:`ApprovalManager.decide` records it.

    :param action: ``approve``, ``reject`` (needs ``reason``) or ``cancel`` (needs ``reason``).
    :param user: Who decides; their vote counts under the request's own policy.
    :param source: The channel: ``api``, ``bulk``, ``ui``, ``email``, ``slack`` or ``cli``.
    :param client: Where it came from (address, user agent, OS user), for the audit trail.
    :param dag_access: The channel's own access rule, asked under the row lock.
    :param link: The emailed link the decision came through, if any.
    :param on_behalf_of: The delegator whose vote ``user`` casts (see :mod:`airflow_hitl.delegation`);
        None: ``user``'s own vote, or else the one active delegator the policy lets it be cast for.
    :param delegator_roles: A delegator's roles by name (the auth manager's, via :mod:`airflow_hitl.identity`).
    :param delegator_access: Why a delegator may not decide a DAG's approvals now (their own edit
        access, asked of the auth manager under the row lock), or None when they may; a delegate's
        vote needs it as much as the policy. None: the channel has no auth manager to ask.
    :param inputs: Values for the request's form inputs: required ones must be given to approve,
        defaults fill the rest; on reject the given ones are checked and kept, none required.
    :param content_digest: The request's ``content_digest`` as the decider saw it (a page, a
        link, a Slack message); when it is not the request's digest under the row lock, nothing
        is recorded (:class:`~airflow_hitl.exceptions.ContentChanged`). None: not checked.
    :param standing: The standing approval casting ``user``'s vote (source ``standing``, the
        api-server's applier only; see :mod:`airflow_hitl.standing`).
    """

    action: DecisionActionWord | Action
    user: Principal
    source: SourceWord | Source
    comment: str | None = None
    reason: str | None = None
    metadata: Mapping[str, Any] | None = None
    client: Mapping[str, Any] | None = None
    dag_access: DagAccess | None = None
    link: LinkUse | None = None
    on_behalf_of: str | None = None
    delegator_roles: Callable[[str], Iterable[str] | None] | None = None
    delegator_access: Callable[[str, str], str | None] | None = None
    #: Values for the request's form inputs (see :mod:`airflow_hitl.forms`), checked under the row lock.
    inputs: Mapping[str, Any] | None = None
    content_digest: str | None = None
    standing: StandingUse | None = None


@dataclass(frozen=True, kw_only=True)
class TimeoutOutcome:
    """What :meth:`ApprovalManager.apply_timeout` did."""

    approval: Approval
    applied: bool
    escalated: bool = False


def canonical_uuid(value: Any) -> str | None:
    """``value`` as the canonical text of a UUID (lower case, with dashes), or None when it is none."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or len(value) > 45:  # the longest spelling: "urn:uuid:" and 36
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def same_task_try(spec: ApprovalSpec) -> Select[ApprovalRequestRow]:
    """The requests task gates opened for ``spec``'s task instance try, newest first.

    Usually one; more when its DAG run was deleted and created again under the same run id
    (each life of the run starts again at try 1, with new task instances).
    """
    r = ApprovalRequestRow
    return select(r).where(*_task_clauses(spec), r.try_number == spec.try_number).order_by(r.requested_at.desc(), r.id)


def adopted(spec: ApprovalSpec, rows: Sequence[ApprovalRequestRow]) -> ApprovalRequestRow | None:
    """Of the requests of ``spec``'s task try (:func:`same_task_try`), the one its gate takes as its own.

    The one its own task instance try opened (two workers running one try, or ``execute`` run
    again): never a request of another task instance, which an earlier life of the DAG run
    opened and whose decision is not this run's. A request that records no task instance
    (opened before revision 0013), or a spec that names none, keeps the rule from before:
    one request per try. None: the gate opens a new one.
    """
    wanted = (spec.task_instance_id, None) if spec.task_instance_id is not None else (None,)
    for task_instance_id in wanted:
        found = next((row for row in rows if row.task_instance_id == task_instance_id), None)
        if found is not None:
            return found
    return rows[0] if rows and spec.task_instance_id is None else None


def closed_by(spec: ApprovalSpec) -> Select[ApprovalRequestRow]:
    """The waiting requests the gate of ``spec`` closes when it opens its own (to lock: ``with_for_update``).

    Those of the task instance's earlier tries (cleared while it waited: the triggerer may not
    have cancelled them), and those of another task instance at this try or a later one: tries
    only go up within one life of a DAG run, so those are an earlier life's, a run deleted and
    created again under the same run id. A request that records no task instance is only ever
    closed as an earlier try, as before.
    """
    r = ApprovalRequestRow
    earlier_life = (
        (r.try_number >= spec.try_number)
        & r.task_instance_id.is_not(None)
        & (r.task_instance_id != spec.task_instance_id)
        if spec.task_instance_id is not None
        else false()
    )
    return select(r).where(
        *_task_clauses(spec),
        r.state.in_(WAITING_STATES),
        or_(r.try_number < spec.try_number, earlier_life),
    )


def why_closed(spec: ApprovalSpec, row: ApprovalRequestRow) -> tuple[str, Source]:
    """Why the gate of ``spec`` closes ``row`` (one of :func:`closed_by`), and the source that closes it."""
    if row.try_number is not None and spec.try_number is not None and row.try_number < spec.try_number:
        return f"superseded by try {spec.try_number}", Source.SYSTEM
    return (
        f"its DAG run was deleted and created again: try {spec.try_number} of task {spec.task_id!r} is "
        f"another task instance now ({spec.task_instance_id}), whose gate asks again",
        Source.AIRFLOW,
    )


def _task_clauses(spec: ApprovalSpec) -> list[Any]:
    # Every try of the task instance of ``spec``, in every life of its DAG run: task gates only.
    r = ApprovalRequestRow
    return [
        r.dag_id == spec.dag_id,
        r.run_id == spec.run_id,
        r.task_id == spec.task_id,
        r.map_index == spec.map_index,
        r.origin == Origin.TASK,
    ]


def json_default(value: Any) -> Any:
    """``json.dumps`` ``default`` for the values a gate may carry: times and UUIDs."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as it will read back from a JSON column."""
    safe: dict[str, Any] = json.loads(json.dumps(dict(value), default=json_default))
    return safe


def where_clauses(filters: ApprovalFilter) -> list[Any]:
    """The SQL conditions of ``filters`` on ``approval_requests``."""
    r = ApprovalRequestRow
    where: list[Any] = []
    if filters.states and set(filters.states) == set(WAITING_STATES):
        where.append(text(WAITING_PREDICATE))
    elif filters.states:
        where.append(r.state.in_(list(filters.states)))
    if filters.dag_id:
        where.append(r.dag_id == filters.dag_id)
    if filters.dag_ids is not None:
        where.append(r.dag_id.in_(list(filters.dag_ids)))
    if filters.run_id:
        where.append(r.run_id == filters.run_id)
    if filters.task_id:
        where.append(r.task_id == filters.task_id)
    if filters.map_index is not None:
        where.append(r.map_index == filters.map_index)
    if filters.origin is not None:
        where.append(r.origin == filters.origin)
    if filters.requested_by:
        where.append(r.requested_by == filters.requested_by)
    if filters.decided_by:
        where.append(r.decided_by == filters.decided_by)
    if filters.ids is not None:
        where.append(r.id.in_([str(i) for i in filters.ids]))
    decided = filters.states is not None and set(filters.states) <= set(TERMINAL_STATES)
    moment = r.decided_at if decided else r.requested_at
    if filters.since:
        where.append(moment >= filters.since)
    if filters.until:
        where.append(moment <= filters.until)
    return where


def replace_filter(filters: ApprovalFilter, **changes: Any) -> ApprovalFilter:
    """A copy of ``filters`` with ``changes``."""
    return dataclasses.replace(filters, **changes)

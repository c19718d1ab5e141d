"""ApprovalManager: the one writer of the approval store.

The operator, the trigger, the REST API, the UI, email links, Slack buttons and the CLI
all call this class; none of them writes rows on its own. Every state transition is one
transaction that first locks the request row (``SELECT ... FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and then re-checks the state, so two racing deciders, or a
decider racing the timeout, produce exactly one outcome and no vote is lost. Every vote
and transition appends to the hash-chained audit trail in the same transaction, and on
PostgreSQL sends a NOTIFY that is delivered when the transaction commits.

The chain has one tail, so appends from all processes take turns. A transaction collects
its events and appends them all just before it commits (:meth:`ApprovalManager._seal`):
the turn is held for three short statements, not for the whole decision.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session, joinedload

from airflow_hitl import metrics, outbox
from airflow_hitl.audit import GENESIS_HASH, ChainVerification, event_hash, verify_chain
from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalNotFound,
    ApprovalNotPending,
    InvalidInput,
    LinkAlreadyUsed,
    NotAllowed,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from airflow_hitl.limits import INT32_MAX, MAX_TIMEOUT_SECONDS, json_problem, text_problem
from airflow_hitl.models.store import NOTIFY_CHANNEL, ApprovalStore, get_store
from airflow_hitl.models.tables import (
    NOTIFICATION_STATUSES,
    ORIGINS,
    TIMEOUT_ACTIONS,
    WAITING_PREDICATE,
    WAITING_STATES,
    ApprovalEventRow,
    ApprovalNotificationRow,
    ApprovalRequestRow,
    ApprovalVoteRow,
)
from airflow_hitl.policy import (
    ConfigProblems,
    Eligibility,
    EscalationLevel,
    Principal,
    check_vote,
    quorum_reached,
    str_list,
)
from airflow_hitl.records import Approval, Notification, WaitState, policy_of
from airflow_hitl.settings import HitlSettings
from airflow_hitl.vocabulary import APPROVAL_TYPES, CHANNELS, FINAL_ACTIONS, ON_REJECT, TERMINAL_STATES, VOTE_SOURCES

log = logging.getLogger(__name__)

ORDERABLE = {
    "requested_at": ApprovalRequestRow.requested_at,
    "expires_at": ApprovalRequestRow.expires_at,
    "decided_at": ApprovalRequestRow.decided_at,
    "updated_at": ApprovalRequestRow.updated_at,
    "dag_id": ApprovalRequestRow.dag_id,
    "state": ApprovalRequestRow.state,
    "title": ApprovalRequestRow.title,
}
# Any constant works; it serialises appends to the audit chain across processes.
_AUDIT_LOCK_KEY = 0x41F1_A0D1
# Keys of ``Session.info``: what a transaction will append and wake when it seals.
_PENDING_EVENTS = "hitl_pending_events"
_PENDING_NOTIFY = "hitl_pending_notify"
_PENDING_METRICS = "hitl_pending_metrics"

DagAccess = Callable[[str], str | None]
"""Checks the caller's access to a request's DAG: returns why not, or None when allowed."""


def utcnow() -> dt.datetime:
    """The current time, UTC-aware."""
    return dt.datetime.now(dt.timezone.utc)


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
    approval_type: str = "manual"
    requested_by: str | None = None
    timeout: dt.timedelta | None = None
    timeout_action: str | None = None
    escalation_targets: Sequence[EscalationLevel] = ()
    escalation_final_action: str | None = None
    required_approvals: int = 1
    require_all: bool = False
    allowed_approvers: Sequence[str] = ()
    allowed_roles: Sequence[str] = ()
    allow_self_approval: bool = False
    on_reject: str = "fail"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    notify: Mapping[str, Any] = field(default_factory=dict)

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
        if self.timeout is not None:
            if not isinstance(self.timeout, dt.timedelta):
                problems.add("timeout", "must be a datetime.timedelta")
            elif self.timeout <= dt.timedelta(0):
                problems.add("timeout", "must be positive")
        if self.timeout_action is not None and self.timeout_action not in TIMEOUT_ACTIONS:
            problems.add("timeout_action", f"must be one of {list(TIMEOUT_ACTIONS)}, got {self.timeout_action!r}")
        if self.timeout_action is not None and self.timeout is None:
            problems.add("timeout", f"is required when timeout_action={self.timeout_action!r}")
        if self.timeout_action == "escalate":
            if not self.escalation_targets:
                problems.add("escalate_to", "is required when timeout_action='escalate'")
            if self.escalation_final_action not in FINAL_ACTIONS:
                problems.add(
                    "escalation_final_action",
                    f"must be one of {list(FINAL_ACTIONS)}, got {self.escalation_final_action!r}",
                )
        elif self.escalation_targets:
            problems.add("escalate_to", "is only used with timeout_action='escalate'")
        quorum_ok = (
            isinstance(self.required_approvals, int)
            and not isinstance(self.required_approvals, bool)
            and self.required_approvals >= 1
        )
        if not quorum_ok:
            problems.add("required_approvals", "must be a positive integer")
        approvers = problems.parse(str_list, list(self.allowed_approvers), "allowed_approvers", default=[])
        problems.parse(str_list, list(self.allowed_roles), "allowed_roles", default=[])
        if quorum_ok and approvers and not self.allowed_roles and self.required_approvals > len(set(approvers)):
            problems.add(
                "required_approvals",
                f"asks for {self.required_approvals} approvals but allowed_approvers names only "
                f"{len(set(approvers))} people",
            )
        if self.require_all and not approvers:
            problems.add("require_all", "needs allowed_approvers: 'all' must be a known list of people")
        if self.on_reject not in ON_REJECT:
            problems.add("on_reject", f"must be one of {list(ON_REJECT)}, got {self.on_reject!r}")
        self._validate_storable(problems)
        for name in ("context", "metadata", "notify"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                problems.add(name, "must be a dict")
                continue
            try:
                json.dumps(value, default=_json_default)
            except (TypeError, ValueError, RecursionError) as err:
                problems.add(name, f"must be JSON-serialisable: {err}")
        return problems

    def _validate_storable(self, problems: ConfigProblems) -> None:
        # The same limits as the REST API's bodies (airflow_hitl.limits): what the store
        # cannot keep is refused here, naming the field, not by the database later.
        for name in ("dag_id", "title", "run_id", "task_id", "description", "reason", "requested_by"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.add(name, "must be a string")
                continue
            problem = text_problem(value) if value else None
            if problem:
                problems.add(name, problem)
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

    states: Sequence[str] | None = None
    dag_id: str | None = None
    dag_ids: Iterable[str] | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    origin: str | None = None
    requested_by: str | None = None
    decided_by: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    ids: Iterable[str] | None = None


@dataclass(frozen=True, kw_only=True)
class TimeoutOutcome:
    """What :meth:`ApprovalManager.apply_timeout` did."""

    approval: Approval
    applied: bool
    escalated: bool = False


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One audit trail entry."""

    seq: int
    request_id: str | None
    event_type: str
    actor: str | None
    source: str
    comment: str | None
    details: dict[str, Any]
    created_at: dt.datetime
    hash: str


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(value), default=_json_default))


class ApprovalManager:
    """Owns every state transition, policy check and audit row of the approval store."""

    def __init__(
        self,
        *,
        store: ApprovalStore | None = None,
        conn_id: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store or get_store(conn_id=conn_id)
        self._clock = clock

    # ------------------------------------------------------------------ create

    def create(
        self, spec: ApprovalSpec, *, actor: str | None = None, source: str = "operator", origin: str = "task"
    ) -> Approval:
        """Open a gate; for a task try that already has one, return it instead of a second.

        ``origin`` is the caller's, never the request body's: ``task`` for the operator's
        gate, ``api`` for a request opened over the REST API. Only a ``task`` request is ever
        taken for a task instance's gate, whatever dag, run and task ids an ``api`` one names.
        """
        spec.validate()
        if origin not in ORIGINS:
            raise InvalidInput("origin", f"must be one of {list(ORIGINS)}")
        if origin == "task" and spec.run_id and spec.task_id and spec.try_number is not None:
            existing = self._find_for_try(spec)
            if existing is not None:
                return existing
        try:
            return self._insert(spec, actor=actor, source=source, origin=origin)
        except IntegrityError:
            # Two workers running the same try raced; the other one's row is the request.
            existing = self._find_for_try(spec)
            if existing is None:
                raise
            return existing

    def _find_for_try(self, spec: ApprovalSpec) -> Approval | None:
        with self.store.session() as session:
            row = session.scalar(
                select(ApprovalRequestRow).where(
                    ApprovalRequestRow.dag_id == spec.dag_id,
                    ApprovalRequestRow.run_id == spec.run_id,
                    ApprovalRequestRow.task_id == spec.task_id,
                    ApprovalRequestRow.map_index == spec.map_index,
                    ApprovalRequestRow.try_number == spec.try_number,
                    ApprovalRequestRow.origin == "task",
                )
            )
            return Approval.from_row(row) if row is not None else None

    def _insert(self, spec: ApprovalSpec, *, actor: str | None, source: str, origin: str) -> Approval:
        now = self._clock()
        with self._transaction() as session:
            if origin == "task" and spec.run_id and spec.task_id and spec.try_number is not None:
                self._supersede_earlier_tries(session, spec, now)
            row = ApprovalRequestRow(
                id=str(uuid.uuid4()),
                dag_id=spec.dag_id,
                run_id=spec.run_id,
                task_id=spec.task_id,
                map_index=spec.map_index,
                try_number=spec.try_number,
                origin=origin,
                title=spec.title,
                description=spec.description,
                reason=spec.reason,
                context=_json_safe(spec.context),
                approval_type=spec.approval_type,
                state="pending",
                requested_by=spec.requested_by,
                requested_at=now,
                expires_at=now + spec.timeout if spec.timeout else None,
                timeout_seconds=spec.timeout.total_seconds() if spec.timeout else None,
                timeout_action=spec.timeout_action if spec.timeout else None,
                escalation_level=0,
                escalation_targets=[level.to_json() for level in spec.escalation_targets],
                escalation_final_action=spec.escalation_final_action,
                required_approvals=spec.required_approvals,
                require_all=spec.require_all,
                allowed_approvers=list(dict.fromkeys(spec.allowed_approvers)),
                allowed_roles=list(dict.fromkeys(spec.allowed_roles)),
                allow_self_approval=spec.allow_self_approval,
                on_reject=spec.on_reject,
                metadata_=_json_safe(spec.metadata),
                notify=_json_safe(spec.notify),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self._measure(session, metrics.request_opened)
            self._audit(
                session,
                request_id=row.id,
                event_type="requested",
                actor=actor or spec.requested_by,
                source=source,
                details={
                    "dag_id": spec.dag_id,
                    "run_id": spec.run_id,
                    "task_id": spec.task_id,
                    "map_index": spec.map_index,
                    "try_number": spec.try_number,
                    "origin": origin,
                    "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                    "required_approvals": spec.required_approvals,
                    "allowed_approvers": row.allowed_approvers,
                    "allowed_roles": row.allowed_roles,
                },
                at=now,
            )
            outbox.plan_opened(session, row, now)
            # Announced on commit (PostgreSQL): wakes the outbox drainer and anyone watching for new gates.
            self._notify(session, row.id)
            return Approval.from_row(row)

    def _supersede_earlier_tries(self, session: Session, spec: ApprovalSpec, now: dt.datetime) -> None:
        # A task cleared while deferred comes back as a new try. Where the triggerer could
        # not cancel the old request (on_kill missing, triggerer down), do it here.
        stale = session.scalars(
            select(ApprovalRequestRow)
            .where(
                ApprovalRequestRow.dag_id == spec.dag_id,
                ApprovalRequestRow.run_id == spec.run_id,
                ApprovalRequestRow.task_id == spec.task_id,
                ApprovalRequestRow.map_index == spec.map_index,
                ApprovalRequestRow.try_number < spec.try_number,  # type: ignore[operator]
                ApprovalRequestRow.origin == "task",
                ApprovalRequestRow.state.in_(WAITING_STATES),
            )
            .with_for_update()
        ).all()
        for row in stale:
            self._finish(
                session,
                row,
                state="cancelled",
                decision=None,
                by=None,
                comment=f"superseded by try {spec.try_number}",
                source="system",
                now=now,
                event_type="cancelled",
            )

    # ------------------------------------------------------------------ read

    def get(self, request_id: str) -> Approval:
        """One request with its votes; :class:`ApprovalNotFound` when unknown."""
        with self.store.session() as session:
            row = session.get(ApprovalRequestRow, str(request_id), options=[joinedload(ApprovalRequestRow.votes)])
            if row is None:
                raise ApprovalNotFound(str(request_id))
            return Approval.from_row(row)

    def list(
        self,
        filters: ApprovalFilter | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "-requested_at",
    ) -> tuple[builtins.list[Approval], int]:
        """Requests matching ``filters``, one page of them, and the total count."""
        if limit < 0 or limit > 10_000:
            raise InvalidInput("limit", "must be between 0 and 10000")
        if offset < 0:
            raise InvalidInput("offset", "must not be negative")
        column_name = order_by.lstrip("-+")
        if column_name not in ORDERABLE:
            raise InvalidInput("order_by", f"must be one of {sorted(ORDERABLE)} (prefix '-' for descending)")
        column = ORDERABLE[column_name]
        ordering = column.desc() if order_by.startswith("-") else column.asc()
        where = self._where(filters or ApprovalFilter())
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(ApprovalRequestRow).where(*where)) or 0
            rows = session.scalars(
                select(ApprovalRequestRow)
                .where(*where)
                .order_by(ordering.nulls_last(), ApprovalRequestRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return [Approval.from_row(r) for r in rows], int(total)

    def pending(
        self,
        filters: ApprovalFilter | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "expires_at",
    ) -> tuple[builtins.list[Approval], int]:
        """Requests still waiting for a decision, soonest expiry first by default."""
        base = filters or ApprovalFilter()
        return self.list(_replace(base, states=WAITING_STATES), limit=limit, offset=offset, order_by=order_by)

    def pending_for(
        self, user: Principal, filters: ApprovalFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> tuple[builtins.list[tuple[Approval, Eligibility]], int]:
        """Waiting requests, each with whether ``user`` may approve it now."""
        items, total = self.pending(filters, limit=limit, offset=offset)
        return [(a, self.can_approve(user, a)) for a in items], total

    def history(
        self,
        filters: ApprovalFilter | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "-decided_at",
    ) -> tuple[builtins.list[Approval], int]:
        """Decided requests (``since``/``until`` apply to the decision time), newest first."""
        base = filters or ApprovalFilter()
        states = [s for s in (base.states or TERMINAL_STATES) if s in TERMINAL_STATES]
        return self.list(_replace(base, states=states or ["__none__"]), limit=limit, offset=offset, order_by=order_by)

    def dag_ids(self) -> builtins.list[str]:
        """Every DAG that has approval requests (to narrow lists to the DAGs a caller may read)."""
        with self.store.session() as session:
            return sorted(session.scalars(select(ApprovalRequestRow.dag_id).distinct()))

    def can_approve(self, user: Principal, approval: Approval, *, action: str = "approve") -> Eligibility:
        """May ``user`` cast ``action`` on ``approval`` now? The reason says why not."""
        if not approval.is_waiting:
            return Eligibility(allowed=False, code="not_pending", reason=f"this request is {approval.state}")
        if approval.expires_at is not None and self._clock() >= approval.expires_at:
            return Eligibility(allowed=False, code="expired", reason="this request has expired")
        return check_vote(approval.policy, user, action=action, voters=(v.user for v in approval.votes))

    def count_waiting(self) -> int:
        """How many requests wait for people, store-wide."""
        with self.store.session() as session:
            return int(
                session.scalar(select(func.count()).select_from(ApprovalRequestRow).where(text(WAITING_PREDICATE))) or 0
            )

    def wait_states(self, request_ids: Sequence[str]) -> dict[str, WaitState]:
        """State and expiry of many requests in one query, whatever their number."""
        if not request_ids:
            return {}
        ids = [str(i) for i in request_ids]
        if self.store.is_postgres:
            raw = text("SELECT id, state, expires_at, escalation_level FROM approval_requests WHERE id = ANY(:ids)")
            params: dict[str, Any] = {"ids": ids}
        else:
            raw = text(
                "SELECT id, state, expires_at, escalation_level FROM approval_requests "
                "WHERE id IN (SELECT value FROM json_each(:ids))"
            )
            params = {"ids": json.dumps(ids)}
        sql = raw.columns(
            ApprovalRequestRow.id,
            ApprovalRequestRow.state,
            ApprovalRequestRow.expires_at,
            ApprovalRequestRow.escalation_level,
        )
        with self.store.read_engine.connect() as conn:
            rows = conn.execute(sql, params).all()
            conn.rollback()
        return {
            r.id: WaitState(id=r.id, state=r.state, expires_at=r.expires_at, escalation_level=r.escalation_level)
            for r in rows
        }

    # ------------------------------------------------------------------ decide

    def approve(
        self,
        request_id: str,
        *,
        user: Principal,
        comment: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str = "api",
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
    ) -> Approval:
        """Record ``user``'s approval; approve the request once quorum is reached.

        ``dag_access`` lets a caller's own access rule (Airflow's, for the REST API) refuse
        the vote with :class:`NotAllowed`; it is asked under the row lock, with the DAG id
        read in the same statement, so authorizing costs no extra query.
        """
        return self._vote(
            request_id,
            user=user,
            action="approve",
            comment=comment,
            reason=None,
            metadata=metadata,
            source=source,
            client=client,
            dag_access=dag_access,
        )

    def reject(
        self,
        request_id: str,
        *,
        user: Principal,
        reason: str,
        comment: str | None = None,
        source: str = "api",
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
    ) -> Approval:
        """Record ``user``'s rejection; one allowed rejection rejects the request at once."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("reason", "a reason is required to reject")
        return self._vote(
            request_id,
            user=user,
            action="reject",
            comment=comment,
            reason=reason.strip(),
            metadata=None,
            source=source,
            client=client,
            dag_access=dag_access,
        )

    def _vote(
        self,
        request_id: str,
        *,
        user: Principal,
        action: str,
        comment: str | None,
        reason: str | None,
        metadata: Mapping[str, Any] | None,
        source: str,
        client: Mapping[str, Any] | None,
        dag_access: DagAccess | None,
    ) -> Approval:
        if source not in VOTE_SOURCES:
            raise InvalidInput("source", f"must be one of {list(VOTE_SOURCES)}")
        with self._transaction() as session:
            row = self._lock(session, request_id, dag_access=dag_access)
            now = self._clock()
            self._ensure_open(row, now)
            eligibility = check_vote(policy_of(row), user, action=action, voters=(v.user for v in row.votes))
            if not eligibility.allowed:
                if eligibility.code == "already_voted":
                    raise AlreadyVoted(row.id, user.name)
                raise NotAllowed(eligibility.reason or "not allowed")
            vote = ApprovalVoteRow(
                request_id=row.id,
                user=user.name,
                user_roles=sorted(user.roles),
                vote=action,
                comment=comment,
                reason=reason,
                source=source,
                escalation_level=row.escalation_level,
                metadata_=_json_safe(metadata or {}),
                created_at=now,
            )
            row.votes.append(vote)
            self._audit(
                session,
                request_id=row.id,
                event_type="vote",
                actor=user.name,
                source=source,
                comment=comment or reason,
                details={
                    "vote": action,
                    "reason": reason,
                    "roles": sorted(user.roles),
                    "escalation_level": row.escalation_level,
                    **dict(client or {}),
                },
                at=now,
            )
            if action == "reject":
                self._finish(
                    session,
                    row,
                    state="rejected",
                    decision="rejected",
                    by=user.name,
                    comment=reason if not comment else f"{reason} — {comment}",
                    source=source,
                    now=now,
                    client=client,
                )
            elif quorum_reached(policy_of(row), ((v.user, v.user_roles, v.vote) for v in row.votes)):
                self._finish(
                    session,
                    row,
                    state="approved",
                    decision="approved",
                    by=user.name,
                    comment=comment,
                    source=source,
                    now=now,
                    client=client,
                )
            else:
                row.updated_at = now
            try:
                # The vote and the request in one flush; the row lock makes a duplicate
                # impossible, the unique constraint makes it impossible twice over.
                session.flush()
            except IntegrityError as err:
                raise AlreadyVoted(row.id, user.name) from err
            return Approval.from_row(row)

    def decide_automatically(self, request_id: str, *, source: str, comment: str) -> Approval:
        """Approve at once without people (``approval_type='auto'`` or a true condition)."""
        with self._transaction() as session:
            row = self._lock(session, request_id)
            if row.state not in WAITING_STATES:
                return Approval.from_row(row)
            self._finish(
                session,
                row,
                state="approved",
                decision="approved",
                by=None,
                comment=comment,
                source=source,
                now=self._clock(),
            )
            session.flush()
            return Approval.from_row(row)

    def cancel(
        self,
        request_id: str,
        *,
        actor: str | None,
        reason: str,
        source: str = "api",
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
    ) -> Approval:
        """Cancel a waiting request (the task was cleared or marked, or someone withdrew it)."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("reason", "a reason is required to cancel")
        with self._transaction() as session:
            row = self._lock(session, request_id, dag_access=dag_access)
            if row.state not in WAITING_STATES:
                raise ApprovalNotPending(row.id, row.state)
            self._finish(
                session,
                row,
                state="cancelled",
                decision=None,
                by=actor,
                comment=reason.strip(),
                source=source,
                now=self._clock(),
                client=client,
            )
            session.flush()
            return Approval.from_row(row)

    def apply_timeout(self, request_id: str) -> TimeoutOutcome:
        """Apply the timeout action if the request is still waiting and has expired.

        Safe to call from any number of triggerers at once: the row lock makes exactly one
        of them apply it; the others see the new state and change nothing.
        """
        with self._transaction() as session:
            row = self._lock(session, request_id)
            now = self._clock()
            if row.state not in WAITING_STATES or row.expires_at is None or now < row.expires_at:
                return TimeoutOutcome(approval=Approval.from_row(row), applied=False)
            targets = [EscalationLevel.from_json(t) for t in row.escalation_targets or ()]
            if row.timeout_action == "escalate" and row.escalation_level < len(targets):
                self._escalate(session, row, targets[row.escalation_level], now)
                session.flush()
                return TimeoutOutcome(approval=Approval.from_row(row), applied=True, escalated=True)
            action = row.escalation_final_action if row.timeout_action == "escalate" else row.timeout_action
            decision = "approved" if action == "approve" else "rejected"
            self._finish(
                session,
                row,
                state="timeout",
                decision=decision,
                by=None,
                comment=f"timed out; action taken: {action}",
                source="timeout",
                now=now,
                details={"action": action, "escalation_level": row.escalation_level},
            )
            session.flush()
            return TimeoutOutcome(approval=Approval.from_row(row), applied=True)

    def _escalate(self, session: Session, row: ApprovalRequestRow, level: EscalationLevel, now: dt.datetime) -> None:
        # Escalation widens the circle: the earlier approvers may still decide.
        row.escalation_level += 1
        row.state = "escalated"
        self._measure(session, metrics.request_escalated)
        row.allowed_approvers = list(dict.fromkeys([*row.allowed_approvers, *level.approvers]))
        row.allowed_roles = list(dict.fromkeys([*row.allowed_roles, *level.roles]))
        if level.required_approvals is not None:
            row.required_approvals = level.required_approvals
        row.expires_at = now + level.timeout
        row.updated_at = now
        self._audit(
            session,
            request_id=row.id,
            event_type="escalated",
            actor=None,
            source="timeout",
            details={
                "escalation_level": row.escalation_level,
                "added_approvers": list(level.approvers),
                "added_roles": list(level.roles),
                "expires_at": row.expires_at.isoformat(),
            },
            at=now,
        )
        # Queued in this transaction: the escalation notice exists if and only if the escalation does.
        outbox.plan_escalated(session, row, now)
        self._notify(session, row.id)

    # ------------------------------------------------------------------ notifications

    def record_notification(
        self,
        *,
        request_id: str,
        channel: str,
        recipient: str,
        event_type: str,
        subject: str | None = None,
        body: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str = "pending",
        notification_id: str | None = None,
        outbox_id: str | None = None,
    ) -> Notification:
        """Record one notice about to be sent (or, for ``in_app``, delivered by being written).

        ``notification_id`` may be chosen by the caller: signed email links name the row
        that carries them, so they are made before the row is written.
        """
        if channel not in CHANNELS:
            raise InvalidInput("channel", f"must be one of {list(CHANNELS)}")
        if status not in NOTIFICATION_STATUSES:
            raise InvalidInput("status", f"must be one of {list(NOTIFICATION_STATUSES)}")
        now = self._clock()
        with self._transaction() as session:
            row = ApprovalNotificationRow(
                id=notification_id or str(uuid.uuid4()),
                request_id=str(request_id),
                channel=channel,
                recipient=recipient[:320],
                event_type=event_type,
                status=status,
                retry_count=0,
                subject=subject[:500] if subject else subject,
                body=body,
                metadata_=_json_safe(metadata or {}),
                sent_at=now if status == "sent" else None,
                failed_at=now if status == "failed" else None,
                outbox_id=outbox_id,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return Notification.from_row(row)

    def _notification_row(self, session: Session, notification_id: str) -> ApprovalNotificationRow:
        row = session.scalar(
            select(ApprovalNotificationRow).where(ApprovalNotificationRow.id == str(notification_id)).with_for_update()
        )
        if row is None:
            raise InvalidInput("notification_id", f"no notification {notification_id!r}")
        return row

    def mark_notification_sent(
        self,
        notification_id: str,
        *,
        retry_count: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Notification:
        """The notice reached its channel; ``metadata`` is merged (e.g. Slack's message ``ts``)."""
        now = self._clock()
        with self._transaction() as session:
            row = self._notification_row(session, notification_id)
            row.status = "sent"
            row.sent_at = now
            row.error = None
            row.next_attempt_at = None
            if retry_count is not None:
                row.retry_count = retry_count
            if metadata:
                row.metadata_ = {**(row.metadata_ or {}), **_json_safe(metadata)}
            row.updated_at = now
            session.flush()
            return Notification.from_row(row)

    def mark_notification_failed(
        self,
        notification_id: str,
        *,
        error: str,
        retry_count: int | None = None,
        next_attempt_at: dt.datetime | None = None,
    ) -> Notification:
        """A send failed; with ``next_attempt_at`` it will be retried, without it it is final."""
        now = self._clock()
        with self._transaction() as session:
            row = self._notification_row(session, notification_id)
            row.status = "failed"
            row.failed_at = now
            row.error = error[:4000]
            row.next_attempt_at = next_attempt_at
            if retry_count is not None:
                row.retry_count = retry_count
            row.updated_at = now
            session.flush()
            return Notification.from_row(row)

    def get_notification(self, notification_id: str) -> Notification:
        """One notification by id."""
        with self.store.session() as session:
            row = session.get(ApprovalNotificationRow, str(notification_id))
            if row is None:
                raise InvalidInput("notification_id", f"no notification {notification_id!r}")
            return Notification.from_row(row)

    def list_notifications(
        self,
        *,
        request_id: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        status: str | None = None,
        event_type: str | None = None,
        outbox_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> builtins.list[Notification]:
        """Notifications, oldest (or newest) first, filtered by any of the given fields."""
        n = ApprovalNotificationRow
        query = select(n)
        for column, value in (
            (n.request_id, request_id),
            (n.recipient, recipient),
            (n.channel, channel),
            (n.status, status),
            (n.event_type, event_type),
            (n.outbox_id, outbox_id),
        ):
            if value is not None:
                query = query.where(column == str(value))
        order = (n.created_at.desc(), n.id.desc()) if newest_first else (n.created_at, n.id)
        query = query.order_by(*order).limit(limit).offset(offset)
        with self.store.session() as session:
            return [Notification.from_row(r) for r in session.scalars(query)]

    def count_notifications(self, *, recipient: str, channel: str | None = None, status: str | None = None) -> int:
        """How many notifications of ``recipient`` there are (on ``channel``, in ``status``)."""
        n = ApprovalNotificationRow
        query = select(func.count()).select_from(n).where(n.recipient == recipient)
        if channel is not None:
            query = query.where(n.channel == channel)
        if status is not None:
            query = query.where(n.status == status)
        with self.store.session() as session:
            return int(session.scalar(query) or 0)

    def unread_count(self, recipient: str) -> int:
        """In-app notifications of ``recipient`` not yet marked read."""
        n = ApprovalNotificationRow
        with self.store.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(n)
                    .where(n.channel == "in_app", n.recipient == recipient, n.status == "sent")
                )
                or 0
            )

    def mark_read(self, recipient: str, notification_ids: Iterable[str] | None = None) -> int:
        """Mark ``recipient``'s in-app notifications read (all, or the given ids); return how many."""
        n = ApprovalNotificationRow
        now = self._clock()
        with self._transaction() as session:
            query = select(n).where(n.channel == "in_app", n.recipient == recipient, n.status == "sent")
            if notification_ids is not None:
                query = query.where(n.id.in_([str(i) for i in notification_ids]))
            rows = builtins.list(session.scalars(query))
            for row in rows:
                row.status = "read"
                row.read_at = now
                row.updated_at = now
            session.flush()
            return len(rows)

    def consume_link(self, notification_id: str, *, request_id: str, recipient: str, action: str) -> Notification:
        """Record that the emailed link of ``notification_id`` was used; :class:`LinkAlreadyUsed` if it was.

        The row lock makes two simultaneous uses of one link produce exactly one success.
        """
        now = self._clock()
        with self._transaction() as session:
            row = self._notification_row(session, notification_id)
            if row.request_id != str(request_id) or row.recipient != recipient:
                raise InvalidInput("link", "does not belong to this request and recipient")
            meta = dict(row.metadata_ or {})
            if meta.get("link_used"):
                raise LinkAlreadyUsed(row.id)
            meta["link_used"] = {"action": action, "at": now.isoformat()}
            row.metadata_ = meta
            row.updated_at = now
            session.flush()
            return Notification.from_row(row)

    # ------------------------------------------------------------------ audit

    def events(self, request_id: str | None = None) -> builtins.list[AuditEvent]:
        """Audit events, oldest first; of one request when ``request_id`` is given."""
        query = select(ApprovalEventRow).order_by(ApprovalEventRow.seq)
        if request_id is not None:
            query = query.where(ApprovalEventRow.request_id == str(request_id))
        with self.store.session() as session:
            return [
                AuditEvent(
                    seq=e.seq,
                    request_id=e.request_id,
                    event_type=e.event_type,
                    actor=e.actor,
                    source=e.source,
                    comment=e.comment,
                    details=dict(e.details or {}),
                    created_at=e.created_at,
                    hash=e.hash,
                )
                for e in session.scalars(query)
            ]

    def verify_audit_chain(self) -> ChainVerification:
        """Walk the whole audit trail and check every hash."""
        with self.store.session() as session:
            rows: Iterator[ApprovalEventRow] = iter(
                session.scalars(
                    select(ApprovalEventRow).order_by(ApprovalEventRow.seq).execution_options(yield_per=1000)
                )
            )
            return verify_chain(rows)

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One write transaction whose audit events are appended just before it commits.

        A lost or timed-out store is :class:`StoreUnavailable` while nothing can have been
        committed, and :class:`StoreOutcomeUnknown` once COMMIT may have reached the server:
        a caller is never told "failed" about a change that later turns out applied.
        """
        committing = False
        try:
            with self.store.begin() as session:
                yield session
                self._seal(session)
                measured: builtins.list[Callable[[], None]] = session.info.pop(_PENDING_METRICS, [])
                committing = True
        except (OperationalError, InterfaceError, SQLAlchemyTimeoutError) as err:
            if committing:
                raise StoreOutcomeUnknown(f"the approval store stopped answering while committing: {err}") from err
            raise StoreUnavailable(f"the approval store is unavailable: {err}") from err
        # Only what committed is counted.
        for send in measured:
            send()
        if measured:
            metrics.waiting(self.count_waiting)

    @staticmethod
    def _measure(session: Session, send: Callable[[], None]) -> None:
        session.info.setdefault(_PENDING_METRICS, []).append(send)

    def _lock(self, session: Session, request_id: str, *, dag_access: DagAccess | None = None) -> ApprovalRequestRow:
        # Votes must NOT be joined into this statement: after waiting for the lock, PostgreSQL
        # re-reads the locked row but keeps the joined rows of the statement's older snapshot,
        # so the votes of the transaction we waited for would be missing. The relationship's
        # own SELECT runs next, with a fresh snapshot that sees them.
        row = session.scalar(
            select(ApprovalRequestRow).where(ApprovalRequestRow.id == str(request_id)).with_for_update()
        )
        if row is None:
            raise ApprovalNotFound(str(request_id))
        if dag_access is not None and (refusal := dag_access(row.dag_id)) is not None:
            raise NotAllowed(refusal)
        return row

    @staticmethod
    def _ensure_open(row: ApprovalRequestRow, now: dt.datetime) -> None:
        if row.state not in WAITING_STATES:
            raise ApprovalNotPending(row.id, row.state)
        if row.expires_at is not None and now >= row.expires_at:
            raise ApprovalNotPending(row.id, row.state, detail=f"approval request {row.id} has expired")

    def _finish(
        self,
        session: Session,
        row: ApprovalRequestRow,
        *,
        state: str,
        decision: str | None,
        by: str | None,
        comment: str | None,
        source: str,
        now: dt.datetime,
        event_type: str | None = None,
        client: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        previous = row.state
        self._measure(
            session,
            partial(metrics.request_ended, state=state, source=source, requested_at=row.requested_at, ended_at=now),
        )
        row.state = state
        row.decision = decision
        row.decided_by = by
        row.decided_at = now
        row.decision_source = source
        row.comment = comment
        row.updated_at = now
        self._audit(
            session,
            request_id=row.id,
            event_type=event_type or state,
            actor=by,
            source=source,
            comment=comment,
            details={
                "from_state": previous,
                "decision": decision,
                **dict(details or {}),
                **dict(client or {}),
            },
            at=now,
        )
        outbox.plan_closed(session, row, now)
        self._notify(session, row.id)

    @staticmethod
    def _notify(session: Session, request_id: str) -> None:
        # Sent when the transaction seals, delivered by PostgreSQL only when it commits:
        # waiting triggers wake on a decision that is durable, never on one that rolls back.
        session.info.setdefault(_PENDING_NOTIFY, {})[request_id] = None

    @staticmethod
    def _audit(
        session: Session,
        *,
        request_id: str | None,
        event_type: str,
        actor: str | None,
        source: str,
        at: dt.datetime,
        comment: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        session.info.setdefault(_PENDING_EVENTS, []).append(
            {
                "request_id": request_id,
                "event_type": event_type,
                "actor": actor,
                "source": source,
                "comment": comment,
                "details": _json_safe(details or {}),
                "created_at": at,
            }
        )

    def _seal(self, session: Session) -> None:
        """Append the transaction's audit events to the chain and queue its NOTIFYs."""
        events: builtins.list[dict[str, Any]] = session.info.pop(_PENDING_EVENTS, [])
        wake: dict[str, None] = session.info.pop(_PENDING_NOTIFY, {})
        # Rows the events speak of go first, before this transaction takes the chain's turn.
        session.flush()
        if self.store.is_postgres and (events or wake):
            # One round trip queues the wake-ups and waits for the chain's turn, which is
            # ours until commit. (On SQLite, BEGIN IMMEDIATE already made it ours.)
            calls = ["pg_advisory_xact_lock(:lock)"] if events else []
            params: dict[str, Any] = {"lock": _AUDIT_LOCK_KEY, "channel": NOTIFY_CHANNEL}
            for i, request_id in enumerate(wake):
                calls.append(f"pg_notify(:channel, :p{i})")
                params[f"p{i}"] = request_id
            session.execute(text(f"SELECT {', '.join(calls)}"), params)
        if not events:
            return
        prev = session.scalar(select(ApprovalEventRow.hash).order_by(ApprovalEventRow.seq.desc()).limit(1))
        prev = prev or GENESIS_HASH
        for event in events:
            digest = event_hash(prev_hash=prev, **event)
            event.update(prev_hash=prev, hash=digest)
            prev = digest
        # Inserted in chain order: the sequence numbers follow the list.
        session.execute(insert(ApprovalEventRow), events)

    @staticmethod
    def _where(filters: ApprovalFilter) -> builtins.list[Any]:
        r = ApprovalRequestRow
        where: builtins.list[Any] = []
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


def _replace(filters: ApprovalFilter, **changes: Any) -> ApprovalFilter:
    from dataclasses import replace

    return replace(filters, **changes)

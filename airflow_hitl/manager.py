"""ApprovalManager: the one writer of the approval store.

The operator, the trigger, the REST API, the UI, email links, Slack buttons and the CLI
all call this class; none of them writes rows on its own. Every state transition is one
transaction that first locks the request row (``SELECT ... FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and then re-checks the state, so two racing deciders, or a
decider racing the timeout, produce exactly one outcome and no vote is lost. Every vote
and transition appends to the hash-chained audit trail in the same transaction, and on
PostgreSQL sends a NOTIFY that is delivered when the transaction commits.

The chain has one tail, so appends from all processes take turns. A transaction collects
its events and appends them all just before it commits (:mod:`airflow_hitl.transaction`):
the turn is held for three short statements, not for the whole decision.

What a gate asks for and the list filters are in :mod:`airflow_hitl.spec`. The manager is
composed of its services, built once with the same store, clock and audit key: reading
requests (``manager.queries``), the notices (``manager.notices``), the audit trail
(``manager.audit``), delegations (``manager.delegations``), who ends a closed gate's task
(``manager.gate_ends``), and the transaction plumbing every write takes
(``manager.transactions``). It keeps the transitions and the one decision path.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from airflow_hitl import metrics, outbox
from airflow_hitl.audit import AuditEvent, AuditKey, AuditReader, with_request_facts, with_vote_facts
from airflow_hitl.canonical import digest_problem
from airflow_hitl.delegation import Delegations, DelegatorAccess, RolesOf
from airflow_hitl.exceptions import AlreadyVoted, ApprovalNotPending, ContentChanged, InvalidInput, NotAllowed
from airflow_hitl.forms import parse_inputs, resolve_inputs
from airflow_hitl.gate_ends import GateEnds
from airflow_hitl.models.store import ApprovalStore, get_store
from airflow_hitl.models.tables import ApprovalRequestRow
from airflow_hitl.notices import NoticeLog
from airflow_hitl.policy import EscalationLevel, Principal, quorum_reached
from airflow_hitl.queries import ApprovalQueries
from airflow_hitl.records import Approval, Vote, content_digest_of, policy_of
from airflow_hitl.sla import SlaWatch
from airflow_hitl.spec import (
    ApprovalFilter,
    ApprovalSpec,
    DagAccess,
    Decision,
    LinkUse,
    StandingUse,
    TimeoutOutcome,
    adopted,
    check_texts,
    closed_by,
    json_safe,
    same_task_try,
    utcnow,
    why_closed,
)
from airflow_hitl.standing import StandingApprovals
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import (
    ACTIONS,
    ORIGINS,
    VOTE_SOURCES,
    WAITING_STATES,
    Action,
    AuditType,
    Origin,
    Source,
    State,
)

log = logging.getLogger(__name__)

__all__ = [
    "ApprovalFilter",
    "ApprovalManager",
    "ApprovalSpec",
    "AuditEvent",
    "DagAccess",
    "Decision",
    "LinkUse",
    "TimeoutOutcome",
    "utcnow",
]


class ApprovalManager:
    """Owns every state transition, policy check and audit row of the approval store; composed of its services."""

    def __init__(
        self,
        *,
        store: ApprovalStore | None = None,
        conn_id: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        audit_key: str | None = None,
    ) -> None:
        self.store = store or get_store(conn_id=conn_id)
        self._clock = clock
        # Read once: every transaction of this manager keys its audit links with it.
        # None reads ``[hitl] audit_key``; an empty string is no key.
        self._audit_key = AuditKey.configured() if audit_key is None else AuditKey.of(audit_key)
        self.transactions = StoreTransactions(store=self.store, audit_key=self._audit_key)
        self.queries = ApprovalQueries(store=self.store, clock=clock)
        self.notices = NoticeLog(store=self.store, clock=clock)
        self.audit = AuditReader(store=self.store, audit_key=self._audit_key)
        self.delegations = Delegations(store=self.store, clock=clock, audit_key=self._audit_key)
        self.gate_ends = GateEnds(store=self.store, clock=clock)
        self.standing = StandingApprovals(store=self.store, clock=clock, audit_key=self._audit_key)
        self.sla = SlaWatch(store=self.store, clock=clock, audit_key=self._audit_key)

    # ------------------------------------------------------------------ create

    def create(
        self, spec: ApprovalSpec, *, actor: str | None = None, source: str = Source.OPERATOR, origin: str = Origin.TASK
    ) -> Approval:
        """Open a gate; for a task instance try that already has one, return it instead of a second.

        ``origin`` is the caller's, never the request body's: ``task`` for the operator's
        gate, ``api`` for a request opened over the REST API. Only a ``task`` request is ever
        taken for a task instance's gate, whatever dag, run and task ids an ``api`` one names,
        and only one its own task instance try opened (see :func:`~airflow_hitl.spec.adopted`):
        a DAG run deleted and created again under its run id asks again.
        """
        spec.validate()
        if origin not in ORIGINS:
            raise InvalidInput("origin", f"must be one of {list(ORIGINS)}")
        if origin != Origin.TASK and spec.task_instance_id is not None:
            raise InvalidInput("task_instance_id", "only a task's gate (origin 'task') names its task instance")
        task_try = origin == Origin.TASK and bool(spec.run_id and spec.task_id) and spec.try_number is not None
        if task_try and (existing := self._find_for_try(spec)) is not None:
            return existing
        try:
            return self._insert(spec, actor=actor, source=source, origin=origin, task_try=task_try)
        except IntegrityError:
            # Two workers running the same try raced; the other one's row is the request.
            existing = self._find_for_try(spec) if task_try else None
            if existing is None:
                raise
            return existing

    def _find_for_try(self, spec: ApprovalSpec) -> Approval | None:
        with self.store.session() as session:
            row = adopted(spec, session.scalars(same_task_try(spec)).all())
            return Approval.from_row(row) if row is not None else None

    def _insert(self, spec: ApprovalSpec, *, actor: str | None, source: str, origin: str, task_try: bool) -> Approval:
        now = self._clock()
        # Parsed before the transaction: a form's schemas are checked (bounded, see forms) while no lock is held.
        form = parse_inputs(spec.inputs)
        with self.transactions.transaction() as session:
            if task_try:
                # Closed in this transaction, audited as every cancel: an earlier try cleared while it
                # waited (the triggerer may not have cancelled it), or an earlier life of the DAG run.
                for stale in session.scalars(closed_by(spec).with_for_update()).all():
                    why, closer = why_closed(spec, stale)
                    self._finish(
                        session,
                        stale,
                        state=State.CANCELLED,
                        decision=None,
                        by=None,
                        comment=why,
                        source=closer,
                        now=now,
                        event_type=AuditType.CANCELLED,
                    )
            row = ApprovalRequestRow(
                id=str(uuid.uuid4()),
                dag_id=spec.dag_id,
                run_id=spec.run_id,
                task_id=spec.task_id,
                map_index=spec.map_index,
                try_number=spec.try_number,
                task_instance_id=spec.task_instance_id,
                origin=origin,
                title=spec.title,
                description=spec.description,
                reason=spec.reason,
                context=json_safe(spec.context),
                approval_type=spec.approval_type,
                state=State.PENDING,
                requested_by=spec.requested_by,
                requested_at=now,
                expires_at=now + spec.timeout if spec.timeout else None,
                timeout_seconds=spec.timeout.total_seconds() if spec.timeout else None,
                timeout_action=spec.timeout_action if spec.timeout else None,
                sla_seconds=spec.sla.total_seconds() if spec.sla else None,
                escalation_level=0,
                escalation_targets=[level.to_json() for level in spec.escalation_targets],
                escalation_final_action=spec.escalation_final_action,
                required_approvals=spec.required_approvals,
                require_all=spec.require_all,
                allowed_approvers=list(dict.fromkeys(spec.allowed_approvers)),
                allowed_roles=list(dict.fromkeys(spec.allowed_roles)),
                allow_self_approval=spec.allow_self_approval,
                on_reject=spec.on_reject,
                metadata_=json_safe(spec.metadata),
                notify=json_safe(spec.notify),
                inputs=form,
                distinct_from=list(dict.fromkeys(spec.distinct_from)) or None,
                bound=dict(spec.bound) or None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self.transactions.measure(session, metrics.request_opened)
            self.transactions.audit(
                session,
                request_id=row.id,
                event_type=AuditType.REQUESTED,
                actor=actor or spec.requested_by,
                source=source,
                details=with_request_facts(
                    {
                        "dag_id": spec.dag_id,
                        "run_id": spec.run_id,
                        "task_id": spec.task_id,
                        "map_index": spec.map_index,
                        "try_number": spec.try_number,
                        "task_instance_id": spec.task_instance_id,
                        "origin": origin,
                        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                        "required_approvals": spec.required_approvals,
                        "allowed_approvers": row.allowed_approvers,
                        "allowed_roles": row.allowed_roles,
                    },
                    row,
                    content=True,
                ),
                at=now,
            )
            outbox.plan_opened(session, row, now)
            self.standing.plan(session, row, now)
            # Announced on commit (PostgreSQL): wakes the outbox drainer and anyone watching for new gates.
            self.transactions.notify(session, row.id)
            return Approval.from_row(row, votes=())

    # ------------------------------------------------------------------ decide

    def decide(self, request_id: str, decision: Decision) -> Approval:
        """Record one person's decision from any channel: the one path every channel takes.

        REST (one and bulk), the pages, an emailed link, a Slack button and the CLI all build
        a :class:`Decision` and call this; the request's policy, the audit trail and the
        link's single use are applied here, in one transaction.
        """
        if decision.action == Action.CANCEL:
            if decision.link is not None:
                raise InvalidInput("action", "an emailed link cannot cancel a request")
            return self.cancel(
                request_id,
                actor=decision.user.name,
                reason=decision.reason or "",
                source=decision.source,
                client=decision.client,
                dag_access=decision.dag_access,
            )
        if decision.action == Action.REJECT:
            if not isinstance(decision.reason, str) or not decision.reason.strip():
                raise InvalidInput("reason", "a reason is required to reject")
        elif decision.action != Action.APPROVE:
            raise InvalidInput("action", f"must be one of {list(ACTIONS)}")
        if decision.content_digest is not None and (problem := digest_problem(decision.content_digest)):
            raise InvalidInput("content_digest", problem)
        return self._vote(
            request_id,
            user=decision.user,
            action=decision.action,
            comment=decision.comment,
            reason=decision.reason.strip() if decision.action == Action.REJECT and decision.reason else None,
            metadata=decision.metadata if decision.action == Action.APPROVE else None,
            source=decision.source,
            client=decision.client,
            dag_access=decision.dag_access,
            link=decision.link,
            on_behalf_of=decision.on_behalf_of,
            delegator_roles=decision.delegator_roles,
            delegator_access=decision.delegator_access,
            inputs=decision.inputs,
            content_digest=decision.content_digest.lower() if decision.content_digest else None,
            standing=decision.standing,
        )

    def approve(
        self,
        request_id: str,
        *,
        user: Principal,
        comment: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Approval:
        """Record ``user``'s approval; approve the request once quorum is reached.

        ``dag_access`` lets a caller's own access rule (Airflow's, for the REST API) refuse
        the vote with :class:`NotAllowed`; it is asked under the row lock, with the DAG id
        read in the same statement, so authorizing costs no extra query.
        """
        return self._vote(
            request_id,
            user=user,
            action=Action.APPROVE,
            comment=comment,
            reason=None,
            metadata=metadata,
            source=source,
            client=client,
            dag_access=dag_access,
            inputs=inputs,
        )

    def reject(
        self,
        request_id: str,
        *,
        user: Principal,
        reason: str,
        comment: str | None = None,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
    ) -> Approval:
        """Record ``user``'s rejection; one allowed rejection rejects the request at once."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("reason", "a reason is required to reject")
        return self._vote(
            request_id,
            user=user,
            action=Action.REJECT,
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
        link: LinkUse | None = None,
        on_behalf_of: str | None = None,
        delegator_roles: RolesOf | None = None,
        delegator_access: DelegatorAccess | None = None,
        inputs: Mapping[str, Any] | None = None,
        content_digest: str | None = None,
        standing: StandingUse | None = None,
    ) -> Approval:
        if source == Source.BREAK_GLASS:
            # Break-glass holds the store's credentials, not an Airflow identity: it may stop a gate, never pass one.
            raise NotAllowed(f"a {Source.BREAK_GLASS} decision can only cancel a request, never {action} it")
        if source not in VOTE_SOURCES:
            raise InvalidInput("source", f"must be one of {list(VOTE_SOURCES)}")
        if (source == Source.STANDING) != (standing is not None and action == Action.APPROVE):
            raise InvalidInput("source", "only a standing approval casts a 'standing' vote, and only to approve")
        check_texts(comment=comment, reason=reason)
        # Given values are checked against the form before the lock: what a schema costs (bounded,
        # see forms) is never spent while the request's other deciders wait on its row.
        checked = self.queries.checked_inputs(request_id, inputs, approving=action == Action.APPROVE)
        with self.transactions.transaction() as session:
            row, votes = self.transactions.lock(session, request_id, dag_access=dag_access)
            now = self._clock()
            if link is not None:
                # Used up with the vote, in this transaction: a refused vote leaves it usable.
                self.notices.use_link(
                    session,
                    link.notification_id,
                    request_id=row.id,
                    recipient=link.recipient,
                    action=action,
                    now=now,
                )
            self._ensure_open(row, now)
            if standing is not None:  # spent with this vote, or not at all (a refusal below rolls it back)
                metadata = {**(metadata or {}), "standing": self.standing.spend(session, standing, row, now)}
            # What the request is now, under the lock; a decider who saw something else decides nothing.
            digest = content_digest_of(row)
            if content_digest is not None and content_digest != digest:
                raise ContentChanged(row.id)
            # The caller's own vote, or a delegator's they cast (refused with the reason why not).
            acting = self.delegations.acting(
                session,
                row,
                votes,
                user=user,
                action=action,
                on_behalf_of=on_behalf_of,
                roles_of=delegator_roles,
                now=now,
                access=delegator_access,
            )
            # Four eyes across the run: neither the voter nor a delegate casting it voted on a gate this one names.
            if not (apart := self.queries.separation(session, row, (acting.voter.name, acting.delegate), lock=True)):
                raise NotAllowed(apart.reason or "this gate needs someone else")
            delegated = {"delegate": acting.delegate, "delegation_id": acting.delegation_id} if acting.delegate else {}
            user = acting.voter
            if inputs is not None and not isinstance(inputs, Mapping):
                raise InvalidInput("inputs", "must be an object of input name -> value")
            # Against the form stored with the request: what counts is the form this very gate
            # asked for, whatever the DAG file says now. Only defaults and required inputs are
            # left to do here when values were given: they were checked before the lock.
            if isinstance(checked, InvalidInput):
                raise checked
            if checked is None:
                checked = resolve_inputs(row.inputs or {}, inputs, approving=action == Action.APPROVE)
            values = checked
            vote = Vote(
                user=user.name,
                delegate=acting.delegate,
                user_roles=tuple(sorted(user.roles)),
                vote=action,
                comment=comment,
                reason=reason,
                source=source,
                escalation_level=row.escalation_level,
                metadata=json_safe(metadata or {}),
                inputs=json_safe(values),
                created_at=now,
                # What this vote was cast on: the digest the caller gave, which matched, or the
                # request's own when none was given (the vote still decided exactly this content).
                content_digest=digest,
            )
            try:
                # The row lock makes a duplicate impossible; the unique constraint makes it
                # impossible twice over.
                self.transactions.cast(session, row, vote)
            except IntegrityError as err:
                raise AlreadyVoted(row.id, user.name) from err
            votes.append(vote)
            self.transactions.audit(
                session,
                request_id=row.id,
                event_type=AuditType.VOTE,
                actor=user.name,
                source=source,
                comment=comment or reason,
                details=with_vote_facts(
                    {
                        "vote": action,
                        "reason": reason,
                        "roles": sorted(user.roles),
                        "escalation_level": row.escalation_level,
                        **delegated,
                        **({"inputs": json_safe(values)} if values else {}),
                        **dict(client or {}),
                    },
                    vote,
                ),
                at=now,
            )
            if action == Action.REJECT:
                self._finish(
                    session,
                    row,
                    state=State.REJECTED,
                    decision=State.REJECTED,
                    by=user.name,
                    comment=reason if not comment else f"{reason} — {comment}",
                    source=source,
                    now=now,
                    client=client,
                    details=delegated,
                )
            elif quorum_reached(policy_of(row), ((v.user, v.user_roles, v.vote) for v in votes)):
                self._finish(
                    session,
                    row,
                    state=State.APPROVED,
                    decision=State.APPROVED,
                    by=user.name,
                    comment=comment,
                    source=source,
                    now=now,
                    client=client,
                    details=delegated,
                )
            else:
                row.updated_at = now
                # Written even when the clock reads as before: a vote always writes a new
                # version of its request, which is what pages of requests are kept by.
                flag_modified(row, "updated_at")
            session.flush()
            return Approval.from_row(row, votes=votes)

    def decide_automatically(self, request_id: str, *, source: str, comment: str) -> Approval:
        """Approve at once without people (``approval_type='auto'`` or a true condition)."""
        with self.transactions.transaction() as session:
            row, votes = self.transactions.lock(session, request_id)
            if row.state not in WAITING_STATES:
                return Approval.from_row(row, votes=votes)
            self._finish(
                session,
                row,
                state=State.APPROVED,
                decision=State.APPROVED,
                by=None,
                comment=comment,
                source=source,
                now=self._clock(),
            )
            session.flush()
            return Approval.from_row(row, votes=votes)

    def cancel(
        self,
        request_id: str,
        *,
        actor: str | None,
        reason: str,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
        dag_access: DagAccess | None = None,
    ) -> Approval:
        """Cancel a waiting request (the task was cleared or marked, or someone withdrew it)."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("reason", "a reason is required to cancel")
        check_texts(reason=reason)
        with self.transactions.transaction() as session:
            row, votes = self.transactions.lock(session, request_id, dag_access=dag_access)
            if row.state not in WAITING_STATES:
                raise ApprovalNotPending(row.id, row.state)
            self._finish(
                session,
                row,
                state=State.CANCELLED,
                decision=None,
                by=actor,
                comment=reason.strip(),
                source=source,
                now=self._clock(),
                client=client,
            )
            session.flush()
            return Approval.from_row(row, votes=votes)

    def apply_timeout(self, request_id: str) -> TimeoutOutcome:
        """Apply the timeout action if the request is still waiting and has expired.

        Safe to call from any number of triggerers at once: the row lock makes exactly one
        of them apply it; the others see the new state and change nothing.
        """
        with self.transactions.transaction() as session:
            row, votes = self.transactions.lock(session, request_id)
            now = self._clock()
            if row.state not in WAITING_STATES or row.expires_at is None or now < row.expires_at:
                return TimeoutOutcome(approval=Approval.from_row(row, votes=votes), applied=False)
            targets = [EscalationLevel.from_json(t) for t in row.escalation_targets or ()]
            if row.timeout_action == Action.ESCALATE and row.escalation_level < len(targets):
                self._escalate(session, row, targets[row.escalation_level], now)
                session.flush()
                return TimeoutOutcome(approval=Approval.from_row(row, votes=votes), applied=True, escalated=True)
            action = row.escalation_final_action if row.timeout_action == Action.ESCALATE else row.timeout_action
            decision = State.APPROVED if action == Action.APPROVE else State.REJECTED
            self._finish(
                session,
                row,
                state=State.TIMEOUT,
                decision=decision,
                by=None,
                comment=f"timed out; action taken: {action}",
                source=Source.TIMEOUT,
                now=now,
                details={"action": action, "escalation_level": row.escalation_level},
            )
            session.flush()
            return TimeoutOutcome(approval=Approval.from_row(row, votes=votes), applied=True)

    def _escalate(self, session: Session, row: ApprovalRequestRow, level: EscalationLevel, now: dt.datetime) -> None:
        # Escalation widens the circle: the earlier approvers may still decide.
        row.escalation_level += 1
        row.state = State.ESCALATED
        self.transactions.measure(session, metrics.request_escalated)
        row.allowed_approvers = list(dict.fromkeys([*row.allowed_approvers, *level.approvers]))
        row.allowed_roles = list(dict.fromkeys([*row.allowed_roles, *level.roles]))
        if level.required_approvals is not None:
            row.required_approvals = level.required_approvals
        row.expires_at = now + level.timeout
        row.updated_at = now
        self.transactions.audit(
            session,
            request_id=row.id,
            event_type=AuditType.ESCALATED,
            actor=None,
            source=Source.TIMEOUT,
            details=with_request_facts(
                {
                    "escalation_level": row.escalation_level,
                    "added_approvers": list(level.approvers),
                    "added_roles": list(level.roles),
                    "expires_at": row.expires_at.isoformat(),
                },
                row,
            ),
            at=now,
        )
        # Queued in this transaction: the escalation notice exists if and only if the escalation does.
        outbox.plan_escalated(session, row, now)
        self.standing.plan(session, row, now)
        self.transactions.notify(session, row.id)

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
        self.transactions.measure(
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
        self.transactions.audit(
            session,
            request_id=row.id,
            event_type=event_type or state,
            actor=by,
            source=source,
            comment=comment,
            details=with_request_facts(
                {
                    "from_state": previous,
                    "decision": decision,
                    **dict(details or {}),
                    **dict(client or {}),
                },
                row,
            ),
            at=now,
        )
        outbox.plan_closed(session, row, now)
        self.transactions.notify(session, row.id)

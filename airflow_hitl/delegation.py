"""Delegation: a user lets another decide their approvals for a while, on some DAGs or all.

While a delegation from ``alice`` to ``bob`` is active (``starts_at <= now < ends_at``, not
ended) and covers a request's DAG, ``bob`` may cast the vote ``alice`` could cast: it is
recorded as ``alice``'s vote (it counts once, as hers) with ``delegate = bob``, and shown as
"bob for alice" in the audit, the XCom and the pages. The request's own policy is applied to
``alice`` (her name and roles); the self-approval rule to both of them. So is ``alice``'s
access to the DAG as it is when ``bob`` votes: a delegation passes on the right to decide
while she has it, not beyond (demoted to a viewer since, her delegate cannot decide for her).

A service of :class:`~airflow_hitl.manager.ApprovalManager` (``manager.delegations``): creating
and ending are audited in the hash chain like every other change (events without a request),
and the vote path asks :meth:`Delegations.acting` under the request's row lock whose vote a
decision casts.

What only the auth manager knows (whether a user exists, a delegator's roles and current
access to a DAG) reaches this layer as callables from :mod:`airflow_hitl.identity` and
:mod:`airflow_hitl.notifications.access`, passed by the channel; who counts as an admin is
decided there too and passed in as a flag.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from airflow_hitl.audit import AuditKey
from airflow_hitl.exceptions import AlreadyVoted, ApprovalConflict, HitlError, InvalidInput, NotAllowed
from airflow_hitl.limits import MAX_TIMEOUT_SECONDS, text_problem
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalDelegationRow, ApprovalRequestRow
from airflow_hitl.policy import ConfigProblems, Eligibility, PolicyView, Principal, check_vote, is_allowed_approver
from airflow_hitl.records import Approval, Vote, jsonable, policy_of
from airflow_hitl.spec import aware_utc, utcnow
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import Action, AuditType, Source

#: A user's roles by name, as the auth manager knows them (None: it cannot tell).
RolesOf = Callable[[str], Iterable[str] | None]
#: Whether a user of that name exists (None: the auth manager cannot tell).
UserKnown = Callable[[str], bool | None]
#: Why a delegator may not decide approvals of a DAG now (delegator, dag_id -> reason), or None when they may.
DelegatorAccess = Callable[[str, str], str | None]

#: At most this many DAG ids in one delegation (a longer list is a mistake, or all DAGs).
MAX_DAG_IDS = 1000
#: At most this long (ten years, like a gate's timeout).
MAX_PERIOD = dt.timedelta(seconds=MAX_TIMEOUT_SECONDS)


class DelegationNotFound(HitlError):
    """No delegation with this id (404)."""

    status_code = 404

    def __init__(self, delegation_id: str) -> None:
        self.delegation_id = delegation_id
        super().__init__(f"delegation {delegation_id!r} not found")


class AmbiguousDelegation(ApprovalConflict):
    """The caller may decide for more than one delegator here and did not say for whom (409)."""


@dataclass(frozen=True, kw_only=True)
class Delegation:
    """``delegator`` lets ``delegate`` decide their approvals from ``starts_at`` to ``ends_at``."""

    id: str
    delegator: str
    delegate: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    dag_ids: tuple[str, ...] | None
    created_by: str
    created_at: dt.datetime
    ended_at: dt.datetime | None = None
    ended_by: str | None = None

    @classmethod
    def from_row(cls, row: ApprovalDelegationRow) -> Delegation:
        """Copy a delegation row."""
        return cls(
            id=row.id,
            delegator=row.delegator,
            delegate=row.delegate,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            dag_ids=tuple(row.dag_ids) if row.dag_ids is not None else None,
            created_by=row.created_by,
            created_at=row.created_at,
            ended_at=row.ended_at,
            ended_by=row.ended_by,
        )

    def state_at(self, now: dt.datetime) -> str:
        """``scheduled`` (not started), ``active``, ``expired`` (its period is over) or ``ended`` (early)."""
        if self.ended_at is not None:
            return "ended"
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "scheduled"

    def active_at(self, now: dt.datetime) -> bool:
        """True while ``delegate`` may decide for ``delegator``."""
        return self.state_at(now) == "active"

    def covers(self, dag_id: str) -> bool:
        """True when the delegation applies to requests of ``dag_id``."""
        return self.dag_ids is None or dag_id in self.dag_ids

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        """JSON-ready form with its ``state`` at ``now`` (the API's and the pages' shape)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["dag_ids"] = list(self.dag_ids) if self.dag_ids is not None else None
        data["state"] = self.state_at(now)
        ready: dict[str, Any] = jsonable(data)
        return ready


@dataclass(frozen=True, kw_only=True)
class Acting:
    """Whose vote a decision casts: the caller's own, or a delegator's through ``delegation_id``."""

    voter: Principal
    delegate: str | None = None
    delegation_id: str | None = None


def check_delegated_vote(
    policy: PolicyView, *, delegate: str, delegator: Principal, action: str, voters: Iterable[str]
) -> Eligibility:
    """May ``delegate`` cast ``delegator``'s ``action`` under ``policy``? Self-approval binds both."""
    name = delegator.name
    if name in set(voters):
        return Eligibility(allowed=False, code="already_voted", reason=f"{name} has already voted on this request")
    if delegate in set(voters):
        # One person counts once: bob's own vote and a vote he casts for alice would be two
        # approvals from one human, which a two-person rule exists to prevent.
        return Eligibility(
            allowed=False,
            code="counted_once",
            reason=f"you have already voted on this request yourself and cannot also vote for {name}",
        )
    if not is_allowed_approver(policy, name, delegator.roles):
        return Eligibility(
            allowed=False, code="not_allowed", reason=f"{name} is not an allowed approver of this request"
        )
    if action == Action.APPROVE and not policy.allow_self_approval:
        if name == policy.requested_by:
            return Eligibility(
                allowed=False,
                code="self_approval",
                reason=f"{name} triggered this run and cannot approve it, not even through a delegate",
            )
        if delegate == policy.requested_by:
            return Eligibility(
                allowed=False,
                code="self_approval",
                reason=f"you triggered this run and cannot approve it yourself, not even for {name}",
            )
    return Eligibility(allowed=True, code="delegate", reason=f"for {name}", on_behalf_of=name)


def _with_access(verdict: Eligibility, access: DelegatorAccess, delegator: str, dag_id: str) -> Eligibility:
    """``verdict`` (allowed by the policy), refused when ``delegator`` may not decide ``dag_id`` now."""
    refusal = access(delegator, dag_id)
    if refusal is None:
        return verdict
    return Eligibility(allowed=False, code="delegator_access", reason=f"{delegator} may not decide it now: {refusal}")


def _name(value: Any, field_name: str, problems: ConfigProblems) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.add(field_name, "must be a user name")
        return None
    name: str = value.strip()
    problem = text_problem(name) or ("must be at most 250 characters" if len(name) > 250 else None)
    if problem:
        problems.add(field_name, problem)
        return None
    return name


def _dag_ids(value: Any, problems: ConfigProblems) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        problems.add("dag_ids", "must be a list of DAG ids (omit it for every DAG)")
        return None
    if not value:
        problems.add("dag_ids", "must name at least one DAG (omit it for every DAG)")
        return None
    if len(value) > MAX_DAG_IDS:
        problems.add("dag_ids", f"must name at most {MAX_DAG_IDS} DAGs")
        return None
    wrong = [v for v in value if not isinstance(v, str) or not v.strip() or len(v) > 250 or text_problem(v)]
    if wrong:
        problems.add("dag_ids", f"must be non-empty strings of at most 250 characters, got {wrong[:5]!r}")
        return None
    return sorted({v.strip() for v in value})


def _refusal(request_id: str, user: str, own: Eligibility, refusals: Iterable[str]) -> HitlError:
    """Why ``user`` may cast no vote: their own refusal, and each delegation's (once each)."""
    reasons = list(dict.fromkeys(refusals))
    if own.code == "already_voted":
        # One person counts once: whatever a delegation would allow, a voter has voted (409).
        return AlreadyVoted(request_id, user)
    reason = own.reason or "not allowed"
    if reasons:
        reason += "; as a delegate: " + "; ".join(reasons)
    return NotAllowed(reason)


class Delegations:
    """Create, list and end delegations; resolve on whose behalf a vote is cast."""

    def __init__(
        self,
        *,
        store: ApprovalStore,
        clock: Callable[[], dt.datetime] = utcnow,
        audit_key: AuditKey | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        # Creating and ending a delegation append to the audit chain, under the manager's key.
        self._transactions = StoreTransactions(store=store, audit_key=audit_key)

    def create_delegation(
        self,
        *,
        actor: Principal,
        delegate: Any,
        starts_at: Any,
        ends_at: Any,
        dag_ids: Any = None,
        delegator: Any = None,
        admin: bool = False,
        user_known: UserKnown | None = None,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
    ) -> Delegation:
        """Let ``delegate`` decide ``delegator``'s approvals (the actor's own unless an admin names another).

        Every wrong field is named in one :class:`InvalidInput`; a non-admin naming someone
        else as delegator is :class:`NotAllowed`. Overlapping delegations are allowed (to
        several delegates, or for several DAG sets): a delegate with more than one delegator
        for a request says on whose behalf they decide.
        """
        if delegator is not None and delegator != actor.name and not admin:
            # Refused before any lookup: a non-admin learns nothing about other users.
            raise NotAllowed("only an admin may create a delegation for someone else")
        now = self._clock()
        problems = ConfigProblems()
        owner = actor.name if delegator is None else _name(delegator, "delegator", problems)
        to = _name(delegate, "delegate", problems)
        start = aware_utc(starts_at, "starts_at", problems)
        end = aware_utc(ends_at, "ends_at", problems)
        dags = _dag_ids(dag_ids, problems)
        if owner and to and owner == to:
            problems.add("delegate", "must be someone else than the delegator")
        if start and end:
            if end <= start:
                problems.add("ends_at", "must be after starts_at")
            elif end - start > MAX_PERIOD:
                problems.add("ends_at", f"must be at most {MAX_PERIOD.days} days after starts_at")
        if end and end <= now:
            problems.add("ends_at", "must be in the future")
        if to and user_known is not None and user_known(to) is False:
            problems.add("delegate", f"no user {to!r} is known to Airflow's auth manager")
        if owner and owner != actor.name and user_known is not None and user_known(owner) is False:
            problems.add("delegator", f"no user {owner!r} is known to Airflow's auth manager")
        problems.raise_if_any(InvalidInput)
        assert owner and to and start and end  # for the type checker: problems were raised above
        with self._transactions.transaction() as session:
            row = ApprovalDelegationRow(
                id=str(uuid.uuid4()),
                delegator=owner,
                delegate=to,
                starts_at=start,
                ends_at=end,
                dag_ids=dags,
                created_by=actor.name,
                created_at=now,
            )
            session.add(row)
            session.flush()
            self._audit_delegation(
                session,
                row,
                event_type=AuditType.DELEGATION_CREATED,
                actor=actor,
                admin=admin,
                source=source,
                client=client,
                at=now,
                terms={"starts_at": start.isoformat(), "ends_at": end.isoformat(), "dag_ids": dags},
            )
            return Delegation.from_row(row)

    def get_delegation(self, delegation_id: str) -> Delegation:
        """One delegation; :class:`NotFound` (404) when unknown."""
        with self.store.session() as session:
            row = session.get(ApprovalDelegationRow, str(delegation_id))
            if row is None:
                raise DelegationNotFound(str(delegation_id))
            return Delegation.from_row(row)

    def list_delegations(
        self, *, involving: str | None = None, active_only: bool = False, limit: int = 100, offset: int = 0
    ) -> tuple[builtins.list[Delegation], int]:
        """Delegations where ``involving`` is delegator or delegate (every one for None), newest first."""
        if limit < 0 or limit > 10_000:
            raise InvalidInput("limit", "must be between 0 and 10000")
        if offset < 0:
            raise InvalidInput("offset", "must not be negative")
        now = self._clock()
        where: builtins.list[Any] = []
        if involving is not None:
            where.append(or_(ApprovalDelegationRow.delegator == involving, ApprovalDelegationRow.delegate == involving))
        if active_only:
            where += [
                ApprovalDelegationRow.ended_at.is_(None),
                ApprovalDelegationRow.starts_at <= now,
                ApprovalDelegationRow.ends_at > now,
            ]
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(ApprovalDelegationRow).where(*where)) or 0
            rows = session.scalars(
                select(ApprovalDelegationRow)
                .where(*where)
                .order_by(ApprovalDelegationRow.created_at.desc(), ApprovalDelegationRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return [Delegation.from_row(r) for r in rows], int(total)

    def end_delegation(
        self,
        delegation_id: str,
        *,
        actor: Principal,
        admin: bool = False,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
    ) -> Delegation:
        """End a delegation now (its delegator or an admin); ending an ended one changes nothing."""
        with self._transactions.transaction() as session:
            row = session.scalar(
                select(ApprovalDelegationRow).where(ApprovalDelegationRow.id == str(delegation_id)).with_for_update()
            )
            if row is None:
                raise DelegationNotFound(str(delegation_id))
            if actor.name != row.delegator and not admin:
                raise NotAllowed("only the delegator or an admin may end a delegation")
            now = self._clock()
            if row.ended_at is not None or row.ends_at <= now:
                return Delegation.from_row(row)
            # Ended, not deleted: the audit trail and the votes cast through it name it.
            row.ended_at = now
            row.ended_by = actor.name
            self._audit_delegation(
                session,
                row,
                event_type=AuditType.DELEGATION_ENDED,
                actor=actor,
                admin=admin,
                source=source,
                client=client,
                at=now,
            )
            session.flush()
            return Delegation.from_row(row)

    def _audit_delegation(
        self,
        session: Session,
        row: ApprovalDelegationRow,
        *,
        event_type: str,
        actor: Principal,
        admin: bool,
        source: str,
        client: Mapping[str, Any] | None,
        at: dt.datetime,
        terms: Mapping[str, Any] | None = None,
    ) -> None:
        # A delegation's events have no request: the chain names the delegation, both people,
        # its terms when it is created, and whether an admin acted for someone else.
        self._transactions.audit(
            session,
            request_id=None,
            event_type=event_type,
            actor=actor.name,
            source=source,
            details={
                "delegation_id": row.id,
                "delegator": row.delegator,
                "delegate": row.delegate,
                **dict(terms or {}),
                "admin": admin and actor.name != row.delegator,
                **dict(client or {}),
            },
            at=at,
        )

    def describe_delegation(self, delegation: Delegation) -> dict[str, Any]:
        """``delegation`` as JSON with its state now (the API's and the pages' shape)."""
        return delegation.to_dict(self._clock())

    def delegations_to(self, delegate: str) -> builtins.list[Delegation]:
        """The delegations ``delegate`` may act on now (to mark what they may decide in a list)."""
        with self.store.session() as session:
            return self._active_to(session, delegate, self._clock())

    @staticmethod
    def _active_to(session: Session, delegate: str, now: dt.datetime) -> builtins.list[Delegation]:
        rows = session.scalars(
            select(ApprovalDelegationRow)
            .where(
                ApprovalDelegationRow.delegate == delegate,
                ApprovalDelegationRow.ends_at > now,
                ApprovalDelegationRow.starts_at <= now,
                ApprovalDelegationRow.ended_at.is_(None),
            )
            .order_by(ApprovalDelegationRow.delegator, ApprovalDelegationRow.created_at)
        ).all()
        return [Delegation.from_row(r) for r in rows]

    @staticmethod
    def can_decide(
        user: Principal,
        approval: Approval,
        own: Eligibility,
        delegations: Iterable[Delegation],
        *,
        roles_of: RolesOf | None = None,
        action: str = Action.APPROVE,
        access: DelegatorAccess | None = None,
    ) -> Eligibility:
        """``own`` eligibility, or else the first delegator ``user`` may decide ``approval`` for.

        ``delegations`` are the user's active ones (:meth:`delegations_to`, read once per list).
        An allowed delegated answer has code ``delegate`` and the reason "for alice". ``access``
        says why a delegator may not decide the DAG now (their current access), as the vote will.
        """
        if own.code in ("not_pending", "expired"):
            return own
        cast_for = next((v.user for v in approval.votes if v.delegate == user.name), None)
        if cast_for is not None:
            return Eligibility(
                allowed=False, code="counted_once", reason=f"you have already voted on this request for {cast_for}"
            )
        if own.allowed:
            return own
        voters = [v.user for v in approval.votes]
        for delegation in delegations:
            if not delegation.covers(approval.dag_id):
                continue
            delegator = Principal.of(delegation.delegator, (roles_of(delegation.delegator) if roles_of else None) or ())
            verdict = check_delegated_vote(
                approval.policy, delegate=user.name, delegator=delegator, action=action, voters=voters
            )
            if verdict.allowed and access is not None:
                verdict = _with_access(verdict, access, delegator.name, approval.dag_id)
            if verdict.allowed:
                return verdict
        return own

    def acting(
        self,
        session: Session,
        row: ApprovalRequestRow,
        votes: Sequence[Vote],
        *,
        user: Principal,
        action: str,
        on_behalf_of: str | None,
        roles_of: RolesOf | None,
        now: dt.datetime,
        access: DelegatorAccess | None = None,
    ) -> Acting:
        """Whose vote ``user``'s decision casts on ``row`` (locked, with its ``votes``), or why they may not cast it.

        Without ``on_behalf_of``: the user's own vote when the policy allows it, else the one
        active delegator it allows (409 when several do). With it: that delegator's vote, if
        an active delegation to ``user`` covers the DAG. A delegator's vote needs the policy to
        allow them and ``access`` (their access to the DAG now, asked here under the lock).
        """
        policy = policy_of(row)
        voters = [v.user for v in votes]
        cast_for = next((v.user for v in votes if v.delegate == user.name), None)
        if cast_for is not None:
            # One person counts once, whether for themselves or for one delegator: a vote was cast (409).
            raise AlreadyVoted(
                row.id,
                user.name,
                detail=f"you have already voted on this request for {cast_for} and cannot vote on it again",
            )
        own = check_vote(policy, user, action=action, voters=voters)
        if on_behalf_of is None or on_behalf_of == user.name:
            if own.allowed:
                return Acting(voter=user)
            candidates = [] if on_behalf_of else self._active_to(session, user.name, now)
            allowed: dict[str, Acting] = {}
            refusals: builtins.list[str] = []
            for candidate in candidates:
                if not candidate.covers(row.dag_id) or candidate.delegator in allowed:
                    continue
                acting, verdict = self._delegated(
                    candidate, row, user=user, action=action, voters=voters, roles_of=roles_of, access=access
                )
                if acting is not None:
                    allowed[candidate.delegator] = acting
                elif verdict.reason:
                    refusals.append(verdict.reason)
            if len(allowed) == 1:
                return next(iter(allowed.values()))
            if len(allowed) > 1:
                names = " and ".join(sorted(allowed))
                raise AmbiguousDelegation(
                    f"you may decide for {names} here: say on whose behalf with `on_behalf_of` "
                    "(your own name for your own vote)"
                )
            raise _refusal(row.id, user.name, own, refusals)
        chosen = next(
            (
                d
                for d in self._active_to(session, user.name, now)
                if d.delegator == on_behalf_of and d.covers(row.dag_id)
            ),
            None,
        )
        if chosen is None:
            raise NotAllowed(f"no active delegation from {on_behalf_of!r} to you covers DAG {row.dag_id!r}")
        acting, verdict = self._delegated(
            chosen, row, user=user, action=action, voters=voters, roles_of=roles_of, access=access
        )
        if acting is not None:
            return acting
        if verdict.code == "already_voted":
            raise AlreadyVoted(row.id, chosen.delegator)
        if verdict.code == "counted_once":
            raise AlreadyVoted(row.id, user.name, detail=verdict.reason)
        raise NotAllowed(verdict.reason or "not allowed")

    @staticmethod
    def _delegated(
        delegation: Delegation,
        row: ApprovalRequestRow,
        *,
        user: Principal,
        action: str,
        voters: builtins.list[str],
        roles_of: RolesOf | None,
        access: DelegatorAccess | None,
    ) -> tuple[Acting | None, Eligibility]:
        # The delegator's roles as the auth manager knows them now, not the delegate's.
        roles = (roles_of(delegation.delegator) if roles_of else None) or ()
        delegator = Principal.of(delegation.delegator, roles)
        verdict = check_delegated_vote(
            policy_of(row), delegate=user.name, delegator=delegator, action=action, voters=voters
        )
        if verdict.allowed and access is not None:
            verdict = _with_access(verdict, access, delegator.name, row.dag_id)
        if not verdict.allowed:
            return None, verdict
        return Acting(voter=delegator, delegate=user.name, delegation_id=delegation.id), verdict

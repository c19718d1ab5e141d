"""Standing approvals: an approver's vote given ahead of time, scoped, expiring and counted.

``alice`` says "I approve the gates of DAG ``nightly_load`` (task ``approve_load``, or every
gate of it) that open between now and Friday, at most 5 times". Each gate of that DAG that
opens, or escalates, inside that window owes her standing approval a vote: a *due* row written
in the very transaction that opened or escalated it (:meth:`StandingApprovals.plan`), so what
was live at that moment is what counts, and a standing approval created later does not reach
back to a gate already waiting.

The api-server casts the owed votes (:mod:`airflow_hitl.api.standing_applier`): it asks the
auth manager for the owner's roles and edit access as they are *now*, and hands the vote to
the one decision path (:meth:`~airflow_hitl.manager.ApprovalManager.decide`) with source
``standing``, where the gate's policy at that moment applies as to any vote (allowed approvers
and roles, no self-approval, one vote per person, a quorum counts it once, four eyes across a
run). Inside that decision's transaction, under the request's row lock,
:meth:`StandingApprovals.spend` locks the standing approval's row, re-checks it (not revoked,
uses left), spends one use, marks the due row used, queues the owner's notice and counts the
metric: all of it commits with the vote or not at all. Two gates opening at the same instant
against one use left take turns on that row, and the second finds none left; a revocation
takes the same lock, so a vote is either cast before it or not at all. A vote the policy
refuses spends nothing: its due row is settled ``skipped`` with the reason
(:meth:`StandingApprovals.settle`).

A service of :class:`~airflow_hitl.manager.ApprovalManager` (``manager.standing``): creating
and revoking are audited in the hash chain like every other change (events without a
request); a use is the vote it casts, whose audit event names the standing approval.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from airflow_hitl import metrics, outbox
from airflow_hitl.audit import AuditKey
from airflow_hitl.exceptions import HitlError, InvalidInput, NotAllowed
from airflow_hitl.limits import text_problem
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalRequestRow, ApprovalStandingDueRow, ApprovalStandingRow
from airflow_hitl.policy import ConfigProblems, Principal
from airflow_hitl.records import jsonable
from airflow_hitl.spec import DagAccess, StandingUse, aware_utc, utcnow
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import STANDING_STATES, AuditType, Source, StandingDue

#: Whether Airflow knows a DAG of that id (None: it cannot tell, e.g. no metadata DB here).
DagKnown = Callable[[str], bool | None]

#: At most this many uses (a larger number is a mistake, or no limit: omit ``max_uses``).
MAX_USES = 1_000_000
#: Owed votes cast in one look at most; the rest wait for the next.
DUE_BATCH = 100


class StandingNotFound(HitlError):
    """No standing approval with this id (404)."""

    status_code = 404

    def __init__(self, standing_id: str) -> None:
        self.standing_id = standing_id
        super().__init__(f"standing approval {standing_id!r} not found")


class StandingRefused(NotAllowed):
    """The standing approval can cast no vote now: revoked, used up, or its vote settled already (403)."""


@dataclass(frozen=True, kw_only=True)
class StandingApproval:
    """``approver`` approves ahead the gates of ``dag_id`` (``task_id``, or all) that open in the window."""

    id: str
    approver: str
    dag_id: str
    task_id: str | None
    valid_from: dt.datetime
    valid_until: dt.datetime
    max_uses: int | None
    uses_left: int | None
    comment: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revoked_by: str | None = None

    @classmethod
    def from_row(cls, row: ApprovalStandingRow) -> StandingApproval:
        """Copy a standing approval row."""
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    def state_at(self, now: dt.datetime) -> str:
        """``scheduled``, ``active``, ``expired``, ``used_up`` or ``revoked`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.uses_left == 0:
            return "used_up"
        if now >= self.valid_until:
            return "expired"
        return "active" if now >= self.valid_from else "scheduled"

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        """JSON-ready form with its ``state`` at ``now`` (the API's and the pages' shape)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["state"] = self.state_at(now)
        ready: dict[str, Any] = jsonable(data)
        return ready


@dataclass(frozen=True, kw_only=True)
class OwedVote:
    """A vote a standing approval owes a gate (a due row), as the api-server's applier sees it."""

    due_id: int
    standing_id: str
    request_id: str
    escalation_level: int
    approver: str
    dag_id: str
    comment: str
    due_at: dt.datetime

    @property
    def use(self) -> StandingUse:
        """What the decision carries so the vote spends exactly this owed use."""
        return StandingUse(due_id=self.due_id, standing_id=self.standing_id)


def _id(value: Any, field_name: str, problems: ConfigProblems, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(field_name, "must be a non-empty string" + ("" if required else " or null"))
        return None
    text = value.strip()
    problem = text_problem(text) or ("must be at most 250 characters" if len(text) > 250 else None)
    if problem:
        problems.add(field_name, problem)
        return None
    return text


class StandingApprovals:
    """Create, list and revoke standing approvals; plan, spend and settle the votes they owe."""

    def __init__(
        self,
        *,
        store: ApprovalStore,
        clock: Callable[[], dt.datetime] = utcnow,
        audit_key: AuditKey | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        # Creating and revoking append to the audit chain, under the manager's key.
        self._transactions = StoreTransactions(store=store, audit_key=audit_key)

    # ------------------------------------------------------------------ the owner's side

    def create(
        self,
        *,
        actor: Principal,
        dag_id: Any,
        valid_until: Any,
        comment: Any,
        task_id: Any = None,
        valid_from: Any = None,
        max_uses: Any = None,
        max_days: int = 30,
        dag_access: DagAccess | None = None,
        dag_known: DagKnown | None = None,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
    ) -> StandingApproval:
        """``actor``'s vote ahead for the gates of ``dag_id`` (``task_id``'s, or all) opening in the window.

        Every wrong field is named in one :class:`InvalidInput` (a window in the past or longer
        than ``max_days``, ``max_uses`` below 1, an unknown DAG); ``dag_access`` refusing the
        DAG (the actor could not decide its gates) is :class:`NotAllowed`, asked before whether
        the DAG exists so a caller learns nothing of DAGs they may not decide. A ``valid_from``
        in the past starts now: a standing approval never votes on a gate opened before it.
        """
        now = self._clock()
        problems = ConfigProblems()
        dag = _id(dag_id, "dag_id", problems, required=True)
        task = _id(task_id, "task_id", problems, required=False)
        start = now if valid_from is None else aware_utc(valid_from, "valid_from", problems)
        end = aware_utc(valid_until, "valid_until", problems)
        if isinstance(max_uses, bool) or (max_uses is not None and not isinstance(max_uses, int)):
            problems.add("max_uses", "must be a whole number of at least 1, or null for no limit")
        elif max_uses is not None and not 1 <= max_uses <= MAX_USES:
            problems.add("max_uses", f"must be between 1 and {MAX_USES}, or null for no limit")
        if not isinstance(comment, str) or not comment.strip():
            problems.add("comment", "must say why you approve ahead (a non-empty text)")
        elif problem := text_problem(comment):
            problems.add("comment", problem)
        if start is not None:
            start = max(start, now)
        longest = dt.timedelta(days=max(1, int(max_days)))
        if end is not None:
            if end <= now:
                problems.add("valid_until", "must be in the future: the window is over")
            elif start is not None and end <= start:
                problems.add("valid_until", "must be after valid_from")
            elif start is not None and end - start > longest:
                problems.add(
                    "valid_until",
                    f"must be at most {longest.days} days after valid_from ([hitl] standing_approval_max_days)",
                )
        problems.raise_if_any(InvalidInput)
        assert dag is not None and start is not None and end is not None  # raised above otherwise
        if dag_access is not None and (refusal := dag_access(dag)) is not None:
            raise NotAllowed(refusal)
        if dag_known is not None and dag_known(dag) is False:
            raise InvalidInput("dag_id", f"no DAG {dag!r} is known to Airflow")
        with self._transactions.transaction() as session:
            row = ApprovalStandingRow(
                id=str(uuid.uuid4()),
                approver=actor.name,
                dag_id=dag,
                task_id=task,
                valid_from=start,
                valid_until=end,
                max_uses=max_uses,
                uses_left=max_uses,
                comment=str(comment).strip(),
                created_at=now,
            )
            session.add(row)
            session.flush()
            self._audit(
                session,
                row,
                event_type=AuditType.STANDING_CREATED,
                actor=actor,
                source=source,
                client=client,
                at=now,
                terms={
                    "dag_id": dag,
                    "task_id": task,
                    "valid_from": start.isoformat(),
                    "valid_until": end.isoformat(),
                    "max_uses": max_uses,
                },
            )
            return StandingApproval.from_row(row)

    def describe(self, standing: StandingApproval) -> dict[str, Any]:
        """``standing`` as JSON with its state now, by this service's clock (the API's and the pages' shape)."""
        return standing.to_dict(self._clock())

    def get(self, standing_id: str) -> StandingApproval:
        """One standing approval; :class:`StandingNotFound` (404) when unknown."""
        with self.store.session() as session:
            row = session.get(ApprovalStandingRow, str(standing_id))
            if row is None:
                raise StandingNotFound(str(standing_id))
            return StandingApproval.from_row(row)

    def list(
        self,
        *,
        approver: str | None = None,
        dag_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[builtins.list[StandingApproval], int]:
        """Standing approvals of ``approver`` (everyone's for None), newest first, and how many match."""
        if limit < 0 or limit > 10_000:
            raise InvalidInput("limit", "must be between 0 and 10000")
        if offset < 0:
            raise InvalidInput("offset", "must not be negative")
        if state is not None and state not in STANDING_STATES:
            raise InvalidInput("state", f"must be one of {list(STANDING_STATES)}")
        now = self._clock()
        s = ApprovalStandingRow
        where: builtins.list[Any] = []
        if approver is not None:
            where.append(s.approver == approver)
        if dag_id is not None:
            where.append(s.dag_id == dag_id)
        live = [s.revoked_at.is_(None), or_(s.uses_left.is_(None), s.uses_left > 0)]
        by_state: dict[str | None, builtins.list[Any]] = {
            None: [],
            "revoked": [s.revoked_at.is_not(None)],
            "used_up": [s.revoked_at.is_(None), s.uses_left == 0],
            "expired": [*live, s.valid_until <= now],
            "active": [*live, s.valid_from <= now, s.valid_until > now],
            "scheduled": [*live, s.valid_from > now],
        }
        where += by_state[state]
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(s).where(*where)) or 0
            rows = session.scalars(
                select(s).where(*where).order_by(s.created_at.desc(), s.id).limit(limit).offset(offset)
            ).all()
            return [StandingApproval.from_row(r) for r in rows], int(total)

    def revoke(
        self,
        standing_id: str,
        *,
        actor: Principal,
        admin: bool = False,
        source: str = Source.API,
        client: Mapping[str, Any] | None = None,
    ) -> StandingApproval:
        """Revoke now (its owner or an admin): it casts no vote from here on; revoking twice changes nothing."""
        with self._transactions.transaction() as session:
            # The lock every use takes too: a vote is cast before the revocation or not at all.
            row = session.scalar(
                select(ApprovalStandingRow)
                .where(ApprovalStandingRow.id == str(standing_id))
                .with_for_update(key_share=True)
            )
            if row is None:
                raise StandingNotFound(str(standing_id))
            if actor.name != row.approver and not admin:
                raise NotAllowed("only its approver or an admin may revoke a standing approval")
            if row.revoked_at is not None:
                return StandingApproval.from_row(row)
            now = self._clock()
            row.revoked_at = now
            row.revoked_by = actor.name
            self._audit(
                session,
                row,
                event_type=AuditType.STANDING_REVOKED,
                actor=actor,
                source=source,
                client=client,
                at=now,
            )
            session.flush()
            return StandingApproval.from_row(row)

    def _audit(
        self,
        session: Session,
        row: ApprovalStandingRow,
        *,
        event_type: str,
        actor: Principal,
        source: str,
        client: Mapping[str, Any] | None,
        at: dt.datetime,
        terms: Mapping[str, Any] | None = None,
    ) -> None:
        # A standing approval's events have no request: the chain names it, its owner, its terms
        # when it is created, and whether someone else (an admin) revoked it.
        self._transactions.audit(
            session,
            request_id=None,
            event_type=event_type,
            actor=actor.name,
            source=source,
            comment=row.comment if event_type == AuditType.STANDING_CREATED else None,
            details={
                "standing_approval_id": row.id,
                "approver": row.approver,
                **({"terms": dict(terms)} if terms else {}),
                **({"uses_left": row.uses_left} if event_type == AuditType.STANDING_REVOKED else {}),
                **dict(client or {}),
            },
            at=at,
        )

    # ------------------------------------------------------------------ the gate's side

    def plan(self, session: Session, row: ApprovalRequestRow, now: dt.datetime) -> int:
        """Owe ``row`` (opening, or escalating to its current level) the votes of the standing approvals live now.

        Called by the manager inside that transition's transaction: the votes are owed if and
        only if it commits, and a standing approval created or revoked a moment later does
        not change what was live. Returns how many are owed.
        """
        s = ApprovalStandingRow
        live = session.scalars(
            select(s.id).where(
                s.dag_id == row.dag_id,
                or_(s.task_id.is_(None), s.task_id == row.task_id),
                s.revoked_at.is_(None),
                or_(s.uses_left.is_(None), s.uses_left > 0),
                s.valid_from <= now,
                s.valid_until > now,
            )
        ).all()
        for standing_id in live:
            session.add(
                ApprovalStandingDueRow(
                    standing_id=standing_id,
                    request_id=row.id,
                    escalation_level=row.escalation_level,
                    due_at=now,
                    status=StandingDue.DUE,
                )
            )
        return len(live)

    def owed(self, *, limit: int = DUE_BATCH) -> builtins.list[OwedVote]:
        """The votes owed and not cast yet, oldest first (the api-server's applier casts them).

        One statement over the partial index of unsettled rows: the applier asks after every
        transition, and almost always nothing is owed.
        """
        d, s, r = ApprovalStandingDueRow, ApprovalStandingRow, ApprovalRequestRow
        statement = (
            select(d.id, d.standing_id, d.request_id, d.escalation_level, d.due_at, s.approver, s.comment, r.dag_id)
            .join(s, s.id == d.standing_id)
            .join(r, r.id == d.request_id)
            .where(d.status == StandingDue.DUE)
            .order_by(d.due_at, d.id)
            .limit(limit)
        )
        with self.store.read_engine.connect() as conn:
            rows = conn.execute(statement).all()
            conn.rollback()
        return [
            OwedVote(
                due_id=row.id,
                standing_id=row.standing_id,
                request_id=row.request_id,
                escalation_level=row.escalation_level,
                approver=row.approver,
                dag_id=row.dag_id,
                comment=row.comment,
                due_at=row.due_at,
            )
            for row in rows
        ]

    def spend(self, session: Session, use: StandingUse, row: ApprovalRequestRow, now: dt.datetime) -> dict[str, Any]:
        """Spend one use of ``use``'s standing approval on the locked ``row``; what the vote records of it.

        Called by the one decision path inside the vote's transaction, with the request's row
        locked: the standing approval's row is locked next (the order every use takes, so two
        uses never wait on each other in a circle), re-checked and spent, its owed vote marked
        used, the owner's notice queued and the metric counted. All of it rolls back with a
        vote the policy refuses afterwards. :class:`StandingRefused` when it can cast no vote.
        """
        d, s = ApprovalStandingDueRow, ApprovalStandingRow
        due = session.scalar(select(d).where(d.id == use.due_id).with_for_update())
        if due is None or due.request_id != row.id or due.standing_id != use.standing_id:
            raise StandingRefused(f"standing approval {use.standing_id} owes no vote to request {row.id}")
        if due.status != StandingDue.DUE:
            raise StandingRefused(f"the vote standing approval {use.standing_id} owed this request is settled")
        if due.escalation_level != row.escalation_level:
            # Owed to a level the gate has left: the level it escalated to owes its own.
            raise StandingRefused(f"the gate escalated to level {row.escalation_level} since this vote was owed")
        standing = session.scalar(select(s).where(s.id == due.standing_id).with_for_update(key_share=True))
        assert standing is not None  # a foreign key
        if standing.revoked_at is not None:
            raise StandingRefused(f"standing approval {standing.id} was revoked")
        if standing.uses_left == 0:
            raise StandingRefused(f"standing approval {standing.id} has no uses left")
        if standing.uses_left is not None:
            standing.uses_left -= 1
        due.status = StandingDue.USED
        due.settled_at = now
        outbox.plan_standing_used(session, row, standing_id=standing.id, now=now)
        self._transactions.measure(session, metrics.standing_used)
        return {
            "id": standing.id,
            "uses_left": standing.uses_left,
            "max_uses": standing.max_uses,
            "valid_until": standing.valid_until.isoformat(),
        }

    def settle(self, due_id: int, *, reason: str) -> bool:
        """Mark an owed vote ``skipped`` with ``reason`` (the policy or the standing approval refused it).

        Only while it is still owed: one settled meanwhile (another api-server cast it) stays
        as it is. True when this call settled it.
        """
        d = ApprovalStandingDueRow
        with self.store.begin() as session:
            result = session.execute(
                update(d)
                .where(d.id == int(due_id), d.status == StandingDue.DUE)
                .values(status=StandingDue.SKIPPED, reason=reason[:2000], settled_at=self._clock())
            )
            return bool(getattr(result, "rowcount", 0))

    def owed_to(self, request_id: str) -> builtins.list[dict[str, Any]]:
        """What the standing approvals owed ``request_id`` and how each was settled (the pages' detail)."""
        d, s = ApprovalStandingDueRow, ApprovalStandingRow
        with self.store.session() as session:
            rows = session.execute(
                select(d.standing_id, d.escalation_level, d.status, d.reason, d.due_at, d.settled_at, s.approver)
                .join(s, s.id == d.standing_id)
                .where(d.request_id == str(request_id))
                .order_by(d.id)
            ).all()
        result: builtins.list[dict[str, Any]] = jsonable([dict(r._mapping) for r in rows])
        return result

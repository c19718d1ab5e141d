"""Reading approval requests: one, lists with filters, the inbox, history and wait states.

A service of :class:`~airflow_hitl.manager.ApprovalManager` (``manager.queries``); reads take
no write lock (SQLite's deferred BEGIN), so polls and pages never hold up a decision.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import (
    String,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, joinedload

from airflow_hitl.exceptions import ApprovalNotFound, InvalidInput
from airflow_hitl.forms import resolve_inputs
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import WAITING_PREDICATE, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.policy import Eligibility, Principal, check_vote, separation_check
from airflow_hitl.records import Approval, TaskGate, WaitState
from airflow_hitl.spec import ORDERABLE, ApprovalFilter, replace_filter, utcnow, where_clauses
from airflow_hitl.transaction import decoded, text_columns, votes_of
from airflow_hitl.vocabulary import TERMINAL_STATES, WAITING_STATES, Action, Origin

_REQUEST_COLUMNS, _REQUEST_JSON = text_columns(ApprovalRequestRow.__table__)  # type: ignore[arg-type]


K = TypeVar("K")
V = TypeVar("V")

#: Requests a process keeps as read, per store: a few pages of the inbox (a snapshot with its
#: votes takes a few kilobytes).
SNAPSHOT_CACHE_SIZE = 2_000
#: Request ids read in one query at most (an IN list well under every driver's parameter limit).
_ID_BATCH = 500
_REQUESTS = ApprovalRequestRow.__table__.c
# PostgreSQL's row version: every UPDATE of a request writes a new one. A vote always updates
# its request in the same transaction, so (id, version) names the request and its votes.
_VERSION = literal_column("xmin::text", String).label("version")
_BY_IDS_PG = select(*_REQUEST_COLUMNS, _VERSION).where(_REQUESTS.id == any_(bindparam("ids", type_=ARRAY(String))))
# Votes on gates of one run that another gate names (four eyes across a run) take turns per run
# under this transaction-level advisory lock: two gates naming each other could otherwise each
# pass its check on the other's votes while neither is committed. The two-key form keeps it
# apart from the audit chain's one-key lock.
_SEPARATION_LOCK = text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), hashtext(:run))")
SEPARATION_LOCK_SPACE = 0x48495431  # "HIT1"


class Kept(Generic[K, V]):
    """A bounded, thread-safe map, least recently used out: what a process keeps of what it read."""

    def __init__(self, *, size: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: K) -> V | None:
        """The value kept under ``key``, if any."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


# The requests one process read from one store, by ``(id, row version)``: a page of the inbox
# is read as its ids and versions, and only the requests that changed since are read in full.
_Snapshots = Kept[tuple[str, str], Approval]


_SNAPSHOTS: WeakKeyDictionary[ApprovalStore, _Snapshots] = WeakKeyDictionary()
_SNAPSHOTS_LOCK = threading.Lock()


def _snapshots_of(store: ApprovalStore) -> _Snapshots:
    with _SNAPSHOTS_LOCK:
        found = _SNAPSHOTS.get(store)
        if found is None:
            found = _SNAPSHOTS[store] = _Snapshots(size=SNAPSHOT_CACHE_SIZE)
        return found


def _waiting_task_gates(table: Any) -> tuple[Any, ...]:
    """The waiting requests a task's gate opened (with a run, a task and a try): the parked gates' pass reads them."""
    return (
        text(WAITING_PREDICATE),
        table.origin == Origin.TASK,
        table.run_id.is_not(None),
        table.task_id.is_not(None),
        table.try_number.is_not(None),
    )


class ApprovalQueries:
    """What the store holds, as :class:`~airflow_hitl.records.Approval` snapshots."""

    def __init__(self, *, store: ApprovalStore, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        # Whether a request has expired (``can_approve``) is asked of the manager's clock.
        self._clock = clock

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
        where = where_clauses(filters or ApprovalFilter())
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(ApprovalRequestRow).where(*where)) or 0
            if self.store.is_postgres:
                page = (
                    select(_REQUESTS.id, _VERSION)
                    .where(*where)
                    .order_by(ordering.nulls_last(), ApprovalRequestRow.id)
                    .limit(limit)
                    .offset(offset)
                )
                return self._snapshots(session, session.execute(page).all()), int(total)
            # Core rows, not ORM objects: a page is only copied into records, and building
            # (and identity-mapping) 100 rows first cost more than the database did.
            rows = session.execute(
                select(*_REQUEST_COLUMNS)
                .where(*where)
                .order_by(ordering.nulls_last(), ApprovalRequestRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            votes = votes_of(session, [r.id for r in rows], postgres=False)
        items = [Approval.from_columns(decoded(r, _REQUEST_JSON), votes=tuple(votes.get(r.id, ()))) for r in rows]
        return items, int(total)

    def _snapshots(self, session: Session, page: Sequence[Any]) -> builtins.list[Approval]:
        """The records of a page read as ``(id, version)`` rows: kept ones as kept, the others read now."""
        kept = _snapshots_of(self.store)
        found: dict[str, Approval] = {}
        for request_id, version in page:
            snapshot = kept.get((request_id, version))
            if snapshot is not None:
                found[request_id] = snapshot
        missing = [request_id for request_id, _ in page if request_id not in found]
        if missing:
            rows = session.execute(_BY_IDS_PG, {"ids": missing}).all()
            votes = votes_of(session, missing, postgres=True)
            for row in rows:
                snapshot = Approval.from_columns(decoded(row, _REQUEST_JSON), votes=tuple(votes.get(row.id, ())))
                # Kept under the version read with it: were a vote committed between this read
                # and its votes' read, it also wrote a newer version, and this key is never asked again.
                kept.put((row.id, row.version), snapshot)
                found[row.id] = snapshot
        return [found[request_id] for request_id, _ in page if request_id in found]

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
        return self.list(replace_filter(base, states=WAITING_STATES), limit=limit, offset=offset, order_by=order_by)

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
        return self.list(
            replace_filter(base, states=states or ["__none__"]), limit=limit, offset=offset, order_by=order_by
        )

    def dag_ids(self) -> builtins.list[str]:
        """Every DAG that has approval requests (to narrow lists to the DAGs a caller may read)."""
        with self.store.session() as session:
            return sorted(session.scalars(select(ApprovalRequestRow.dag_id).distinct()))

    def can_approve(self, user: Principal, approval: Approval, *, action: str = Action.APPROVE) -> Eligibility:
        """May ``user`` cast ``action`` on ``approval`` now? The reason says why not."""
        if not approval.is_waiting:
            return Eligibility(allowed=False, code="not_pending", reason=f"this request is {approval.state}")
        if approval.expires_at is not None and self._clock() >= approval.expires_at:
            return Eligibility(allowed=False, code="expired", reason="this request has expired")
        own = check_vote(approval.policy, user, action=action, voters=(v.user for v in approval.votes))
        if not own.allowed or not approval.distinct_from:
            return own
        return self.separated(approval, (user.name,))

    def apart(self, approval: Approval, user: str, eligibility: Eligibility) -> Eligibility:
        """``eligibility`` (from ``can_decide``), or why not when its delegator voted on a gate this one names.

        ``can_approve`` already asked about ``user``; a delegated answer names someone else, who
        counts as much under ``distinct_from``.
        """
        if not eligibility.allowed or not eligibility.on_behalf_of:
            return eligibility
        separation = self.separated(approval, (user, eligibility.on_behalf_of))
        return eligibility if separation.allowed else separation

    def separated(self, approval: Approval, deciders: Sequence[str | None]) -> Eligibility:
        """May ``deciders`` (a voter, and the delegate casting it) vote on ``approval`` under its ``distinct_from``?

        Read without a lock, for what the pages, links and Slack show; the vote asks again under
        the request's lock (:meth:`separation`).
        """
        if not approval.distinct_from:
            return Eligibility(allowed=True)
        with self.store.session() as session:
            return self.separation(session, approval, deciders)

    def separation(
        self,
        session: Session,
        request: Approval | ApprovalRequestRow,
        deciders: Sequence[str | None],
        *,
        lock: bool = False,
    ) -> Eligibility:
        """Four eyes across a run: may ``deciders`` vote on ``request``, given who voted on the gates it names?

        Only a task's gate is separated: the named gates are the ``task`` requests of the same DAG
        run (any map index, any try), and everyone who voted there counts, a delegate as well as
        the person they voted for. With ``lock`` (the vote's own transaction on PostgreSQL), votes
        under such a rule in one run take turns first, so the votes read are every committed one.
        """
        gates = tuple(request.distinct_from or ())
        if not gates or request.run_id is None or request.origin != Origin.TASK:
            return Eligibility(allowed=True)
        if lock and self.store.is_postgres:
            session.execute(
                _SEPARATION_LOCK, {"space": SEPARATION_LOCK_SPACE, "run": f"{request.dag_id}/{request.run_id}"}
            )
        found = session.execute(
            select(ApprovalRequestRow.task_id, ApprovalVoteRow.user, ApprovalVoteRow.delegate)
            .join(ApprovalVoteRow, ApprovalVoteRow.request_id == ApprovalRequestRow.id)
            .where(
                ApprovalRequestRow.dag_id == request.dag_id,
                ApprovalRequestRow.run_id == request.run_id,
                ApprovalRequestRow.task_id.in_(gates),
                ApprovalRequestRow.origin == Origin.TASK,
            )
        ).all()
        took_part: dict[str, set[str]] = {gate: set() for gate in gates}
        for task_id, user, delegate in found:
            took_part[str(task_id)].update(name for name in (user, delegate) if name)
        return separation_check(deciders, took_part)

    def checked_inputs(
        self, request_id: str, inputs: Mapping[str, Any] | None, *, approving: bool
    ) -> dict[str, Any] | InvalidInput | None:
        """Given ``inputs`` resolved against the request's form, read without a lock (a form never changes).

        The values, or the :class:`InvalidInput` to raise once the decision's other checks
        (access, state, policy) passed, in their usual order; None when nothing was given
        or the request was not found (left to the lock).
        """
        if not inputs or not isinstance(inputs, Mapping):
            return None
        with self.store.session() as session:
            form = session.scalar(select(ApprovalRequestRow.inputs).where(ApprovalRequestRow.id == str(request_id)))
        if form is None:
            return None
        try:
            return resolve_inputs(form, inputs, approving=approving)
        except InvalidInput as err:
            return err

    def task_instance_ids(self, request_ids: Sequence[str]) -> dict[str, str | None]:
        """The task instance try each of ``request_ids`` recorded when it opened (None: not recorded).

        What the pass over parked gates compares with Airflow's task instances
        (:mod:`airflow_hitl.api.parked`); it never changes once written.
        """
        table = ApprovalRequestRow.__table__.c
        found: dict[str, str | None] = {}
        with self.store.read_engine.connect() as conn:
            for first in range(0, len(request_ids), _ID_BATCH):
                chunk = [str(i) for i in request_ids[first : first + _ID_BATCH]]
                statement = select(table.id, table.task_instance_id).where(table.id.in_(chunk))
                found.update((str(row.id), row.task_instance_id) for row in conn.execute(statement))
            conn.rollback()
        return found

    def closed_task_gates(self, request_ids: Sequence[str]) -> builtins.list[TaskGate]:
        """Of ``request_ids``, the closed requests that a task's gate opened, with their task instance, in one query.

        What the gate closer reads for each batch of transitions: most are requests opening
        or still waiting, or opened over the API, and need no more than this.
        """
        if not request_ids:
            return []
        table = ApprovalRequestRow.__table__.c
        statement = select(
            table.id, table.dag_id, table.run_id, table.task_id, table.map_index, table.try_number
        ).where(
            table.id.in_([str(i) for i in request_ids]),
            table.origin == Origin.TASK,
            table.run_id.is_not(None),
            table.task_id.is_not(None),
            table.try_number.is_not(None),
            table.state.in_(sorted(TERMINAL_STATES)),
        )
        with self.store.read_engine.connect() as conn:
            found = {
                str(row.id): TaskGate(
                    id=str(row.id),
                    dag_id=row.dag_id,
                    run_id=row.run_id,
                    task_id=row.task_id,
                    map_index=row.map_index,
                    try_number=row.try_number,
                )
                for row in conn.execute(statement)
            }
            conn.rollback()
        # In the order asked, each once.
        return [found[i] for i in dict.fromkeys(str(r) for r in request_ids) if i in found]

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

    def deadlines(self, *, limit: int) -> builtins.list[WaitState]:
        """The ``limit`` waiting requests with an expiry, soonest ``expires_at`` first (due or not).

        What the api-server's deadline worker reads each time it wakes: one walk of the
        partial index of waiting requests (``ix_approval_requests_waiting``, in expiry order),
        stopped after ``limit`` rows however many requests wait.
        """
        table = ApprovalRequestRow.__table__.c
        statement = (
            select(table.id, table.state, table.expires_at, table.escalation_level)
            .where(text(WAITING_PREDICATE), table.expires_at.is_not(None))
            .order_by(table.expires_at, table.id)
            .limit(limit)
        )
        with self.store.read_engine.connect() as conn:
            rows = conn.execute(statement).all()
            conn.rollback()
        return [
            WaitState(id=r.id, state=r.state, expires_at=r.expires_at, escalation_level=r.escalation_level)
            for r in rows
        ]

    def waiting_task_gates(self) -> builtins.list[tuple[TaskGate, dt.datetime | None]]:
        """Every waiting request a task's gate opened, with its task instance try and its ``expires_at``.

        What the api-server's reconcile of parked gates compares with Airflow's task instances
        (:mod:`airflow_hitl.api.gate_closer`): one walk of the partial index of waiting requests.
        """
        table = ApprovalRequestRow.__table__.c
        statement = select(
            table.id, table.dag_id, table.run_id, table.task_id, table.map_index, table.try_number, table.expires_at
        ).where(*_waiting_task_gates(table))
        with self.store.read_engine.connect() as conn:
            rows = conn.execute(statement).all()
            conn.rollback()
        return [
            (
                TaskGate(
                    id=str(r.id),
                    dag_id=r.dag_id,
                    run_id=r.run_id,
                    task_id=r.task_id,
                    map_index=r.map_index,
                    try_number=r.try_number,
                ),
                r.expires_at,
            )
            for r in rows
        ]

    def waiting_task_gates_fingerprint(self) -> tuple[int, dt.datetime | None, int]:
        """What :meth:`waiting_task_gates` would read, summed up by the database in one row.

        ``(count, latest updated_at, sum of escalation levels)`` over the same rows: a new
        waiting request adds one, a closed (or deleted) one takes one away, and every other
        change of a waiting request writes ``updated_at`` (a vote, an escalation: the only
        change of ``expires_at``; ``try_number`` and the task never change). The escalation
        levels go up with each escalation whatever the clock reads, so an escalation changes
        the fingerprint even when the store's clock stepped back. Equal fingerprints: nothing
        the api-server's pass over parked gates acts on has changed in the store.
        """
        table = ApprovalRequestRow.__table__.c
        statement = select(
            func.count(), func.max(table.updated_at), func.coalesce(func.sum(table.escalation_level), 0)
        ).where(*_waiting_task_gates(table))
        with self.store.read_engine.connect() as conn:
            count, latest, levels = conn.execute(statement).one()
            conn.rollback()
        return int(count), latest, int(levels)

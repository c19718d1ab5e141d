"""Task instances and triggers in Airflow's metadata DB, for the api-server's gate closer.

The only code of airflow-hitl that reads or writes Airflow's ``task_instance`` and ``trigger``
tables (and reads which DAG runs exist, in ``dag_run``), and the only caller of Airflow's
``handle_event_submit``: see the table in :mod:`airflow_hitl.seam`. Callers see our own types
(:class:`TaskKey`, :class:`TaskTry`, :class:`HeldTaskInstance`, :class:`ParkedTask`), never
Airflow's ORM classes or sessions.

A gate waits either deferred on its trigger (Airflow 3.1 and 3.2, and ``airflow dags test``) or
parked in ``awaiting_input`` (Airflow 3.3+, :mod:`airflow_hitl.seam.parking`): then the row
itself holds what the gate parked with (``next_method``, ``next_kwargs`` with our request id)
and its backstop deadline (``trigger_timeout``, which Airflow's scheduler sweeps).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.triggers.base import TriggerEvent
    from sqlalchemy import TextClause

#: What :func:`hold_task_instance` yields when no task instance has the key.
MISSING = "missing"
#: What :func:`hold_task_instance` yields when another transaction holds the row's lock.
LOCKED_ELSEWHERE = "locked"
#: The state of a parked task instance (Airflow 3.3+; ``TaskInstanceState.AWAITING_INPUT``).
AWAITING_INPUT = "awaiting_input"


@dataclass(frozen=True, kw_only=True)
class TaskKey:
    """The primary key of one task instance (every try of it shares the row)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int

    @property
    def run(self) -> RunKey:
        """The DAG run this task instance belongs to."""
        return RunKey(dag_id=self.dag_id, run_id=self.run_id)


@dataclass(frozen=True, kw_only=True)
class RunKey:
    """The key of one DAG run: a run deleted and created again under its run id has the same key."""

    dag_id: str
    run_id: str


@dataclass(frozen=True, kw_only=True)
class TaskTry:
    """What a light, unlocked look found of a task instance: its state, its current try and that try's id.

    ``id`` is Airflow's id of the task instance try (a new one for every try, and for the task
    instances of a DAG run deleted and created again), as the canonical text of a UUID.
    """

    state: str | None
    try_number: int
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeferralTrigger:
    """The trigger a task instance is deferred on: its class path and its keyword arguments."""

    classpath: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class ParkedRequest:
    """What a task instance parked in ``awaiting_input`` with: the method it resumes in and our arguments.

    ``request_id`` is None when the task parked without one (Airflow's own HITL operators).
    """

    method_name: str | None
    request_id: str | None
    follow: Mapping[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class ParkedTask:
    """A task instance parked in ``awaiting_input`` on one of our requests, as a light look found it."""

    key: TaskKey
    try_number: int
    request_id: str
    #: When Airflow's deadline sweep resumes it (``trigger_timeout``); None: never.
    backstop: dt.datetime | None


@dataclass(frozen=True, kw_only=True)
class BackstopMove:
    """A new deadline for the task instance try of ``key``, while it stays parked."""

    key: TaskKey
    try_number: int
    deadline: dt.datetime | None


def _parked_request(next_method: Any, next_kwargs: Any) -> ParkedRequest:
    # Our gate parks with plain JSON arguments, which Airflow stores as given (its serde leaves
    # str keys and JSON values alone, and re-encodes them alike when its sweep adds an event).
    request_id = follow = None
    if isinstance(next_kwargs, Mapping):
        found = next_kwargs.get("request_id")
        request_id = found if isinstance(found, str) else None
        kept = next_kwargs.get("follow")
        follow = kept if isinstance(kept, Mapping) else None
    return ParkedRequest(method_name=next_method, request_id=request_id, follow=follow)


def task_tries(keys: Sequence[TaskKey], *, batch: int) -> dict[TaskKey, TaskTry]:
    """The state, try and id of each task instance of ``keys`` that exists, ``batch`` keys per query.

    Unlocked reads of three columns in one session: the cheapest look at Airflow's DB there is.
    """
    from airflow.utils.session import create_session

    found: dict[TaskKey, TaskTry] = {}
    with create_session() as session:
        for first in range(0, len(keys), batch):
            chunk = keys[first : first + batch]
            params: dict[str, Any] = {}
            for i, key in enumerate(chunk):
                params.update({f"d{i}": key.dag_id, f"r{i}": key.run_id, f"t{i}": key.task_id, f"m{i}": key.map_index})
            for dag_id, run_id, task_id, map_index, state, try_number, ti_id in session.execute(
                _task_states_sql(len(chunk)), params
            ):
                key = TaskKey(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
                found[key] = TaskTry(state=state, try_number=try_number, id=_uuid_text(ti_id))
    return found


def existing_runs(runs: Sequence[RunKey], *, batch: int) -> set[RunKey]:
    """Which of ``runs`` exist in Airflow's metadata DB, ``batch`` runs per query.

    Unlocked reads of ``dag_run``'s unique key (dag_id, run_id), one term per run.
    """
    from airflow.utils.session import create_session

    found: set[RunKey] = set()
    with create_session() as session:
        for first in range(0, len(runs), batch):
            chunk = runs[first : first + batch]
            params: dict[str, Any] = {}
            for i, run in enumerate(chunk):
                params.update({f"d{i}": run.dag_id, f"r{i}": run.run_id})
            for dag_id, run_id in session.execute(_runs_sql(len(chunk)), params):
                found.add(RunKey(dag_id=dag_id, run_id=run_id))
    return found


def _uuid_text(value: Any) -> str | None:
    # Airflow 3.2+ keeps the id as a UUID (PostgreSQL's uuid, 32 hex digits on SQLite), 3.1 as text.
    if value is None:
        return None
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


@functools.cache
def _task_states_sql(count: int) -> TextClause:
    # Plain SQL named from Airflow's own table: a select over its mapped columns spends more
    # building its cache key (about 0.5 ms) than the lookup itself takes. Each key is one
    # term on the table's primary key columns, so PostgreSQL reads each row by its index.
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import text

    table = TaskInstance.__table__
    c = table.c
    terms = " OR ".join(
        f"({c.dag_id.name} = :d{i} AND {c.run_id.name} = :r{i} AND {c.task_id.name} = :t{i} "
        f"AND {c.map_index.name} = :m{i})"
        for i in range(count)
    )
    columns = (c.dag_id, c.run_id, c.task_id, c.map_index, c.state, c.try_number, c.id)
    return text(f"SELECT {', '.join(col.name for col in columns)} FROM {table.name} WHERE {terms}")


@functools.cache
def _runs_sql(count: int) -> TextClause:
    # As _task_states_sql: plain SQL over Airflow's own table and column names, each run one term
    # on its unique key (dag_id, run_id).
    from airflow.models.dagrun import DagRun
    from sqlalchemy import text

    table = DagRun.__table__
    c = table.c
    terms = " OR ".join(f"({c.dag_id.name} = :d{i} AND {c.run_id.name} = :r{i})" for i in range(count))
    return text(f"SELECT {c.dag_id.name}, {c.run_id.name} FROM {table.name} WHERE {terms}")


def parked_tasks(*, method_name: str) -> list[ParkedTask]:
    """Every task instance parked in ``awaiting_input`` to resume in ``method_name`` with one of our request ids.

    One unlocked read over Airflow's index of task states: parked tasks of other operators
    (Airflow's own HITL operators park too) are left out by their arguments.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    ti = TaskInstance
    statement = select(
        ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number, ti.next_kwargs, ti.trigger_timeout
    ).where(ti.state == AWAITING_INPUT, ti.next_method == method_name)
    found = []
    with create_session() as session:
        for row in session.execute(statement):
            request_id = _parked_request(method_name, row.next_kwargs).request_id
            if request_id is None:
                continue
            key = TaskKey(dag_id=row.dag_id, run_id=row.run_id, task_id=row.task_id, map_index=row.map_index)
            found.append(
                ParkedTask(key=key, try_number=row.try_number, request_id=request_id, backstop=row.trigger_timeout)
            )
    return found


def parked_fingerprint(*, method_name: str) -> tuple[int, dt.datetime | None, int]:
    """What :func:`parked_tasks` would read, summed up by the database in one row (Airflow 3.3+).

    ``(count, latest updated_at, sum of tries)`` of the task instances parked in
    ``awaiting_input`` to resume in ``method_name``: a task that parks adds one; one cleared,
    marked, removed, resumed by the deadline sweep or ended leaves the state, and one whose run
    is deleted leaves the table, taking one away; Airflow writes ``updated_at`` on each change
    of the row (its column's ``onupdate``, also for an ``UPDATE`` statement over the model, as
    the Execution API parks a task and :func:`move_backstops` moves a deadline). Equal
    fingerprints: no parked task changed. Portable SQL over the ``ti_state`` index (PostgreSQL,
    MySQL, SQLite); the function is only called on Airflow 3.3+, but the columns exist since 3.1.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    ti = TaskInstance
    statement = select(func.count(), func.max(ti.updated_at), func.coalesce(func.sum(ti.try_number), 0)).where(
        ti.state == AWAITING_INPUT, ti.next_method == method_name
    )
    with create_session() as session:
        count, latest, tries = session.execute(statement).one()
    return int(count), latest, int(tries)


def move_backstops(moves: Sequence[BackstopMove]) -> int:
    """Set the deadline of each task instance try of ``moves`` that is still parked on its request; how many moved.

    Airflow's deadline sweep resumes a parked task once ``trigger_timeout`` passes; after an
    escalation the gate's deadline is later, and so must its backstop be. One conditional
    UPDATE per move, all in one transaction: a task that has been ended, resumed or cleared
    meanwhile is left alone.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    moved = 0
    with create_session() as session:
        for move in moves:
            statement = (
                update(TaskInstance)
                .where(
                    *_where(move.key),
                    TaskInstance.try_number == move.try_number,
                    TaskInstance.state == AWAITING_INPUT,
                )
                .values(trigger_timeout=move.deadline)
                .execution_options(synchronize_session=False)
            )
            moved += int(getattr(session.execute(statement), "rowcount", 0) or 0)
    return moved


def _where(key: TaskKey) -> tuple[Any, ...]:
    from airflow.models.taskinstance import TaskInstance

    return (
        TaskInstance.dag_id == key.dag_id,
        TaskInstance.run_id == key.run_id,
        TaskInstance.task_id == key.task_id,
        TaskInstance.map_index == key.map_index,
    )


class HeldTaskInstance:
    """A task instance row locked ``FOR UPDATE`` in an open transaction of Airflow's metadata DB.

    Only :func:`hold_task_instance` makes one; it is valid inside that ``with`` block.
    """

    def __init__(self, *, session: Any, task_instance: Any, key: TaskKey) -> None:
        self._session = session
        self._ti = task_instance
        self._key = key

    @property
    def state(self) -> str | None:
        """The task instance's state as Airflow stores it."""
        state = self._ti.state
        return None if state is None else str(getattr(state, "value", state))

    @property
    def try_number(self) -> int:
        """The task instance's current try."""
        return int(self._ti.try_number)

    @property
    def trigger_id(self) -> int | None:
        """The id of the trigger the task instance is deferred on, if any."""
        trigger_id: int | None = self._ti.trigger_id
        return trigger_id

    def parked(self) -> ParkedRequest | None:
        """What the task instance parked with, while it is parked in ``awaiting_input``; else None."""
        if self.state != AWAITING_INPUT:
            return None
        return _parked_request(self._ti.next_method, self._ti.next_kwargs)

    def trigger(self) -> DeferralTrigger | None:
        """The trigger the task instance is deferred on (its row), or None."""
        from airflow.models.trigger import Trigger

        if self._ti.trigger_id is None:
            return None
        row = self._session.get(Trigger, self._ti.trigger_id)
        if row is None:
            return None
        return DeferralTrigger(classpath=row.classpath, kwargs=dict(row.kwargs))

    def bound_statements(self, *, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
        """On PostgreSQL, no later statement of this transaction waits on a lock, or runs, longer than given."""
        if self._session.get_bind().dialect.name == "postgresql":
            from sqlalchemy import text

            self._session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
            self._session.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))

    def submit_event(self, event: TriggerEvent) -> None:
        """Hand ``event`` to Airflow as if the task's trigger had yielded it (not committed yet).

        Airflow's ``handle_event_submit`` is looked up on each call (tests replace it to make
        it fail); it commits by itself when the event pushes an XCom.
        """
        import airflow.models.trigger as airflow_trigger

        airflow_trigger.handle_event_submit(event, task_instance=self._ti, session=self._session)
        self._session.flush()

    def commit(self) -> None:
        """Commit the transaction (the end takes effect; the row's lock is released)."""
        self._session.commit()

    def rollback(self) -> None:
        """Roll the transaction back (nothing is ended; the row's lock is released)."""
        self._session.rollback()

    def still_deferred_on(self, trigger_id: int | None) -> bool:
        """After a failed end: True unless the task instance visibly left ``trigger_id`` (the end committed).

        With ``trigger_id`` None: unless it visibly left ``awaiting_input`` (a parked gate's end).
        """
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import select

        try:
            row = self._session.execute(
                select(TaskInstance.state, TaskInstance.trigger_id).where(*_where(self._key))
            ).one_or_none()
        except Exception:
            self._session.rollback()
            return True  # cannot tell: the transaction is over either way
        if row is None:
            return False
        if trigger_id is None:
            return _value(row.state) == AWAITING_INPUT
        return _value(row.state) == _deferred() and row.trigger_id == trigger_id


@contextlib.contextmanager
def hold_task_instance(key: TaskKey) -> Iterator[HeldTaskInstance | str]:
    """Lock the task instance of ``key`` in a new transaction of Airflow's metadata DB, without waiting.

    Yields a :class:`HeldTaskInstance`, or :data:`LOCKED_ELSEWHERE` when another transaction
    holds the row (``FOR UPDATE SKIP LOCKED`` skipped it), or :data:`MISSING` when there is no
    such task instance. As Airflow's ``create_session`` does, the transaction commits when the
    block ends and rolls back when it raises.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(*_where(key)).with_for_update(skip_locked=True)).one_or_none()
        if ti is None:
            exists = session.scalar(select(TaskInstance.try_number).where(*_where(key)))
            yield LOCKED_ELSEWHERE if exists is not None else MISSING
            return
        yield HeldTaskInstance(session=session, task_instance=ti, key=key)


def _value(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _deferred() -> str:
    from airflow.sdk import TaskInstanceState

    return TaskInstanceState.DEFERRED.value

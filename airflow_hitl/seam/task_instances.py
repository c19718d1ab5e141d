"""Task instances and triggers in Airflow's metadata DB, for the api-server's gate closer.

The only code of airflow-hitl that reads or writes Airflow's ``task_instance`` and ``trigger``
tables, and the only caller of Airflow's ``handle_event_submit``: see the table in
:mod:`airflow_hitl.seam`. Callers see our own types (:class:`TaskKey`, :class:`TaskTry`,
:class:`HeldTaskInstance`), never Airflow's ORM classes or sessions.
"""

from __future__ import annotations

import contextlib
import functools
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


@dataclass(frozen=True, kw_only=True)
class TaskKey:
    """The primary key of one task instance (every try of it shares the row)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


@dataclass(frozen=True, kw_only=True)
class TaskTry:
    """What a light, unlocked look found of a task instance: its state and its current try."""

    state: str | None
    try_number: int


@dataclass(frozen=True, kw_only=True)
class DeferralTrigger:
    """The trigger a task instance is deferred on: its class path and its keyword arguments."""

    classpath: str
    kwargs: Mapping[str, Any]


def task_tries(keys: Sequence[TaskKey], *, batch: int) -> dict[TaskKey, TaskTry]:
    """The state and try of each task instance of ``keys`` that exists, ``batch`` keys per query.

    Unlocked reads of two columns in one session: the cheapest look at Airflow's DB there is.
    """
    from airflow.utils.session import create_session

    found: dict[TaskKey, TaskTry] = {}
    with create_session() as session:
        for first in range(0, len(keys), batch):
            chunk = keys[first : first + batch]
            params: dict[str, Any] = {}
            for i, key in enumerate(chunk):
                params.update({f"d{i}": key.dag_id, f"r{i}": key.run_id, f"t{i}": key.task_id, f"m{i}": key.map_index})
            for dag_id, run_id, task_id, map_index, state, try_number in session.execute(
                _task_states_sql(len(chunk)), params
            ):
                key = TaskKey(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
                found[key] = TaskTry(state=state, try_number=try_number)
    return found


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
    columns = (c.dag_id, c.run_id, c.task_id, c.map_index, c.state, c.try_number)
    return text(f"SELECT {', '.join(col.name for col in columns)} FROM {table.name} WHERE {terms}")


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
        """After a failed end: True unless the task instance visibly left ``trigger_id`` (the end committed)."""
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import select

        try:
            row = self._session.execute(
                select(TaskInstance.state, TaskInstance.trigger_id).where(*_where(self._key))
            ).one_or_none()
        except Exception:
            self._session.rollback()
            return True  # cannot tell: the transaction is over either way
        return row is not None and _value(row.state) == _deferred() and row.trigger_id == trigger_id


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

"""seam.task_instances.parked_fingerprint: every change of a parked task Airflow makes changes it.

Against the installed Airflow and a real metadata DB (SQLite, migrated by Airflow, from the
``airflow_api`` fixture): a task parks through Airflow's own Execution API, and is cleared,
marked, swept, ended or deleted by Airflow's own functions, so a release that stops writing
``task_instance.updated_at`` on one of them fails here. Parking exists from Airflow 3.3; before,
the function (never called there) still reads nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import airflow
import pytest
from packaging.version import Version

from airflow_hitl.seam import task_instances
from airflow_hitl.spec import utcnow
from tests.airflow_api import known_dags

SINCE_3_3 = Version(Version(airflow.__version__).base_version).release[:2] >= (3, 3)
METHOD = "execute_complete"
DAG_ID = "seam_fingerprint_dag"

Park = Callable[..., task_instances.TaskKey]


def fingerprint() -> tuple[int, dt.datetime | None, int]:
    return task_instances.parked_fingerprint(method_name=METHOD)


@pytest.fixture
def park(airflow_api: object) -> Iterator[Park]:
    """Park a new task instance as a worker does: a running try, then Airflow's Execution API parks it."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert

    runs, tis, history = DagRun.__table__, TaskInstance.__table__, TaskInstanceHistory.__table__
    written: list[str] = []

    def write(
        *, request_id: str = "seam-fingerprint", state: str = "running", parked: bool = True
    ) -> task_instances.TaskKey:
        key = task_instances.TaskKey(
            dag_id=DAG_ID, run_id=f"seam__{uuid.uuid4().hex[:8]}", task_id="gate", map_index=-1
        )
        ti_id = uuid.uuid4()
        # A UUID column in newer Airflow releases (SQLite too); Airflow 3.1 keeps the text.
        row_id: uuid.UUID | str = ti_id if getattr(tis.c.id.type, "as_uuid", False) else str(ti_id)
        with create_session() as session:
            session.execute(
                insert(runs).values(dag_id=key.dag_id, run_id=key.run_id, run_type="manual", run_after=utcnow())
            )
            session.execute(
                insert(tis).values(
                    id=row_id,
                    dag_id=key.dag_id,
                    run_id=key.run_id,
                    task_id=key.task_id,
                    map_index=key.map_index,
                    try_number=1,
                    pool="default_pool",
                    pool_slots=1,
                    state=state,
                )
            )
        written.append(key.run_id)
        if parked:
            _park(ti_id, key, request_id=request_id)
        return key

    # The Execution API joins the task instance's DAG row.
    with known_dags(DAG_ID, max_active_tasks=16):
        yield write
        with create_session() as session:
            for run_id in written:
                session.execute(delete(history).where(history.c.dag_id == DAG_ID, history.c.run_id == run_id))
                session.execute(delete(tis).where(tis.c.dag_id == DAG_ID, tis.c.run_id == run_id))
                session.execute(delete(runs).where(runs.c.dag_id == DAG_ID, runs.c.run_id == run_id))


def _park(ti_id: uuid.UUID, key: task_instances.TaskKey, *, request_id: str) -> None:
    # What a worker's task runner sends when the gate parks, through the Execution API in process.
    import structlog
    from airflow.sdk.exceptions import TaskAwaitingInput
    from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor
    from airflow.sdk.execution_time.task_runner import _await_input_task

    from airflow_hitl.seam import parking

    with pytest.raises(TaskAwaitingInput) as raised:
        parking.park(
            method_name=METHOD, kwargs={"request_id": request_id, "follow": None}, timeout=dt.timedelta(hours=1)
        )
    runtime_ti = type("RuntimeTI", (), {"dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id})()
    message, _ = _await_input_task(raised.value, runtime_ti, structlog.get_logger("seam-fingerprint"))  # type: ignore[arg-type]
    InProcessTestSupervisor._api_client().task_instances.await_input(ti_id, message)


def park_again(key: task_instances.TaskKey) -> None:
    """Park the running task instance of ``key`` (written with ``park(parked=False)``)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        ti_id = _ti(session, key).id
    _park(ti_id, key, request_id="seam-fingerprint")


def _ti(session: Any, key: task_instances.TaskKey) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    return session.scalars(select(TaskInstance).where(TaskInstance.run_id == key.run_id)).one()


def _state(key: task_instances.TaskKey) -> str | None:
    from airflow.utils.session import create_session

    with create_session() as session:
        state = _ti(session, key).state
    return None if state is None else str(getattr(state, "value", state))


def test_tasks_that_are_not_parked_are_not_counted(park: Park) -> None:
    # Importable and callable on every supported Airflow (before 3.3 nothing ever parks).
    before = fingerprint()
    assert isinstance(before[0], int) and isinstance(before[2], int)
    key = park(parked=False)
    assert fingerprint() == before, "a running task"
    if not SINCE_3_3:
        return
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.run_id == key.run_id)
            .values(state=task_instances.AWAITING_INPUT, next_method="resume_elsewhere")
            .execution_options(synchronize_session=False)
        )
    assert fingerprint() == before, "a task parked to resume in another method"


def test_a_task_parking_adds_itself(park: Park) -> None:
    if not SINCE_3_3:
        return
    before = fingerprint()
    key = park()
    assert _state(key) == "awaiting_input"
    parked = fingerprint()
    assert (parked[0], parked[2]) == (before[0] + 1, before[2] + 1)
    assert parked[1] is not None and (before[1] is None or parked[1] > before[1])
    assert fingerprint() == parked, "read again, nothing changed: the same"


def test_one_task_leaving_as_another_parks_changes_it(park: Park) -> None:
    # The count and the tries stay, and the latest updated_at before is a task that stays
    # parked: only the Execution API writing updated_at as it parks the new one changes it.
    if not SINCE_3_3:
        return
    parks_later = park(parked=False)
    leaves = park()
    park()
    before = fingerprint()
    _mark_success(leaves)
    park_again(parks_later)
    after = fingerprint()
    assert (after[0], after[2]) == (before[0], before[2])
    assert after != before


def _mark_success(key: task_instances.TaskKey) -> None:
    from airflow.utils.session import create_session

    with create_session() as session:
        _ti(session, key).set_state("success", session=session)


def _mark_failed(key: task_instances.TaskKey) -> None:
    from airflow.utils.session import create_session

    with create_session() as session:
        _ti(session, key).set_state("failed", session=session)


def _clear(key: task_instances.TaskKey) -> None:
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session

    with create_session() as session:
        clear_task_instances([_ti(session, key)], session)


def _sweep(key: task_instances.TaskKey) -> None:
    import logging
    from types import SimpleNamespace

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    task_instances.move_backstops(
        [task_instances.BackstopMove(key=key, try_number=1, deadline=utcnow() - dt.timedelta(seconds=1))]
    )
    SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("seam.sweep")))  # type: ignore[arg-type]


def _end(key: task_instances.TaskKey) -> None:
    from airflow.triggers.base import TaskSkippedEvent

    with task_instances.hold_task_instance(key) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        held.submit_event(TaskSkippedEvent())
        held.commit()


def _delete_run(key: task_instances.TaskKey) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(TaskInstance.__table__).where(TaskInstance.__table__.c.run_id == key.run_id))
        session.execute(delete(DagRun.__table__).where(DagRun.__table__.c.run_id == key.run_id))


def _move_backstop(key: task_instances.TaskKey) -> None:
    moved = task_instances.move_backstops(
        [task_instances.BackstopMove(key=key, try_number=1, deadline=utcnow() + dt.timedelta(hours=3))]
    )
    assert moved == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_mark_success, id="marked-success"),
        pytest.param(_mark_failed, id="marked-failed"),
        pytest.param(_clear, id="cleared"),
        pytest.param(_sweep, id="resumed-by-the-deadline-sweep"),
        pytest.param(_end, id="ended-by-the-gate-closer"),
        pytest.param(_delete_run, id="run-deleted"),
        pytest.param(_move_backstop, id="backstop-moved"),
    ],
)
def test_every_change_of_a_parked_task_changes_it(park: Park, change: Callable[[task_instances.TaskKey], None]) -> None:
    if not SINCE_3_3:
        return
    key = park()
    before = fingerprint()
    change(key)
    assert fingerprint() != before

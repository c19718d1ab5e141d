"""api/parked.py: the api-server's reconcile of gates parked in ``awaiting_input``, on a real store and metadata DB.

The task instances are written straight into a real (SQLite) Airflow metadata DB, as Airflow
leaves them (the ``airflow_api`` fixture migrates one); the store is a real one of each kind.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_hitl.api.gate_closer import DEFERRED, ENDED, NOTHING, TAKEN, EndClaim, GateCloser, end_gate, gate_states
from airflow_hitl.api.parked import (
    FULL_EVERY,
    FULL_EVERY_BALANCED,
    LIVE_STATES,
    RECONCILE_EVERY,
    RESUME_METHOD,
    ParkedGates,
    move_backstop,
    reconcile,
)
from airflow_hitl.gate_ends import TAKE_OVER_AFTER
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval, TaskGate
from airflow_hitl.seam.parking import BACKSTOP_GRACE
from airflow_hitl.spec import utcnow
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")

TaskWriter = Callable[..., None]


@pytest.fixture
def task_of(airflow_api: object) -> Iterator[TaskWriter]:
    """Write the task instance of ``approval``'s gate: parked on it, or in another state or try."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert

    runs, tis = DagRun.__table__, TaskInstance.__table__
    written: list[tuple[str, str]] = []

    def write(
        approval: Approval,
        *,
        state: str | None = "awaiting_input",
        try_number: int | None = None,
        backstop: dt.datetime | None = None,
        ti_id: str | None = None,
        task: bool = True,
        parked_on: str | None = None,
    ) -> None:
        parked = state == "awaiting_input"
        with create_session() as session:
            session.execute(
                insert(runs).values(
                    dag_id=approval.dag_id, run_id=approval.run_id, run_type="manual", run_after=utcnow()
                )
            )
            written.append((approval.dag_id, str(approval.run_id)))
            if not task:  # a run without this task (created again after the task left the DAG)
                return
            session.execute(
                insert(tis).values(
                    id=uuid.UUID(ti_id) if ti_id else uuid.uuid4(),
                    dag_id=approval.dag_id,
                    run_id=approval.run_id,
                    task_id=approval.task_id,
                    map_index=approval.map_index,
                    try_number=try_number or approval.try_number,
                    pool="default_pool",
                    pool_slots=1,
                    state=state,
                    next_method=RESUME_METHOD if parked else None,
                    next_kwargs={"request_id": parked_on or approval.id, "follow": None} if parked else None,
                    trigger_timeout=backstop,
                )
            )

    yield write
    with create_session() as session:
        for dag_id, run_id in written:
            session.execute(delete(tis).where(tis.c.dag_id == dag_id, tis.c.run_id == run_id))
            session.execute(delete(runs).where(runs.c.dag_id == dag_id, runs.c.run_id == run_id))


def delete_run(approval: Approval) -> None:
    """Delete the request's DAG run and its task instances, as Airflow's ``DELETE .../dagRuns/{run_id}`` does."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    runs, tis = DagRun.__table__, TaskInstance.__table__
    with create_session() as session:
        session.execute(delete(tis).where(tis.c.dag_id == approval.dag_id, tis.c.run_id == approval.run_id))
        session.execute(delete(runs).where(runs.c.dag_id == approval.dag_id, runs.c.run_id == approval.run_id))


def backstop_of(approval: Approval) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(TaskInstance.trigger_timeout).where(
                TaskInstance.dag_id == approval.dag_id, TaskInstance.run_id == approval.run_id
            )
        )


class Ends:
    """The gate closer's side: the requests handed to it to end."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, request_id: str) -> None:
        self.ids.append(request_id)


class TestCatchUp:
    def test_a_closed_request_whose_task_is_still_parked_is_handed_to_the_closer(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        decided, waiting = manager.create(spec()), manager.create(spec())
        task_of(decided)
        task_of(waiting)
        manager.approve(decided.id, user=ALICE)
        ends = Ends()
        done = reconcile(manager, end=ends)
        assert ends.ids == done.ended == [decided.id]
        assert done.cancelled == [] and done.parked >= 2
        assert manager.queries.get(waiting.id).is_waiting

    def test_however_long_ago_it_was_decided(self, mgr: ApprovalManager, clock: Clock, task_of: TaskWriter) -> None:
        decided = mgr.create(spec())
        task_of(decided)
        mgr.reject(decided.id, user=ALICE, reason="no")
        clock.advance(days=30)
        ends = Ends()
        reconcile(mgr, end=ends)
        assert ends.ids == [decided.id]

    def test_a_task_parked_on_another_try_is_not_this_requests(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        decided = manager.create(spec())
        task_of(decided, try_number=2)
        manager.approve(decided.id, user=ALICE)
        ends = Ends()
        reconcile(manager, end=ends)
        assert ends.ids == []


class TestClearAndMark:
    @pytest.mark.parametrize(
        ("state", "try_number"),
        [
            pytest.param("success", None, id="marked-success"),
            pytest.param("failed", None, id="marked-failed"),
            pytest.param(None, None, id="cleared"),
            pytest.param("scheduled", 2, id="next-try"),
            pytest.param("up_for_retry", None, id="up-for-retry"),
        ],
    )
    def test_a_waiting_request_whose_try_is_over_is_cancelled_by_airflow(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str | None, try_number: int | None
    ) -> None:
        approval = manager.create(spec())
        task_of(approval, state=state, try_number=try_number)
        done = reconcile(manager, end=Ends())
        assert done.cancelled == [approval.id]
        cancelled = manager.queries.get(approval.id)
        assert (cancelled.state, cancelled.decision_source, cancelled.decision) == ("cancelled", "airflow", None)
        assert "cleared or marked in Airflow" in str(cancelled.comment)
        # Once: the next pass finds nothing waiting.
        assert reconcile(manager, end=Ends()).cancelled == []

    def test_a_request_naming_no_task_instance_in_a_run_that_exists_is_left_for_a_person(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        # Opened by a script in a task's name, or before requests recorded their task instance:
        # nothing says its gate will never wait again.
        approval = manager.create(spec())
        task_of(approval, task=False)
        assert reconcile(manager, end=Ends()).cancelled == []
        assert manager.queries.get(approval.id).state == "pending"

    def test_a_removed_tasks_request_is_cancelled(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        # Airflow keeps the task instance of a task no longer in the DAG, marked removed: it never runs again.
        approval = manager.create(spec())
        task_of(approval, state="removed")
        assert reconcile(manager, end=Ends()).cancelled == [approval.id]
        assert "removed from the DAG" in str(manager.queries.get(approval.id).comment)

    @pytest.mark.parametrize("state", sorted(LIVE_STATES))
    def test_a_try_that_may_still_end_its_gate_keeps_its_request(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str
    ) -> None:
        # Running (about to park or defer), deferred, parked, or resumed on a worker.
        approval = manager.create(spec())
        task_of(approval, state=state)
        assert reconcile(manager, end=Ends()).cancelled == []
        assert manager.queries.get(approval.id).is_waiting

    def test_requests_opened_over_the_api_are_not_a_tasks(self, manager: ApprovalManager) -> None:
        opened = manager.create(spec(), actor="admin", source="api", origin="api")
        assert reconcile(manager, end=Ends()).cancelled == []
        assert manager.queries.get(opened.id).is_waiting


def approval_ti(manager: ApprovalManager, approval: Approval) -> str | None:
    """The task instance try ``approval`` recorded (None: none), read from the store."""
    from airflow_hitl.models.tables import ApprovalRequestRow

    with manager.store.session() as session:
        row = session.get(ApprovalRequestRow, approval.id)
        return row.task_instance_id if row is not None else None


def opened(manager: ApprovalManager, **overrides: Any) -> Approval:
    """A task's gate that recorded its task instance try, as the operator opens one."""
    return manager.create(spec(task_instance_id=str(uuid.uuid4()), **overrides))


class TestRunsDeleted:
    """A DAG run deleted in Airflow (its task instances with it), or deleted and created again under its run id."""

    def test_a_waiting_request_whose_run_was_deleted_is_cancelled_by_airflow(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        approval = opened(manager)
        task_of(approval, state="running", ti_id=approval_ti(manager, approval))
        delete_run(approval)
        done = reconcile(manager, end=Ends())
        assert done.cancelled == [approval.id]
        cancelled = manager.queries.get(approval.id)
        assert (cancelled.state, cancelled.decision_source, cancelled.comment) == (
            "cancelled",
            "airflow",
            "its DAG run was deleted in Airflow",
        )
        events = manager.audit.events(approval.id)
        assert [(e.event_type, e.source) for e in events] == [("requested", "operator"), ("cancelled", "airflow")]
        assert manager.audit.verify_audit_chain().ok
        assert reconcile(manager, end=Ends()).cancelled == []

    def test_a_request_that_recorded_no_task_instance_and_has_no_run_is_left_for_a_person(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        # Opened before revision 0013, or by a script in a task's name for a run that never
        # existed: nothing ties it to a run that once was.
        approval = manager.create(spec())
        task_of(approval, state="running")
        delete_run(approval)
        assert reconcile(manager, end=Ends()).cancelled == []
        assert manager.queries.get(approval.id).state == "pending"

    @pytest.mark.parametrize("state", ["running", "queued", "awaiting_input", "deferred", "success", "failed"])
    def test_the_same_try_of_another_task_instance_is_a_run_created_again(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str
    ) -> None:
        # The new run's task instance, at the old one's try: the old run's request is over, whatever
        # the new one does (a new run's gate parks on a request of its own).
        approval = opened(manager)
        task_of(approval, state=state, parked_on=str(uuid.uuid4()))
        done = reconcile(manager, end=Ends())
        assert done.cancelled == [approval.id]
        cancelled = manager.queries.get(approval.id)
        assert cancelled.decision_source == "airflow"
        assert str(cancelled.comment).startswith(
            f"its DAG run was deleted and created again: task instance {approval_ti(manager, approval)} is gone"
        )

    def test_a_run_created_again_without_the_task_cancels_its_request(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        approval = opened(manager)
        task_of(approval, task=False)
        assert reconcile(manager, end=Ends()).cancelled == [approval.id]
        assert "deleted and created again" in str(manager.queries.get(approval.id).comment)

    def test_a_run_created_again_at_an_earlier_try_cancels_the_old_runs_request(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        approval = opened(manager, try_number=3)
        task_of(approval, state="scheduled", try_number=1)
        assert reconcile(manager, end=Ends()).cancelled == [approval.id]
        assert "deleted and created again" in str(manager.queries.get(approval.id).comment)

    @pytest.mark.parametrize("state", [None, "up_for_retry", "restarting"])
    def test_a_try_that_has_its_next_id_already_is_cleared_not_created_again(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str | None
    ) -> None:
        # Cleared, up for retry, restarting: Airflow gave the row its next try's id, the number follows.
        approval = opened(manager)
        task_of(approval, state=state)
        assert reconcile(manager, end=Ends()).cancelled == [approval.id]
        assert "cleared or marked in Airflow" in str(manager.queries.get(approval.id).comment)

    @pytest.mark.parametrize("state", sorted(LIVE_STATES))
    def test_its_own_task_instance_try_keeps_its_request(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str
    ) -> None:
        approval = opened(manager)
        task_of(approval, state=state, ti_id=approval_ti(manager, approval))
        assert reconcile(manager, end=Ends()).cancelled == []
        assert manager.queries.get(approval.id).is_waiting


def escalating_spec() -> Any:
    """Bob's gate, escalating to carol after 5 minutes (then 2 hours more), then rejected."""
    return spec(
        allowed_approvers=("bob",),
        timeout=dt.timedelta(minutes=5),
        timeout_action="escalate",
        escalation_targets=(EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=2)),),
        escalation_final_action="reject",
    )


class TestBackstops:
    def test_a_parked_gates_backstop_follows_its_deadline(
        self, mgr: ApprovalManager, clock: Clock, task_of: TaskWriter
    ) -> None:
        approval = mgr.create(escalating_spec())
        assert approval.expires_at is not None
        task_of(approval, backstop=approval.expires_at + BACKSTOP_GRACE)
        assert reconcile(mgr, end=Ends()).moved == 0, "where it parked: nothing to move"
        clock.advance(minutes=6)
        escalated = mgr.apply_timeout(approval.id).approval
        assert escalated.state == "escalated" and escalated.expires_at is not None
        done = reconcile(mgr, end=Ends())
        assert done.moved == 1 and done.cancelled == []
        assert backstop_of(approval) == escalated.expires_at + BACKSTOP_GRACE
        assert reconcile(mgr, end=Ends()).moved == 0

    def test_the_deadline_workers_hook_moves_it_at_once(
        self, mgr: ApprovalManager, clock: Clock, task_of: TaskWriter
    ) -> None:
        approval = mgr.create(escalating_spec())
        assert approval.expires_at is not None
        task_of(approval, backstop=approval.expires_at + BACKSTOP_GRACE)
        assert not mgr.apply_timeout(approval.id).applied, "not due yet"
        move_backstop(mgr.apply_timeout(approval.id))
        assert backstop_of(approval) == approval.expires_at + BACKSTOP_GRACE, "nothing applied: nothing moved"
        clock.advance(minutes=6)
        outcome = mgr.apply_timeout(approval.id)
        assert outcome.escalated and outcome.approval.expires_at is not None
        move_backstop(outcome)
        assert backstop_of(approval) == outcome.approval.expires_at + BACKSTOP_GRACE

    def test_a_gate_with_no_deadline_has_no_backstop(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        approval = manager.create(spec())
        task_of(approval, backstop=utcnow() + dt.timedelta(hours=1))
        assert reconcile(manager, end=Ends()).moved == 1
        assert backstop_of(approval) is None


def state_of(approval: Approval) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        state = session.scalar(
            select(TaskInstance.state).where(
                TaskInstance.dag_id == approval.dag_id, TaskInstance.run_id == approval.run_id
            )
        )
    return None if state is None else str(getattr(state, "value", state))


class TestEndingParkedGates:
    """The gate closer's :func:`end_gate` on parked task instances of a real metadata DB."""

    def test_a_parked_gate_is_ended_in_place_once_under_the_claim(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        # Skipped on rejection: Airflow ends it without a callback to a DAG file this DB lacks.
        approval = manager.create(spec(on_reject="skip"))
        task_of(approval)
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        assert gate_states([task_gate(approval)]) == {approval.id: DEFERRED}, "parked: may be ended"
        assert end_gate(rejected, EndClaim(manager=manager, request_id=approval.id, by="api-server@one")) == ENDED
        assert state_of(approval) == "skipped"
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@one"
        again = EndClaim(manager=manager, request_id=approval.id, by="api-server@two")
        assert end_gate(rejected, again) == NOTHING

    def test_a_task_parked_on_another_request_or_by_another_operator_is_left_alone(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        other = manager.create(spec())
        approval = manager.create(spec(dag_id=other.dag_id, run_id=other.run_id, try_number=2))
        task_of(other, try_number=2)  # the same task instance try, parked on the other request
        rejected = manager.reject(approval.id, user=ALICE, reason="no")
        claim = EndClaim(manager=manager, request_id=approval.id, by="api-server@one")
        assert end_gate(rejected, claim) == NOTHING
        assert state_of(approval) == "awaiting_input"
        assert manager.gate_ends.gate_ended_by(approval.id) is None, "nothing ended: nothing claimed"

    def test_a_claim_left_by_a_closer_that_died_is_taken_over(
        self, mgr: ApprovalManager, clock: Clock, task_of: TaskWriter
    ) -> None:
        # No trigger takes over for a parked gate: the next closer does, once the claim is old.
        approval = mgr.create(spec(on_reject="skip"))
        task_of(approval)
        rejected = mgr.reject(approval.id, user=ALICE, reason="no")
        assert mgr.gate_ends.claim_gate_end(approval.id, by="api-server@dead")
        claim = EndClaim(manager=mgr, request_id=approval.id, by="api-server@next")
        assert end_gate(rejected, claim) == TAKEN
        clock.advance(seconds=TAKE_OVER_AFTER.total_seconds() + 1)
        assert end_gate(rejected, claim) == ENDED
        assert state_of(approval) == "skipped"
        assert mgr.gate_ends.gate_ended_by(approval.id) == "api-server@next"

    def test_the_closers_pass_ends_a_gate_decided_long_ago_whose_task_is_still_parked(
        self, store: ApprovalStore, task_of: TaskWriter
    ) -> None:
        # Decided a day ago (no api-server then): outside any window the closer looks back over.
        manager = ApprovalManager(store=store, clock=Clock(utcnow() - dt.timedelta(days=1)))
        approval = manager.create(spec(on_reject="skip"))
        task_of(approval)
        manager.reject(approval.id, user=ALICE, reason="no")
        closer = GateCloser(manager_factory=lambda: manager, reconcile_every=0.2, poll_interval=0.05)
        closer.start()
        try:
            deadline = time.monotonic() + 60
            while not (closer.ended and state_of(approval) == "skipped") and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            closer.stop()
        assert closer.ended == 1 and state_of(approval) == "skipped"
        assert str(manager.gate_ends.gate_ended_by(approval.id)).startswith("api-server@")


def task_gate(approval: Approval) -> TaskGate:
    return TaskGate(
        id=approval.id,
        dag_id=approval.dag_id,
        run_id=str(approval.run_id),
        task_id=str(approval.task_id),
        map_index=approval.map_index,
        try_number=int(approval.try_number or 1),
    )


class Ticks:
    """A monotonic clock the test moves by hand (the driver's, apart from the store's clock)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self.now += seconds


def driver(manager: ApprovalManager, end: Callable[[str], None], ticks: Ticks) -> ParkedGates:
    """A driver that has passed once, as a gate closer's does at its first tick."""
    gates = ParkedGates(manager=manager, end=end, clock=ticks)
    assert gates.tick() is not None and gates.passes == 1, "a new driver passes at once"
    return gates


def set_state(approval: Approval, state: str | None) -> None:
    """Set the state of the request's task instance as Airflow's ORM does (``updated_at`` with it)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == approval.dag_id, TaskInstance.run_id == approval.run_id)
            .values(state=state)
            .execution_options(synchronize_session=False)
        )


def waiting_only_for_the_safety_net(gates: ParkedGates, ticks: Ticks, net: float = FULL_EVERY) -> None:
    """Tick every RECONCILE_EVERY seconds up to just before ``net`` after the last pass: no pass."""
    for _ in range(int(net // RECONCILE_EVERY) - 1):
        ticks.advance(RECONCILE_EVERY)
        assert gates.tick() is None
    ticks.advance(RECONCILE_EVERY)


class TestWhenAPassRuns:
    """:class:`ParkedGates`: a pass only when a fingerprint changed, the safety net is due, or never yet."""

    @pytest.mark.parametrize("behind", ["airflow", "store"])
    def test_nothing_changed_no_pass_until_the_safety_net(
        self, manager: ApprovalManager, task_of: TaskWriter, behind: str
    ) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import update

        from airflow_hitl.models.tables import ApprovalRequestRow

        approval = manager.create(spec(timeout=dt.timedelta(hours=1)))
        assert approval.expires_at is not None
        task_of(approval, backstop=approval.expires_at + BACKSTOP_GRACE)
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        # A change only a pass would act on, written behind both fingerprints' back (the row's
        # updated_at kept): the backstop no longer follows the gate's deadline.
        later = approval.expires_at + dt.timedelta(hours=1)
        if behind == "airflow":
            tis = TaskInstance.__table__
            with create_session() as session:
                session.execute(
                    update(tis)
                    .where(tis.c.dag_id == approval.dag_id, tis.c.run_id == approval.run_id)
                    .values(trigger_timeout=later + BACKSTOP_GRACE, updated_at=tis.c.updated_at)
                )
            wanted = approval.expires_at + BACKSTOP_GRACE
        else:
            requests = ApprovalRequestRow.__table__
            with manager.store.engine.begin() as conn:
                conn.execute(update(requests).where(requests.c.id == approval.id).values(expires_at=later))
            wanted = later + BACKSTOP_GRACE
        moved_away = backstop_of(approval)
        assert moved_away != wanted
        # One request waits and its task is parked: the counts agree, the longer safety net.
        waiting_only_for_the_safety_net(gates, ticks, FULL_EVERY_BALANCED)
        assert backstop_of(approval) == moved_away, "not acted on: no pass ran"
        done = gates.tick()
        assert done is not None and done.moved == 1 and gates.passes == 2
        assert backstop_of(approval) == wanted
        assert ParkedGates(manager=manager, end=Ends(), clock=ticks).tick() is not None, "a new driver passes at once"

    def test_a_task_cleared_before_it_parked_is_found_by_the_sooner_safety_net(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        approval = manager.create(spec())
        task_of(approval, state="running")
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        assert manager.queries.get(approval.id).is_waiting, "its task runs: it may still park"
        # Cleared before it parked: no parked task changed, and nothing in the store. A request
        # waits with no task parked on it: the counts differ, so the safety net comes at FULL_EVERY.
        set_state(approval, None)
        waiting_only_for_the_safety_net(gates, ticks)
        assert manager.queries.get(approval.id).is_waiting
        done = gates.tick()
        assert done is not None and done.cancelled == [approval.id]

    def test_a_skipped_tick_costs_one_statement_on_each_side(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        from airflow import settings
        from sqlalchemy import event

        approval = manager.create(spec())
        task_of(approval)
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        selects: dict[str, list[str]] = {"store": [], "airflow": []}

        def spy(side: str) -> Callable[..., None]:
            def count(*args: object) -> None:
                if str(args[2]).lstrip().upper().startswith("SELECT"):
                    selects[side].append(str(args[2]))

            return count

        store_spy, airflow_spy = spy("store"), spy("airflow")
        event.listen(manager.store.engine, "before_cursor_execute", store_spy)
        event.listen(settings.engine, "before_cursor_execute", airflow_spy)
        try:
            assert gates.tick() is None, "too soon: nothing read"
            assert selects == {"store": [], "airflow": []}
            ticks.advance(RECONCILE_EVERY)
            assert gates.tick() is None
        finally:
            event.remove(manager.store.engine, "before_cursor_execute", store_spy)
            event.remove(settings.engine, "before_cursor_execute", airflow_spy)
        assert [len(found) for found in selects.values()] == [1, 1]
        assert all("count(" in found[0].lower() for found in selects.values())

    @pytest.mark.parametrize(
        "state",
        [
            pytest.param("success", id="marked-success"),
            pytest.param("failed", id="marked-failed"),
            pytest.param(None, id="cleared"),
            pytest.param("removed", id="removed"),
        ],
    )
    def test_a_parked_task_cleared_or_marked_brings_a_pass(
        self, manager: ApprovalManager, task_of: TaskWriter, state: str | None
    ) -> None:
        approval = manager.create(spec())
        task_of(approval)
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        ticks.advance(RECONCILE_EVERY)
        assert gates.tick() is None
        set_state(approval, state)
        ticks.advance(RECONCILE_EVERY)
        done = gates.tick()
        assert done is not None and done.cancelled == [approval.id]
        assert manager.queries.get(approval.id).decision_source == "airflow"

    def test_a_deleted_run_brings_a_pass(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        approval = opened(manager)
        task_of(approval, ti_id=approval_ti(manager, approval))
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        delete_run(approval)
        ticks.advance(RECONCILE_EVERY)
        done = gates.tick()
        assert done is not None and done.cancelled == [approval.id]
        assert manager.queries.get(approval.id).comment == "its DAG run was deleted in Airflow"

    def test_a_decision_brings_a_pass_and_the_safety_net_hands_it_again(
        self, manager: ApprovalManager, task_of: TaskWriter
    ) -> None:
        approval = manager.create(spec())
        task_of(approval)
        ticks, ends = Ticks(), Ends()
        gates = driver(manager, ends, ticks)
        manager.approve(approval.id, user=ALICE)
        ticks.advance(RECONCILE_EVERY)
        done = gates.tick()
        assert done is not None and done.ended == ends.ids == [approval.id]
        # The closer gives up on it (here: never ends it): nothing changes on either side, so
        # only the safety net hands it over again, the sooner one: no request waits, a task is parked.
        waiting_only_for_the_safety_net(gates, ticks)
        assert ends.ids == [approval.id]
        assert gates.tick() is not None and ends.ids == [approval.id, approval.id]

    def test_an_escalation_brings_a_pass_that_moves_the_backstop(
        self, mgr: ApprovalManager, clock: Clock, task_of: TaskWriter
    ) -> None:
        approval = mgr.create(escalating_spec())
        assert approval.expires_at is not None
        task_of(approval, backstop=approval.expires_at + BACKSTOP_GRACE)
        ticks = Ticks()
        gates = driver(mgr, Ends(), ticks)
        clock.advance(minutes=6)
        escalated = mgr.apply_timeout(approval.id).approval
        assert escalated.state == "escalated" and escalated.expires_at is not None
        ticks.advance(RECONCILE_EVERY)
        done = gates.tick()
        assert done is not None and done.moved == 1
        assert backstop_of(approval) == escalated.expires_at + BACKSTOP_GRACE
        # Moving it wrote the task instance (updated_at): one more pass finds nothing, then none.
        ticks.advance(RECONCILE_EVERY)
        again = gates.tick()
        assert again is not None and again.moved == 0
        ticks.advance(RECONCILE_EVERY)
        assert gates.tick() is None

    def test_a_new_waiting_request_brings_a_pass(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        ticks = Ticks()
        gates = driver(manager, Ends(), ticks)
        # Its task instance is over already and was never parked: only the store's side changed.
        approval = manager.create(spec())
        task_of(approval, state="success")
        ticks.advance(RECONCILE_EVERY)
        done = gates.tick()
        assert done is not None and done.cancelled == [approval.id]

    def test_a_slow_pass_delays_the_next_one(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        ticks = Ticks()

        def slow_end(request_id: str) -> None:
            ticks.advance(10)  # the pass takes 10 s: the next waits 20 times that

        decided = manager.create(spec())
        task_of(decided)
        manager.approve(decided.id, user=ALICE)
        gates = ParkedGates(manager=manager, end=slow_end, clock=ticks)
        assert gates.tick() is not None
        assert gates.due_in() == 200
        approval = manager.create(spec())
        task_of(approval, state="success")
        for _ in range(6):
            ticks.advance(RECONCILE_EVERY)
            assert gates.tick() is None, "changed, but too soon after a slow pass"
        assert gates.due_in() == 20
        ticks.advance(19)
        assert gates.tick() is None
        ticks.advance(1)
        done = gates.tick()
        assert done is not None and done.cancelled == [approval.id]

    def test_a_failed_pass_is_run_again_at_the_next_tick(self, manager: ApprovalManager, task_of: TaskWriter) -> None:
        decided = manager.create(spec())
        task_of(decided)
        manager.approve(decided.id, user=ALICE)
        handed: list[str] = []

        def failing_once(request_id: str) -> None:
            handed.append(request_id)
            if len(handed) == 1:
                raise RuntimeError("the gate closer's queue is gone")

        ticks = Ticks()
        gates = ParkedGates(manager=manager, end=failing_once, clock=ticks)
        with pytest.raises(RuntimeError):
            gates.tick()
        assert gates.passes == 0 and gates.due_in() == 0
        done = gates.tick()
        assert done is not None and done.ended == [decided.id] and handed == [decided.id, decided.id]

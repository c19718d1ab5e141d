"""ApprovalOperator on Airflow 3.3+: it waits parked in ``awaiting_input``, and resumes from Airflow's backstop.

The gate's waiting step and its resume, run in this process against a real store: what it
raises to Airflow (``TaskAwaitingInput`` with what it parks with, or ``TaskDeferred`` where it
may not park) and what the store then holds. A whole parked gate on real Airflow processes is
tests/e2e/test_parking_e2e.py; ``airflow dags test`` (which never parks) is test_approval.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.records import Approval
from airflow_hitl.seam.parking import BACKSTOP_GRACE
from airflow_hitl.spec import utcnow
from airflow_hitl.triggers.approval import ApprovalTrigger
from airflow_hitl.version_compat import HAS_AWAITING_INPUT
from tests.helpers import Clock

#: Airflow's event when its deadline sweep resumes a parked task (scheduler_job_runner).
SWEEP_EVENT = {
    "error": "The Human-in-the-loop response timeout has passed without a response.",
    "error_type": "timeout",
}
#: How far a computed backstop may be from the expected one (the test's own run time).
SLACK = dt.timedelta(seconds=30)


@pytest.fixture
def an_hour_ago(store: ApprovalStore, store_url: str) -> Iterator[ApprovalManager]:
    """A manager of the gates' store whose clock is an hour behind: what it opens has expired by now."""
    yield ApprovalManager(store=store, clock=Clock(utcnow() - dt.timedelta(hours=1)))


def gate(**options: object) -> ApprovalOperator:
    return ApprovalOperator(task_id="gate", title="Release", timeout=dt.timedelta(minutes=5), **options)  # type: ignore[arg-type]


def opened(manager: ApprovalManager, op: ApprovalOperator, run_id: str) -> Approval:
    """Open ``op``'s request as its ``execute`` does."""
    return manager.create(op._spec(dag_id="release", run_id=run_id, task_id="gate", try_number=1, context={}))


def awaiting_input() -> type[BaseException]:
    from airflow.sdk.exceptions import TaskAwaitingInput

    return TaskAwaitingInput  # type: ignore[no-any-return]


def test_a_waiting_gate_parks_with_its_request_and_a_backstop(an_hour_ago: ApprovalManager) -> None:
    assert HAS_AWAITING_INPUT, "this lane runs Airflow 3.3 (3.1 and 3.2: scripts/test-airflow-versions.sh)"
    op = gate(timeout_action="reject")
    approval = ApprovalManager(store=an_hour_ago.store).create(
        op._spec(dag_id="release", run_id="parks", task_id="gate", try_number=1, context={})
    )
    assert approval.expires_at is not None
    with pytest.raises(awaiting_input()) as parked:
        op._wait(approval)
    assert parked.value.method_name == "execute_complete"  # type: ignore[attr-defined]
    assert parked.value.kwargs == {"request_id": approval.id, "follow": None}  # type: ignore[attr-defined]
    # Airflow's sweep resumes it a grace period after the deadline: the api-server acts first.
    backstop = utcnow() + parked.value.timeout  # type: ignore[attr-defined]
    assert abs(backstop - (approval.expires_at + BACKSTOP_GRACE)) < SLACK


def test_a_gate_with_no_deadline_parks_with_no_backstop(store: ApprovalStore, store_url: str) -> None:
    op = ApprovalOperator(task_id="gate", title="Release")
    approval = opened(ApprovalManager(store=store), op, "no-deadline")
    with pytest.raises(awaiting_input()) as parked:
        op._wait(approval)
    assert parked.value.timeout is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "option",
    [
        pytest.param("AIRFLOW__HITL__PARK_GATES", id="park-gates-off"),
        # Only the api-server's gate closer ends a parked gate.
        pytest.param("AIRFLOW__HITL__GATE_CLOSER", id="gate-closer-off"),
    ],
)
def test_with_parking_or_the_gate_closer_off_it_defers_to_its_trigger(
    store: ApprovalStore, store_url: str, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setenv(option, "False")
    op = gate(timeout_action="reject")
    approval = opened(ApprovalManager(store=store), op, "deferring")
    with pytest.raises(TaskDeferred) as deferred:
        op._wait(approval)
    assert isinstance(deferred.value.trigger, ApprovalTrigger)
    assert deferred.value.trigger.request_id == approval.id


def test_resumed_at_its_backstop_a_gate_times_out_per_its_action(an_hour_ago: ApprovalManager) -> None:
    # No api-server acted on the deadline: Airflow's sweep resumed the gate on a worker.
    op = gate(timeout_action="approve")
    approval = opened(an_hour_ago, op, "backstop-timeout")
    summary = op.execute_complete({}, event=SWEEP_EVENT, request_id=approval.id, follow=None)  # type: ignore[arg-type]
    assert (summary["state"], summary["decision"]) == ("timeout", "approved")
    done = an_hour_ago.queries.get(approval.id)
    assert (done.state, done.decision_source) == ("timeout", "timeout")


def test_resumed_at_its_backstop_a_gate_escalates_and_parks_again(an_hour_ago: ApprovalManager) -> None:
    from airflow_hitl.policy import EscalationLevel

    op = gate(
        allowed_approvers=["bob"],
        timeout_action="escalate",
        escalate_to=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=2))],
        escalation_final_action="reject",
    )
    approval = opened(an_hour_ago, op, "backstop-escalation")
    with pytest.raises(awaiting_input()) as parked:
        op.execute_complete({}, event=SWEEP_EVENT, request_id=approval.id, follow=None)  # type: ignore[arg-type]
    escalated = an_hour_ago.queries.get(approval.id)
    assert (escalated.state, escalated.escalation_level, escalated.allowed_approvers) == (
        "escalated",
        1,
        ("bob", "carol"),
    )
    assert escalated.expires_at is not None
    # Parked again on the same request, its backstop behind the new level's deadline.
    assert parked.value.kwargs == {"request_id": approval.id, "follow": None}  # type: ignore[attr-defined]
    backstop = utcnow() + parked.value.timeout  # type: ignore[attr-defined]
    assert abs(backstop - (escalated.expires_at + BACKSTOP_GRACE)) < SLACK


def test_resumed_after_a_decision_nobody_ended_it_finishes_with_the_decision(
    store: ApprovalStore, store_url: str
) -> None:
    # Decided while no api-server ran, the gate still parked: its backstop resume finishes it.
    from airflow_hitl.policy import Principal

    manager = ApprovalManager(store=store)
    op = gate(timeout_action="reject")
    approval = opened(manager, op, "decided")
    manager.approve(approval.id, user=Principal.of("alice"), comment="while nobody watched")
    summary = op.execute_complete({}, event=SWEEP_EVENT, request_id=approval.id, follow=None)  # type: ignore[arg-type]
    assert (summary["state"], summary["decided_by"]) == ("approved", "alice")
    assert manager.queries.get(approval.id).state == "approved", "the timeout was not applied over it"

"""ApprovalTrigger ending the gate itself: Airflow's task end events with the decision as XCom.

Run in a real event loop against a real store (SQLite and PostgreSQL). ``attach`` hands the
trigger a task instance the way the triggerer does; without one (``airflow dags test``) the
trigger falls back to a plain event for ``execute_complete``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import (
    BaseTaskEndEvent,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)
from airflow.utils.state import TaskInstanceState

from airflow_hitl.gate_ends import TAKE_OVER_AFTER, GateEnds
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.triggers.approval import ApprovalTrigger
from tests.helpers import Clock, later, next_event, spec

ALICE = Principal.of("alice")
CAROL = Principal.of("carol")


def attach(trigger: ApprovalTrigger) -> ApprovalTrigger:
    """Give the trigger the task instance the triggerer would set (only its identity is read)."""
    trigger.task_instance = SimpleNamespace(  # type: ignore[assignment]
        dag_id="release", run_id="manual__1", task_id="gate", map_index=-1, try_number=1
    )
    return trigger


def gate_trigger(request_id: str, poll_interval: float = 0.2) -> ApprovalTrigger:
    return attach(ApprovalTrigger(request_id=request_id, end_task=True, poll_interval=poll_interval))


def first(trigger: ApprovalTrigger, timeout: float = 30.0) -> TriggerEvent:
    return asyncio.run(next_event(trigger, timeout))


class TestDecisions:
    def test_approval_succeeds_with_the_summary_as_return_value(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        later(0.3, manager.approve, approval.id, user=ALICE, comment="ship it")
        event = first(gate_trigger(approval.id))
        assert isinstance(event, TaskSuccessEvent)
        assert event.task_instance_state == TaskInstanceState.SUCCESS
        assert event.xcoms is not None
        summary = event.xcoms["return_value"]
        assert summary["request_id"] == approval.id
        assert summary["state"] == "approved"
        assert summary["approved"] is True
        assert summary["decided_by"] == "alice"
        assert [(v["user"], v["vote"], v["comment"]) for v in summary["votes"]] == [("alice", "approve", "ship it")]

    def test_rejection_fails_with_the_summary_as_decision(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        later(0.3, manager.reject, approval.id, user=ALICE, reason="metrics regressed")
        event = first(gate_trigger(approval.id))
        assert isinstance(event, TaskFailedEvent)
        assert event.xcoms is not None and set(event.xcoms) == {"decision"}
        assert event.xcoms["decision"]["state"] == "rejected"
        assert event.xcoms["decision"]["approved"] is False

    def test_rejection_with_on_reject_skip_skips(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec(on_reject="skip"))
        manager.reject(approval.id, user=ALICE, reason="not this week")
        event = first(gate_trigger(approval.id))
        assert isinstance(event, TaskSkippedEvent)
        assert event.xcoms is not None and event.xcoms["decision"]["state"] == "rejected"

    def test_cancel_fails_even_with_on_reject_skip(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec(on_reject="skip"))
        later(0.3, manager.cancel, approval.id, actor="ops", reason="release withdrawn")
        event = first(gate_trigger(approval.id))
        assert isinstance(event, TaskFailedEvent)
        assert event.xcoms is not None and event.xcoms["decision"]["state"] == "cancelled"

    @pytest.mark.parametrize(
        ("action", "expected", "decision"),
        [
            pytest.param("approve", TaskSuccessEvent, "approved", id="approve"),
            pytest.param("reject", TaskFailedEvent, "rejected", id="reject"),
        ],
    )
    def test_timeout_applies_its_action(
        self, manager: ApprovalManager, action: str, expected: type[BaseTaskEndEvent], decision: str
    ) -> None:
        approval = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action=action))
        event = first(gate_trigger(approval.id, poll_interval=60))
        assert type(event) is expected
        assert event.xcoms is not None
        summary = next(iter(event.xcoms.values()))
        assert summary["state"] == "timeout"
        assert summary["decision"] == decision
        assert manager.queries.get(approval.id).decision_source == "timeout"

    def test_missing_request_fails_the_task(self) -> None:
        event = first(gate_trigger("00000000-0000-4000-8000-000000000000"))
        assert isinstance(event, TaskFailedEvent)


class TestEscalation:
    def test_escalation_keeps_waiting_then_the_new_approver_decides(self, manager: ApprovalManager) -> None:
        approval = manager.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(seconds=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(seconds=60))],
                escalation_final_action="reject",
            )
        )

        async def main() -> tuple[TriggerEvent, int]:
            waiting = asyncio.create_task(next_event(gate_trigger(approval.id, poll_interval=0.3), timeout=60))
            # Wait for the escalation itself (a condition, not a sleep), then check the trigger still waits.
            deadline = time.monotonic() + 30
            while (await asyncio.to_thread(manager.queries.get, approval.id)).escalation_level == 0:
                assert time.monotonic() < deadline, "the trigger never applied the escalation"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            still_waiting = not waiting.done()
            await asyncio.to_thread(manager.approve, approval.id, user=CAROL)
            return await waiting, int(still_waiting)

        event, still_waiting = asyncio.run(main())
        assert still_waiting == 1, "the trigger yielded on escalation instead of waiting"
        assert isinstance(event, TaskSuccessEvent)
        assert event.xcoms is not None
        assert event.xcoms["return_value"]["escalation_level"] == 1
        assert event.xcoms["return_value"]["decided_by"] == "carol"

    def test_last_level_expiring_applies_the_final_action(self, manager: ApprovalManager) -> None:
        approval = manager.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(seconds=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(seconds=1))],
                escalation_final_action="reject",
            )
        )
        event = first(gate_trigger(approval.id, poll_interval=60), timeout=60)
        assert isinstance(event, TaskFailedEvent)
        assert event.xcoms is not None
        assert event.xcoms["decision"]["state"] == "timeout"
        assert event.xcoms["decision"]["escalation_level"] == 1
        assert [e.event_type for e in manager.audit.events(approval.id)] == ["requested", "escalated", "timeout"]


class TestOneEnd:
    """The trigger hands Airflow the task's end only under the claim the api-server's closer takes too."""

    def test_the_trigger_ends_the_task_under_its_own_claim(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        later(0.3, manager.reject, approval.id, user=ALICE, reason="no")
        assert isinstance(first(gate_trigger(approval.id)), TaskFailedEvent)
        ended_by = manager.gate_ends.gate_ended_by(approval.id)
        assert ended_by is not None and ended_by.startswith("trigger@")

    def test_a_timeout_is_ended_under_the_claim_too(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action="reject"))
        assert isinstance(first(gate_trigger(approval.id, poll_interval=60)), TaskFailedEvent)
        assert (manager.gate_ends.gate_ended_by(approval.id) or "").startswith("trigger@")

    def test_a_trigger_that_lost_the_claim_yields_nothing_until_airflow_cancels_it(
        self, manager: ApprovalManager
    ) -> None:
        # The closer claimed it and ends the task; Airflow then cancels the trigger, which must
        # not have yielded an end (a second end of the try) nor returned (a failed trigger).
        approval = manager.create(spec())
        manager.reject(approval.id, user=ALICE, reason="no")
        assert manager.gate_ends.claim_gate_end(approval.id, by="api-server@web-1:7:abc")
        trigger = gate_trigger(approval.id)

        async def main() -> bool:
            events = trigger.run()
            waiting = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(1.5)
            still_waiting = not waiting.done()
            waiting.cancel()  # what the triggerer does once the task is no longer deferred
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await events.aclose()
            return still_waiting

        assert asyncio.run(main()) is True
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@web-1:7:abc"
        assert trigger._claimant is not None and trigger._claimant.startswith("trigger@")

    def test_a_claim_whose_holder_died_is_taken_over(self, store: ApprovalStore, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        manager.reject(approval.id, user=ALICE, reason="no")
        long_ago = Clock(dt.datetime.now(dt.timezone.utc) - TAKE_OVER_AFTER - dt.timedelta(seconds=5))
        assert ApprovalManager(store=store, clock=long_ago).gate_ends.claim_gate_end(
            approval.id, by="api-server@dead:1:x"
        )
        assert isinstance(first(gate_trigger(approval.id)), TaskFailedEvent)
        assert (manager.gate_ends.gate_ended_by(approval.id) or "").startswith("trigger@")

    def test_a_claim_given_back_is_taken_on_the_next_try(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The closer's end failed in Airflow and it gave the claim back: the trigger ends the task.
        monkeypatch.setattr("airflow_hitl.triggers.approval._CLAIM_AGAIN", 0.1)
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        assert manager.gate_ends.claim_gate_end(approval.id, by="api-server@web-1:7:abc")
        later(1.0, manager.gate_ends.release_gate_end, approval.id, by="api-server@web-1:7:abc")
        assert isinstance(first(gate_trigger(approval.id)), TaskSuccessEvent)
        assert (manager.gate_ends.gate_ended_by(approval.id) or "").startswith("trigger@")


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
class TestRacingTheCloser:
    GATES = 20

    def test_each_gate_is_ended_by_exactly_one_of_its_trigger_and_the_closer(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Every decision is followed by the closer's claim from another thread, while each
        # gate's trigger wakes on the same decision: one of the two wins each gate. (No head
        # start for the closer here, so that the triggers win some.)
        monkeypatch.setattr("airflow_hitl.triggers.approval._CLOSER_HEAD_START", 0.0)
        ids = [manager.create(spec()).id for _ in range(self.GATES)]
        closer = "api-server@web-1:7:abc"

        def decide_and_claim(request_id: str) -> bool:
            manager.reject(request_id, user=ALICE, reason="burst")
            # The closer reaches each gate a little later each time: the trigger wins some.
            time.sleep(0.05 * (ids.index(request_id) % 8))
            return manager.gate_ends.claim_gate_end(request_id, by=closer)

        async def main() -> tuple[list[bool], list[TriggerEvent | BaseException]]:
            waits = [asyncio.create_task(next_event(gate_trigger(i, poll_interval=0.2), timeout=8)) for i in ids]
            await asyncio.sleep(0.5)
            closer_won = await asyncio.gather(*(asyncio.to_thread(decide_and_claim, i) for i in ids))
            return list(closer_won), list(await asyncio.gather(*waits, return_exceptions=True))

        closer_won, outcomes = asyncio.run(main())
        trigger_won = [isinstance(o, TaskFailedEvent) for o in outcomes]
        assert all(isinstance(o, (TaskFailedEvent, asyncio.TimeoutError)) for o in outcomes), outcomes
        assert [c + t for c, t in zip(closer_won, trigger_won, strict=True)] == [1] * self.GATES
        for request_id, by_closer in zip(ids, closer_won, strict=True):
            ended_by = manager.gate_ends.gate_ended_by(request_id) or ""
            assert ended_by == closer if by_closer else ended_by.startswith("trigger@")


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
class TestCloserHeadStart:
    """With a gate closer (PostgreSQL store, ``[hitl] gate_closer``) the trigger claims a second late."""

    def test_a_closer_claiming_within_the_head_start_ends_the_gate(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        manager.reject(approval.id, user=ALICE, reason="no")
        later(0.3, manager.gate_ends.claim_gate_end, approval.id, by="api-server@web-1:7:abc")
        with pytest.raises(asyncio.TimeoutError):
            first(gate_trigger(approval.id), timeout=3.0)
        assert manager.gate_ends.gate_ended_by(approval.id) == "api-server@web-1:7:abc"

    @pytest.mark.parametrize(("closer", "ends"), [("True", False), ("False", True)], ids=["closer-on", "closer-off"])
    def test_only_a_configured_closer_is_waited_for(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch, closer: str, ends: bool
    ) -> None:
        monkeypatch.setattr("airflow_hitl.triggers.approval._CLOSER_HEAD_START", 60.0)
        monkeypatch.setenv("AIRFLOW__HITL__GATE_CLOSER", closer)
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        if ends:
            assert isinstance(first(gate_trigger(approval.id), timeout=20.0), TaskSuccessEvent)
            assert (manager.gate_ends.gate_ended_by(approval.id) or "").startswith("trigger@")
        else:
            with pytest.raises(asyncio.TimeoutError):
                first(gate_trigger(approval.id), timeout=3.0)
            assert manager.gate_ends.gate_ended_by(approval.id) is None


class TestNothingRaisesOutOfRun:
    """An error of ours in the triggerer delays the gate; it never fails the trigger (Airflow would fail the task)."""

    def test_a_configuration_error_is_logged_and_tried_again(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_hitl.settings import HitlSettings

        real, calls = HitlSettings.load, []

        def flaky() -> HitlSettings:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("[hitl] poll_interval: not a number")
            return real()

        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        monkeypatch.setattr("airflow_hitl.triggers.approval.HitlSettings.load", staticmethod(flaky))
        assert isinstance(first(gate_trigger(approval.id)), TaskSuccessEvent)
        assert len(calls) >= 2

    def test_a_store_error_while_claiming_is_retried(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_hitl.exceptions import StoreUnavailable

        real, calls = GateEnds.claim_gate_end, []

        def flaky(self: GateEnds, request_id: str, **kwargs: Any) -> bool:
            calls.append(request_id)
            if len(calls) == 1:
                raise StoreUnavailable("the approval store is unavailable: connection refused")
            return real(self, request_id, **kwargs)

        monkeypatch.setattr(GateEnds, "claim_gate_end", flaky)
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        assert isinstance(first(gate_trigger(approval.id)), TaskSuccessEvent)
        assert calls == [approval.id, approval.id]

    def test_a_bug_of_ours_is_logged_and_tried_again(
        self, manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import airflow_hitl.triggers.approval as module

        real, calls = module.shared_poller, []

        def broken_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise AttributeError("'NoneType' object has no attribute 'watch'")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "shared_poller", broken_once)
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        assert isinstance(first(gate_trigger(approval.id)), TaskSuccessEvent)
        assert len(calls) == 2


class TestFallback:
    def test_without_a_triggerer_task_instance_it_yields_a_plain_event(self, manager: ApprovalManager) -> None:
        # ``airflow dags test`` runs the trigger inline and resumes the task with the payload.
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        event = first(ApprovalTrigger(request_id=approval.id, end_task=True))
        assert type(event) is TriggerEvent
        assert event.payload == {"request_id": approval.id, "status": "decided", "state": "approved"}

    def test_older_trigger_yields_on_escalation(self, manager: ApprovalManager) -> None:
        approval = manager.create(
            spec(
                timeout=dt.timedelta(seconds=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(seconds=60))],
                escalation_final_action="reject",
            )
        )
        event = first(attach(ApprovalTrigger(request_id=approval.id, poll_interval=60)))
        assert event.payload == {"request_id": approval.id, "status": "escalated", "state": "escalated"}


class TestOnKill:
    def test_on_kill_cancels_the_request(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        asyncio.run(gate_trigger(approval.id).on_kill())
        assert manager.queries.get(approval.id).state == "cancelled"


class TestAirflowContract:
    """What ending the gate from the trigger relies on in Airflow (see also tests/e2e/test_resume_e2e.py)."""

    def test_task_end_events_have_their_own_submit_handler(self) -> None:
        # The triggerer hands every event to handle_event_submit; the BaseTaskEndEvent variant sets
        # the final state (no worker resume). If Airflow drops it, our events would resume a worker.
        generic = handle_event_submit.dispatch(TriggerEvent)
        for event_class in (TaskSuccessEvent, TaskFailedEvent, TaskSkippedEvent):
            assert handle_event_submit.dispatch(event_class) is handle_event_submit.dispatch(BaseTaskEndEvent)
            assert handle_event_submit.dispatch(event_class) is not generic

    @pytest.mark.parametrize(
        ("event", "state"),
        [
            pytest.param(TaskSuccessEvent(xcoms={"return_value": {"a": 1}}), TaskInstanceState.SUCCESS, id="success"),
            pytest.param(TaskFailedEvent(xcoms={"decision": {"a": 1}}), TaskInstanceState.FAILED, id="failed"),
            pytest.param(TaskSkippedEvent(xcoms={"decision": {"a": 1}}), TaskInstanceState.SKIPPED, id="skipped"),
        ],
    )
    def test_end_events_carry_state_and_xcoms_through_serialization(
        self, event: BaseTaskEndEvent, state: TaskInstanceState
    ) -> None:
        # The trigger subprocess sends its events to the triggerer as JSON; both fields must survive.
        from airflow.triggers.base import DiscrimatedTriggerEvent
        from pydantic import TypeAdapter

        adapter: TypeAdapter[Any] = TypeAdapter(DiscrimatedTriggerEvent)
        back = adapter.validate_json(adapter.dump_json(event))
        assert isinstance(back, BaseTaskEndEvent)
        assert back.task_instance_state == state
        assert back.xcoms == event.xcoms

"""ApprovalTrigger, run in a real event loop against a real store (its shared poller: test_poller.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.triggers.approval import ApprovalTrigger
from tests.helpers import first_event, later, spec

ALICE = Principal.of("alice")


class TestSerialize:
    def test_round_trip(self) -> None:
        trigger = ApprovalTrigger(request_id="abc", conn_id="hitl_pg", poll_interval=3.0)
        classpath, kwargs = trigger.serialize()
        assert classpath == "airflow_hitl.triggers.approval.ApprovalTrigger"
        assert kwargs == {"request_id": "abc", "conn_id": "hitl_pg", "poll_interval": 3.0, "end_task": False}
        assert ApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_round_trip_end_task(self) -> None:
        classpath, kwargs = ApprovalTrigger(request_id="abc", end_task=True).serialize()
        assert kwargs["end_task"] is True
        assert ApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_kwargs_of_an_older_release_still_load(self) -> None:
        # A gate deferred by the previous release: no end_task, a remind_at. It resumes on a worker.
        trigger = ApprovalTrigger(request_id="abc", conn_id=None, poll_interval=2.0, remind_at=1_800_000_000.0)
        assert trigger.end_task is False
        assert trigger.serialize()[1]["remind_at"] == 1_800_000_000.0


class TestRun:
    def test_decision_wakes_the_trigger(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        later(0.5, manager.approve, approval.id, user=ALICE)
        payload = asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=0.3)))
        assert payload == {"request_id": approval.id, "status": "decided", "state": "approved"}

    def test_already_decided(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        manager.reject(approval.id, user=ALICE, reason="no")
        payload = asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=60)))
        assert payload["state"] == "rejected"

    def test_quorum_not_reached_keeps_waiting(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec(required_approvals=2))
        later(0.2, manager.approve, approval.id, user=ALICE)
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=0.2), timeout=2))
        assert manager.queries.get(approval.id).state == "pending"

    @pytest.mark.parametrize(("action", "decision"), [("approve", "approved"), ("reject", "rejected")])
    def test_expiry_applies_the_timeout(self, manager: ApprovalManager, action: str, decision: str) -> None:
        approval = manager.create(spec(timeout=dt.timedelta(seconds=1), timeout_action=action))
        payload = asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=60)))
        assert payload["status"] == "decided"
        assert payload["state"] == "timeout"
        assert manager.queries.get(approval.id).decision == decision

    def test_escalation_yields_and_resumes(self, manager: ApprovalManager) -> None:
        approval = manager.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(seconds=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(seconds=30))],
                escalation_final_action="reject",
            )
        )
        payload = asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=60)))
        assert payload == {"request_id": approval.id, "status": "escalated", "state": "escalated"}
        escalated = manager.queries.get(approval.id)
        assert escalated.escalation_level == 1
        # The operator re-defers; the next trigger waits for the escalation approver.
        later(0.3, manager.approve, approval.id, user=Principal.of("carol"))
        payload = asyncio.run(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=0.3)))
        assert payload["state"] == "approved"

    def test_missing_request_is_an_error(self) -> None:
        payload = asyncio.run(first_event(ApprovalTrigger(request_id="00000000-0000-4000-8000-000000000000")))
        assert payload["status"] == "error"
        assert "not found" in payload["error"]

    def test_many_triggers_one_event_each(self, manager: ApprovalManager) -> None:
        ids = [manager.create(spec()).id for _ in range(30)]

        async def main() -> list[dict[str, Any]]:
            waits = [asyncio.create_task(first_event(ApprovalTrigger(request_id=i, poll_interval=0.3))) for i in ids]
            await asyncio.sleep(0.5)
            for i in ids:
                await asyncio.to_thread(manager.approve, i, user=ALICE)
            return await asyncio.gather(*waits)

        payloads = asyncio.run(main())
        assert sorted(p["request_id"] for p in payloads) == sorted(ids)
        assert {p["state"] for p in payloads} == {"approved"}


class TestOnKill:
    def test_on_kill_cancels_the_request(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        asyncio.run(ApprovalTrigger(request_id=approval.id).on_kill())
        cancelled = manager.queries.get(approval.id)
        assert cancelled.state == "cancelled"
        assert cancelled.decision_source == "airflow"

    def test_on_kill_after_decision_changes_nothing(self, manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        manager.approve(approval.id, user=ALICE)
        asyncio.run(ApprovalTrigger(request_id=approval.id).on_kill())
        assert manager.queries.get(approval.id).state == "approved"

"""A gate's SLA: checked with the other options, queued at opening, recorded once when overdue, never a timeout."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalOutboxRow
from airflow_hitl.notifications.drainer import OutboxDrainer
from airflow_hitl.policy import Principal
from tests.helpers import Clock, spec

BOB = Principal.of("bob", ["op"])
IN_APP = {"channels": ["in_app"]}


def sla_intent(store: ApprovalStore, request_id: str) -> ApprovalOutboxRow | None:
    with store.session() as session:
        return session.scalar(
            select(ApprovalOutboxRow).where(
                ApprovalOutboxRow.request_id == request_id, ApprovalOutboxRow.event_type == "sla_breached"
            )
        )


def drainer(mgr: ApprovalManager, clock: Clock) -> OutboxDrainer:
    return OutboxDrainer(manager=mgr, clock=clock)


class TestChecked:
    @pytest.mark.parametrize(
        ("sla", "timeout", "problem"),
        [
            pytest.param(dt.timedelta(0), None, "must be positive", id="zero"),
            pytest.param(dt.timedelta(minutes=-5), None, "must be positive", id="negative"),
            pytest.param(3600, None, "must be a datetime.timedelta", id="a-number"),
            pytest.param(dt.timedelta(hours=2), dt.timedelta(hours=1), "shorter than the timeout", id="past-timeout"),
            pytest.param(dt.timedelta(hours=1), dt.timedelta(hours=1), "shorter than the timeout", id="at-timeout"),
        ],
    )
    def test_refused_naming_the_field(self, sla: object, timeout: dt.timedelta | None, problem: str) -> None:
        with pytest.raises(InvalidInput) as err:
            spec(sla=sla, timeout=timeout, timeout_action="reject" if timeout else None).validate()
        assert ("sla", next(p for f, p in err.value.problems if f == "sla")) in err.value.problems
        assert problem in dict(err.value.problems)["sla"]

    def test_shorter_than_the_timeout_is_fine(self) -> None:
        spec(sla=dt.timedelta(minutes=30), timeout=dt.timedelta(hours=1), timeout_action="reject").validate()


class TestBreach:
    def test_opening_queues_the_notice_due_at_the_sla(
        self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore
    ) -> None:
        gate = mgr.create(spec(sla=dt.timedelta(minutes=30), notify=IN_APP))
        assert gate.sla_seconds == 1800 and gate.sla_breached_at is None
        intent = sla_intent(store, gate.id)
        assert intent is not None and intent.due_at == gate.requested_at + dt.timedelta(minutes=30)
        assert sla_intent(store, mgr.create(spec(notify=IN_APP)).id) is None

    def test_overdue_is_recorded_once_and_the_gate_keeps_waiting(
        self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore
    ) -> None:
        gate = mgr.create(spec(sla=dt.timedelta(minutes=30), notify=IN_APP, allowed_approvers=["bob"]))
        sender = drainer(mgr, clock)
        sender.drain(event_types=["sla_breached"])
        assert mgr.queries.get(gate.id).sla_breached_at is None  # not due yet
        clock.advance(minutes=31)
        assert sender.drain(event_types=["sla_breached"]) == 1
        overdue = mgr.queries.get(gate.id)
        assert overdue.state == "pending" and overdue.sla_breached_at == clock.now
        events = [e for e in mgr.audit.events(gate.id) if e.event_type == "sla_breached"]
        assert len(events) == 1 and events[0].details["sla_seconds"] == 1800
        assert events[0].details["waited_seconds"] == pytest.approx(31 * 60)
        notices = mgr.notices.list_notifications(request_id=gate.id)
        assert [(n.recipient, n.channel, n.status) for n in notices if n.event_type == "sla_breached"] == [
            ("bob", "in_app", "sent")
        ]
        # Recorded once: asking again (another api-server) changes nothing.
        assert mgr.sla.breach(gate.id)[0] is False
        assert len([e for e in mgr.audit.events(gate.id) if e.event_type == "sla_breached"]) == 1
        assert mgr.decide(gate.id, Decision(action="approve", user=BOB, source="api")).state == "approved"
        assert mgr.audit.verify_audit_chain().ok

    def test_a_gate_decided_first_is_not_overdue(
        self, mgr: ApprovalManager, clock: Clock, store: ApprovalStore
    ) -> None:
        for notify in (IN_APP, {}):
            gate = mgr.create(spec(sla=dt.timedelta(minutes=30), notify=notify))
            mgr.decide(gate.id, Decision(action="approve", user=BOB, source="api"))
            intent = sla_intent(store, gate.id)
            assert intent is not None and intent.status == "cancelled"
            clock.advance(minutes=31)
            drainer(mgr, clock).drain(event_types=["sla_breached"])
            assert mgr.queries.get(gate.id).sla_breached_at is None
            assert not [e for e in mgr.audit.events(gate.id) if e.event_type == "sla_breached"]

    def test_a_gate_that_tells_nobody_still_records_it(self, mgr: ApprovalManager, clock: Clock) -> None:
        gate = mgr.create(spec(sla=dt.timedelta(minutes=5)))
        clock.advance(minutes=6)
        drainer(mgr, clock).drain(event_types=["sla_breached"])
        assert mgr.queries.get(gate.id).sla_breached_at == clock.now
        assert mgr.notices.list_notifications(request_id=gate.id) == []

    def test_not_before_it_is_due(self, mgr: ApprovalManager, clock: Clock) -> None:
        gate = mgr.create(spec(sla=dt.timedelta(hours=1)))
        assert mgr.sla.breach(gate.id)[0] is False
        assert mgr.queries.get(gate.id).sla_breached_at is None

"""ApprovalManager: state machine, policies, audit — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from airflow_hitl.audit import AuditKey, AuditReader
from airflow_hitl.delegation import Delegations
from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalNotFound,
    ApprovalNotPending,
    ContentChanged,
    InvalidInput,
    NotAllowed,
)
from airflow_hitl.gate_ends import GateEnds
from airflow_hitl.manager import ApprovalManager, ApprovalSpec, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.notices import NoticeLog
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.queries import ApprovalQueries
from airflow_hitl.transaction import StoreTransactions
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])
RICKY = Principal.of("ricky", ["op"])  # the requester in tests.helpers.spec
MALLORY = Principal.of("mallory", ["viewer"])


def vote_count(store: ApprovalStore, request_id: str) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).where(ApprovalVoteRow.request_id == request_id)) or 0


class TestCreate:
    def test_create_then_get(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(context={"accuracy": 0.97}, metadata={"risk": "high"}))
        got = mgr.queries.get(created.id)
        assert got.state == "pending"
        assert got.context == {"accuracy": 0.97}
        assert got.metadata == {"risk": "high"}
        assert got.requested_by == "ricky"
        assert [e.event_type for e in mgr.audit.events(created.id)] == ["requested"]

    def test_same_try_is_idempotent(self, mgr: ApprovalManager) -> None:
        s = spec()
        first = mgr.create(s)
        again = mgr.create(s)
        assert again.id == first.id
        assert mgr.queries.list()[1] == 1

    def test_new_try_supersedes_the_waiting_one(self, mgr: ApprovalManager) -> None:
        first = mgr.create(spec(run_id="r1", try_number=1))
        second = mgr.create(spec(run_id="r1", try_number=2))
        assert second.id != first.id
        old = mgr.queries.get(first.id)
        assert old.state == "cancelled"
        assert "superseded by try 2" in (old.comment or "")
        assert mgr.queries.get(second.id).state == "pending"


def ti() -> str:
    """A new task instance try's id, as Airflow gives one (``ti.id``)."""
    return str(uuid.uuid4())


def gate_of(run_id: str, task_instance_id: str, try_number: int = 1) -> ApprovalSpec:
    return spec(run_id=run_id, task_instance_id=task_instance_id, try_number=try_number)


class TestRunCreatedAgain:
    """A DAG run deleted and created again under its run id: new task instances, try 1 again."""

    def test_the_same_task_instance_try_finds_its_request_again(self, mgr: ApprovalManager) -> None:
        mine = ti()
        first = mgr.create(gate_of("scheduled__1", mine))
        assert mgr.create(gate_of("scheduled__1", mine)).id == first.id
        assert mgr.queries.list()[1] == 1

    def test_an_approval_of_the_old_run_never_opens_the_new_runs_gate(self, mgr: ApprovalManager) -> None:
        old = mgr.create(gate_of("scheduled__1", ti()))
        assert mgr.approve(old.id, user=ALICE).approved
        new = mgr.create(gate_of("scheduled__1", ti()))
        assert new.id != old.id and new.state == "pending" and new.votes == ()
        # The old run's decision stays in the history as it was.
        kept = mgr.queries.get(old.id)
        assert (kept.state, kept.decided_by) == ("approved", "alice")
        assert [e.event_type for e in mgr.audit.events(old.id)] == ["requested", "vote", "approved"]

    def test_the_old_runs_waiting_request_is_cancelled_by_airflow(self, mgr: ApprovalManager) -> None:
        old = mgr.create(gate_of("scheduled__1", ti()))
        new_ti = ti()
        new = mgr.create(gate_of("scheduled__1", new_ti))
        assert new.id != old.id and new.is_waiting
        cancelled = mgr.queries.get(old.id)
        assert (cancelled.state, cancelled.decision, cancelled.decision_source) == ("cancelled", None, "airflow")
        assert "its DAG run was deleted and created again" in str(cancelled.comment)
        assert new_ti in str(cancelled.comment)
        events = mgr.audit.events(old.id)
        assert [e.event_type for e in events] == ["requested", "cancelled"]
        assert (events[1].source, events[1].actor) == ("airflow", None)
        assert mgr.audit.verify_audit_chain().ok

    def test_a_later_try_of_the_old_run_is_closed_too(self, mgr: ApprovalManager) -> None:
        # The old run got to try 3; the new one starts at try 1, which tries never go back to in one run.
        old = mgr.create(gate_of("scheduled__1", ti(), try_number=3))
        new = mgr.create(gate_of("scheduled__1", ti()))
        closed = mgr.queries.get(old.id)
        assert (closed.state, closed.decision_source) == ("cancelled", "airflow")
        assert mgr.queries.get(new.id).is_waiting

    def test_an_earlier_try_is_superseded_whatever_its_task_instance(self, mgr: ApprovalManager) -> None:
        first = mgr.create(gate_of("manual__1", ti()))
        second = mgr.create(gate_of("manual__1", ti(), try_number=2))
        old = mgr.queries.get(first.id)
        assert (old.state, old.decision_source, old.comment) == ("cancelled", "system", "superseded by try 2")
        assert mgr.queries.get(second.id).is_waiting

    def test_a_request_that_names_no_task_instance_keeps_one_per_try(self, mgr: ApprovalManager) -> None:
        # Opened before revision 0013 recorded the task instance: a gate of that try takes it, as before.
        legacy = mgr.create(spec(run_id="manual__1"))
        assert mgr.create(gate_of("manual__1", ti())).id == legacy.id
        assert mgr.create(spec(run_id="manual__1")).id == legacy.id
        assert mgr.queries.list()[1] == 1

    def test_the_id_is_kept_in_its_canonical_form_and_audited(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        mine = uuid.uuid4()
        created = mgr.create(spec(task_instance_id=mine.hex.upper()))  # as Airflow's DB holds it on SQLite
        with store.session() as session:
            assert session.get(ApprovalRequestRow, created.id).task_instance_id == str(mine)  # type: ignore[union-attr]
        assert mgr.audit.events(created.id)[0].details["task_instance_id"] == str(mine)
        assert mgr.create(spec(run_id=created.run_id, task_instance_id=mine)).id == created.id

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            pytest.param({"task_instance_id": "ti-1"}, "must be a UUID", id="not-a-uuid"),
            pytest.param({"task_instance_id": 7}, "must be a UUID", id="not-text"),
            pytest.param({"task_instance_id": str(uuid.uuid4()), "try_number": None}, "go with it", id="no-try"),
            pytest.param({"task_instance_id": str(uuid.uuid4()), "run_id": None}, "go with it", id="no-run"),
        ],
    )
    def test_a_wrong_id_is_refused_naming_the_field(
        self, mgr: ApprovalManager, overrides: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.create(spec(**overrides))
        assert err.value.field == "task_instance_id" and message in str(err.value)
        assert mgr.queries.list()[1] == 0

    def test_only_a_tasks_gate_names_its_task_instance(self, mgr: ApprovalManager) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.create(spec(task_instance_id=ti()), actor="admin", source="api", origin="api")
        assert err.value.field == "task_instance_id"
        assert mgr.queries.list()[1] == 0

    @pytest.mark.parametrize("named", [True, False], ids=["task-instance", "no-task-instance"])
    def test_workers_racing_on_one_try_get_one_request(self, store: ApprovalStore, named: bool) -> None:
        # Several workers run the same try at once (each with its own manager, as each process has):
        # whoever loses the insert finds the winner's row, on either unique index.
        rounds, workers = 5, 6
        for round_ in range(rounds):
            gate = spec(run_id=f"race__{round_}", task_instance_id=ti() if named else None)
            barrier = threading.Barrier(workers)
            managers = [ApprovalManager(store=store) for _ in range(workers)]

            def open_gate(
                manager: ApprovalManager, gate: ApprovalSpec = gate, barrier: threading.Barrier = barrier
            ) -> str:
                barrier.wait(timeout=60)
                return manager.create(gate).id

            with ThreadPoolExecutor(workers) as pool:
                ids = set(pool.map(open_gate, managers))
            assert len(ids) == 1
        assert managers[0].queries.list()[1] == rounds
        assert managers[0].audit.verify_audit_chain().ok


class TestVoting:
    def test_single_approval_approves(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        done = mgr.approve(a.id, user=ALICE, comment="lgtm")
        assert done.state == "approved"
        assert done.decision == "approved"
        assert done.decided_by == "alice"
        assert done.decision_source == "api"
        assert done.approvers == ["alice"]
        assert [e.event_type for e in mgr.audit.events(a.id)] == ["requested", "vote", "approved"]

    @pytest.mark.parametrize("text", ["ok\x00then", "ok\udc80"], ids=["nul", "lone-surrogate"])
    def test_text_the_store_cannot_keep_is_refused_naming_the_field(
        self, mgr: ApprovalManager, store: ApprovalStore, text: str
    ) -> None:
        # The REST API refuses these in its bodies; a link's form, a Slack modal or the CLI may not.
        a = mgr.create(spec())
        refusals = [
            lambda: mgr.approve(a.id, user=ALICE, comment=text),
            lambda: mgr.reject(a.id, user=ALICE, reason=text),
            lambda: mgr.reject(a.id, user=ALICE, reason="fine", comment=text),
            lambda: mgr.cancel(a.id, actor="admin", reason=text),
        ]
        fields = []
        for refused in refusals:
            with pytest.raises(InvalidInput) as err:
                refused()
            fields.append(err.value.field)
        assert fields == ["comment", "reason", "comment", "reason"]
        assert (mgr.queries.get(a.id).state, vote_count(store, a.id), len(mgr.audit.events(a.id))) == ("pending", 0, 1)

    def test_quorum_two_of_three(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob", "carol"], required_approvals=2))
        first = mgr.approve(a.id, user=ALICE)
        assert first.state == "pending"
        assert first.approvers == ["alice"]
        second = mgr.approve(a.id, user=BOB, source="ui")
        assert second.state == "approved"
        assert second.approvers == ["alice", "bob"]
        assert second.decision_source == "ui"

    def test_require_all(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"], require_all=True))
        assert mgr.approve(a.id, user=ALICE).state == "pending"
        assert mgr.approve(a.id, user=BOB).state == "approved"

    def test_one_rejection_vetoes(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(required_approvals=3))
        mgr.approve(a.id, user=ALICE)
        mgr.approve(a.id, user=BOB)
        done = mgr.reject(a.id, user=CAROL, reason="metrics regressed on EU")
        assert done.state == "rejected"
        assert done.decided_by == "carol"
        assert "metrics regressed" in (done.comment or "")

    def test_reject_needs_a_reason(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec())
        with pytest.raises(InvalidInput) as err:
            mgr.reject(a.id, user=ALICE, reason="  ")
        assert err.value.field == "reason"
        assert mgr.queries.get(a.id).state == "pending"
        assert vote_count(store, a.id) == 0

    def test_self_approval_refused_by_default(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec())
        with pytest.raises(NotAllowed) as err:
            mgr.approve(a.id, user=RICKY)
        assert "triggered this run" in err.value.reason
        assert vote_count(store, a.id) == 0
        assert mgr.queries.can_approve(RICKY, mgr.queries.get(a.id)).code == "self_approval"

    def test_self_approval_when_allowed(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allow_self_approval=True))
        assert mgr.approve(a.id, user=RICKY).state == "approved"

    def test_requester_does_not_count_towards_require_all(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["ricky", "alice"], require_all=True))
        assert mgr.approve(a.id, user=ALICE).state == "approved"

    def test_duplicate_vote_refused(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec(required_approvals=2))
        mgr.approve(a.id, user=ALICE)
        with pytest.raises(AlreadyVoted):
            mgr.approve(a.id, user=ALICE)
        with pytest.raises(AlreadyVoted):
            mgr.reject(a.id, user=ALICE, reason="changed my mind")
        assert vote_count(store, a.id) == 1
        assert mgr.queries.get(a.id).state == "pending"

    def test_allowed_users_and_roles(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec(allowed_approvers=["alice"], allowed_roles=["ml-leads"], required_approvals=2))
        with pytest.raises(NotAllowed, match="not an allowed approver"):
            mgr.approve(a.id, user=MALLORY)
        with pytest.raises(NotAllowed):
            mgr.reject(a.id, user=BOB, reason="no")
        assert vote_count(store, a.id) == 0
        mgr.approve(a.id, user=ALICE)
        done = mgr.approve(a.id, user=Principal.of("lead", ["ml-leads"]))
        assert done.state == "approved"
        assert done.approvers == ["alice", "lead"]

    @pytest.mark.parametrize("final", ["approve", "reject", "cancel"])
    def test_no_vote_after_decision(self, mgr: ApprovalManager, store: ApprovalStore, final: str) -> None:
        a = mgr.create(spec())
        if final == "approve":
            mgr.approve(a.id, user=ALICE)
        elif final == "reject":
            mgr.reject(a.id, user=ALICE, reason="no")
        else:
            mgr.cancel(a.id, actor="admin", reason="withdrawn")
        with pytest.raises(ApprovalNotPending):
            mgr.approve(a.id, user=BOB)
        assert vote_count(store, a.id) == (0 if final == "cancel" else 1)

    def test_vote_after_expiry_refused(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=5), timeout_action="reject"))
        clock.advance(minutes=5)
        with pytest.raises(ApprovalNotPending, match="expired"):
            mgr.approve(a.id, user=ALICE)
        assert mgr.queries.can_approve(ALICE, mgr.queries.get(a.id)).code == "expired"

    def test_vote_on_unknown_request(self, mgr: ApprovalManager) -> None:
        with pytest.raises(ApprovalNotFound):
            mgr.approve("5b0f7a3e-0000-4000-8000-000000000000", user=ALICE)


class TestTimeout:
    @pytest.mark.parametrize(("action", "decision"), [("approve", "approved"), ("reject", "rejected")])
    def test_timeout_action(self, mgr: ApprovalManager, clock: Clock, action: str, decision: str) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=10), timeout_action=action))
        assert mgr.apply_timeout(a.id).applied is False
        clock.advance(minutes=10)
        outcome = mgr.apply_timeout(a.id)
        assert outcome.applied
        assert outcome.approval.state == "timeout"
        assert outcome.approval.decision == decision
        assert outcome.approval.decision_source == "timeout"
        again = mgr.apply_timeout(a.id)
        assert again.applied is False
        assert [e.event_type for e in mgr.audit.events(a.id)].count("timeout") == 1

    def test_timeout_after_decision_changes_nothing(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec(timeout=dt.timedelta(minutes=1), timeout_action="reject"))
        mgr.approve(a.id, user=ALICE)
        clock.advance(minutes=2)
        outcome = mgr.apply_timeout(a.id)
        assert outcome.applied is False
        assert outcome.approval.state == "approved"

    def test_escalation_levels_then_final_action(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=10),
                timeout_action="escalate",
                escalation_targets=[
                    EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=30)),
                    EscalationLevel(roles=("admin",), timeout=dt.timedelta(hours=1), required_approvals=1),
                ],
                escalation_final_action="approve",
            )
        )
        with pytest.raises(NotAllowed):
            mgr.approve(a.id, user=CAROL)
        clock.advance(minutes=10)
        first = mgr.apply_timeout(a.id)
        assert first.escalated
        assert first.approval.state == "escalated"
        assert first.approval.escalation_level == 1
        assert first.approval.allowed_approvers == ("bob", "carol")
        assert first.approval.expires_at == clock.now + dt.timedelta(minutes=30)
        clock.advance(minutes=30)
        second = mgr.apply_timeout(a.id)
        assert second.escalated
        assert second.approval.allowed_roles == ("admin",)
        clock.advance(hours=1)
        final = mgr.apply_timeout(a.id)
        assert final.escalated is False
        assert final.approval.state == "timeout"
        assert final.approval.decision == "approved"
        kinds = [e.event_type for e in mgr.audit.events(a.id)]
        assert kinds == ["requested", "escalated", "escalated", "timeout"]

    def test_escalation_approver_decides(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=1)
        mgr.apply_timeout(a.id)
        done = mgr.approve(a.id, user=CAROL)
        assert done.state == "approved"
        assert done.decided_by == "carol"


class TestCancel:
    def test_cancel_pending(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        done = mgr.cancel(a.id, actor="admin", reason="release postponed")
        assert done.state == "cancelled"
        assert done.comment == "release postponed"

    def test_cancel_twice(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.cancel(a.id, actor="admin", reason="x")
        with pytest.raises(ApprovalNotPending):
            mgr.cancel(a.id, actor="admin", reason="x")


class TestAutomatic:
    def test_decide_automatically(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(approval_type="auto"))
        done = mgr.decide_automatically(a.id, source="auto", comment="auto")
        assert done.approved
        assert done.decided_by is None
        assert done.decision_source == "auto"


class TestAudit:
    def test_every_event_names_actor_and_source(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.approve(a.id, user=ALICE, source="slack", client={"client_address": "10.0.0.1"})
        vote = next(e for e in mgr.audit.events(a.id) if e.event_type == "vote")
        assert vote.actor == "alice"
        assert vote.source == "slack"
        assert vote.details["client_address"] == "10.0.0.1"
        assert vote.details["vote"] == "approve"


class TestContentDigest:
    """A decision bound to what the decider saw: a different ``content_digest`` records nothing."""

    @staticmethod
    def escalated(mgr: ApprovalManager, clock: Clock) -> tuple[str, str]:
        """A request escalated to carol: its id and the digest bob saw before the escalation."""
        a = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=1)
        assert mgr.apply_timeout(a.id).escalated
        return a.id, a.content_digest

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_a_stale_digest_records_nothing(
        self, mgr: ApprovalManager, store: ApprovalStore, clock: Clock, action: str
    ) -> None:
        request_id, seen = self.escalated(mgr, clock)
        before = mgr.queries.get(request_id)
        assert before.content_digest != seen  # the escalation widened the circle: another request
        decision = Decision(action=action, user=BOB, source="api", reason="no", content_digest=seen)
        with pytest.raises(ContentChanged, match="the request changed since you opened it") as raised:
            mgr.decide(request_id, decision)
        assert raised.value.status_code == 409
        assert request_id in str(raised.value)
        after = mgr.queries.get(request_id)
        assert vote_count(store, request_id) == 0
        assert [e.event_type for e in mgr.audit.events(request_id)] == ["requested", "escalated"]
        assert (after.state, after.updated_at) == (before.state, before.updated_at)

    def test_a_made_up_digest_records_nothing(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        a = mgr.create(spec(allowed_approvers=["alice"]))
        with pytest.raises(ContentChanged):
            mgr.decide(a.id, Decision(action="approve", user=ALICE, source="api", content_digest="0" * 64))
        assert vote_count(store, a.id) == 0
        assert mgr.queries.get(a.id).state == "pending"

    @pytest.mark.parametrize("case", [str.lower, str.upper], ids=["lower", "upper"])
    def test_the_current_digest_decides(self, mgr: ApprovalManager, clock: Clock, case) -> None:
        request_id, _ = self.escalated(mgr, clock)
        current = mgr.queries.get(request_id).content_digest
        done = mgr.decide(request_id, Decision(action="approve", user=CAROL, source="ui", content_digest=case(current)))
        assert done.state == "approved"
        assert done.content_digest == current
        # The vote keeps what it was cast on, read back from the store (lower case, as written everywhere).
        assert [v.content_digest for v in mgr.queries.get(request_id).votes] == [current]

    def test_without_a_digest_nothing_is_checked(self, mgr: ApprovalManager, clock: Clock) -> None:
        request_id, seen = self.escalated(mgr, clock)
        assert mgr.decide(request_id, Decision(action="approve", user=BOB, source="api")).state == "approved"
        # The vote still records the request it decided: as it was under the lock.
        [vote] = mgr.queries.get(request_id).votes
        assert vote.content_digest == mgr.queries.get(request_id).content_digest != seen

    @pytest.mark.parametrize(
        "digest", ["abc", "g" * 64, "a" * 65, " " + "a" * 64, 64], ids=["short", "not-hex", "long", "space", "number"]
    )
    def test_a_malformed_digest_is_invalid_input_naming_it(
        self, mgr: ApprovalManager, store: ApprovalStore, digest
    ) -> None:
        a = mgr.create(spec(allowed_approvers=["alice"]))
        with pytest.raises(InvalidInput) as raised:
            mgr.decide(a.id, Decision(action="approve", user=ALICE, source="api", content_digest=digest))
        assert raised.value.field == "content_digest"
        assert raised.value.status_code == 422
        assert vote_count(store, a.id) == 0

    def test_a_decided_request_says_so_rather_than_changed(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"]))
        mgr.approve(a.id, user=ALICE)
        with pytest.raises(ApprovalNotPending):
            mgr.decide(a.id, Decision(action="approve", user=BOB, source="api", content_digest="0" * 64))

    def test_another_approvers_vote_does_not_change_it(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2))
        mgr.decide(a.id, Decision(action="approve", user=ALICE, source="api", content_digest=a.content_digest))
        done = mgr.decide(a.id, Decision(action="approve", user=BOB, source="api", content_digest=a.content_digest))
        assert done.state == "approved"


class TestComposition:
    SERVICES = {
        "queries": ApprovalQueries,
        "notices": NoticeLog,
        "audit": AuditReader,
        "delegations": Delegations,
        "gate_ends": GateEnds,
        "transactions": StoreTransactions,
    }

    def test_the_manager_is_composed_of_its_services(self, mgr: ApprovalManager) -> None:
        assert ApprovalManager.__bases__ == (object,)
        for name, kind in self.SERVICES.items():
            service = getattr(mgr, name)
            assert type(service) is kind, name
            assert service.store is mgr.store, name

    def test_the_manager_forwards_nothing_its_services_do(self) -> None:
        # One way to each: a service's method is asked of the service, never of the manager.
        for kind in self.SERVICES.values():
            public = {name for name in vars(kind) if not name.startswith("_")}
            assert not public & set(dir(ApprovalManager)), kind.__name__

    def test_the_services_keep_the_managers_clock(self, mgr: ApprovalManager, clock: Clock) -> None:
        a = mgr.create(spec(allowed_approvers=["alice"], timeout=dt.timedelta(minutes=5), timeout_action="reject"))
        assert mgr.queries.can_approve(ALICE, a).allowed
        clock.advance(minutes=6)
        assert mgr.queries.can_approve(ALICE, a).code == "expired"
        made = mgr.delegations.create_delegation(
            actor=ALICE, delegate="bob", starts_at=clock.now, ends_at=clock.now + dt.timedelta(hours=1)
        )
        assert made.created_at == clock.now
        assert mgr.delegations.describe_delegation(made)["state"] == "active"

    def test_the_services_keep_the_managers_audit_key(self, store: ApprovalStore, clock: Clock) -> None:
        keyed = ApprovalManager(store=store, clock=clock, audit_key="the manager's key")
        key = AuditKey.of("the manager's key")
        assert key is not None
        keyed.create(spec())
        # A delegation is audited through the delegations service's own transaction.
        keyed.delegations.create_delegation(
            actor=ALICE, delegate="bob", starts_at=clock.now, ends_at=clock.now + dt.timedelta(hours=1)
        )
        assert {e.key_id for e in keyed.audit.events()} == {key.key_id}
        assert keyed.audit.verify_audit_chain().ok
        assert not ApprovalManager(store=store, clock=clock, audit_key="another key").audit.verify_audit_chain().ok

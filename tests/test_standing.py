"""Standing approvals: created, listed, revoked and spent through the one decision path, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import select

from airflow_hitl.api.standing_applier import StandingApplier
from airflow_hitl.exceptions import InvalidInput, NotAllowed
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalOutboxRow
from airflow_hitl.policy import Principal
from airflow_hitl.spec import StandingUse
from airflow_hitl.standing import StandingApproval, StandingNotFound
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
ADMIN = Principal.of("root", ["admin"])
ROLES = {"alice": {"op"}, "bob": {"op"}, "carol": {"op"}}


def stand(mgr: ApprovalManager, clock: Clock, actor: Principal = ALICE, **kw: Any) -> StandingApproval:
    """A standing approval of ``actor`` for DAG ``release``, a day long unless ``kw`` says otherwise."""
    kw.setdefault("dag_id", "release")
    kw.setdefault("valid_until", clock.now + dt.timedelta(days=1))
    kw.setdefault("comment", "nightly releases, approved ahead")
    return mgr.standing.create(actor=actor, **kw)


def applier(mgr: ApprovalManager, access: Any = None) -> StandingApplier:
    """The api-server's applier over ``mgr``, with the auth manager's answers given here."""
    return StandingApplier(
        manager_factory=lambda: mgr,
        roles_of=ROLES.get,
        access=access or (lambda name, dag_id: None),
    )


class TestCreate:
    def test_create_lists_and_audits(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, task_id="gate", max_uses=3)
        assert (made.approver, made.dag_id, made.task_id, made.max_uses, made.uses_left) == (
            "alice",
            "release",
            "gate",
            3,
            3,
        )
        assert made.valid_from == clock.now and made.state_at(clock.now) == "active"
        assert made.to_dict(clock.now)["state"] == "active"
        assert mgr.standing.list(approver="alice") == ([made], 1)
        assert mgr.standing.list(approver="bob") == ([], 0)
        assert mgr.standing.get(made.id) == made
        event = mgr.audit.events()[-1]
        assert (event.event_type, event.request_id, event.actor) == ("standing_created", None, "alice")
        assert event.details["standing_approval_id"] == made.id
        assert event.details["terms"]["max_uses"] == 3
        assert mgr.audit.verify_audit_chain().ok

    def test_every_bad_field_named_at_once(self, mgr: ApprovalManager, clock: Clock) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.standing.create(
                actor=ALICE,
                dag_id="  ",
                task_id=7,
                valid_from=dt.datetime(2026, 1, 1),  # naive
                valid_until="friday",
                max_uses=0,
                comment="",
            )
        assert {f for f, _ in err.value.problems} == {
            "dag_id",
            "task_id",
            "valid_from",
            "valid_until",
            "max_uses",
            "comment",
        }
        assert mgr.standing.list() == ([], 0)
        assert mgr.audit.events() == []

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            pytest.param({"valid_until": -1}, "valid_until", id="window-in-the-past"),
            pytest.param({"valid_until": 31 * 24}, "valid_until", id="longer-than-max-days"),
            pytest.param({"valid_from": 48, "valid_until": 24}, "valid_until", id="ends-before-it-starts"),
            pytest.param({"max_uses": 0}, "max_uses", id="no-use"),
            pytest.param({"max_uses": True}, "max_uses", id="bool-uses"),
            pytest.param({"max_uses": 2.5}, "max_uses", id="fraction-uses"),
        ],
    )
    def test_refused(self, mgr: ApprovalManager, clock: Clock, changes: dict[str, Any], field: str) -> None:
        kw = dict(changes)
        for name in ("valid_from", "valid_until"):
            if name in kw:
                kw[name] = clock.now + dt.timedelta(hours=kw[name])
        with pytest.raises(InvalidInput) as err:
            stand(mgr, clock, **kw)
        assert err.value.field == field
        assert mgr.standing.list() == ([], 0)

    def test_the_longest_window_is_the_configured_one(self, mgr: ApprovalManager, clock: Clock) -> None:
        with pytest.raises(InvalidInput, match="at most 7 days"):
            stand(mgr, clock, valid_until=clock.now + dt.timedelta(days=8), max_days=7)
        assert stand(mgr, clock, valid_until=clock.now + dt.timedelta(days=7), max_days=7).state_at(clock.now)

    def test_a_start_in_the_past_starts_now(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, valid_from=clock.now - dt.timedelta(days=3))
        assert made.valid_from == clock.now

    def test_no_edit_access_is_refused_before_the_dag_is_looked_up(self, mgr: ApprovalManager, clock: Clock) -> None:
        looked: list[str] = []

        def known(dag_id: str) -> bool:
            looked.append(dag_id)
            return False

        with pytest.raises(NotAllowed, match="no edit access"):
            stand(mgr, clock, dag_access=lambda dag_id: f"no edit access to {dag_id}", dag_known=known)
        assert looked == []
        with pytest.raises(InvalidInput, match="no DAG 'release' is known") as err:
            stand(mgr, clock, dag_known=known)
        assert err.value.field == "dag_id"
        assert mgr.standing.list() == ([], 0)

    def test_states_over_time(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, valid_from=clock.now + dt.timedelta(hours=1))
        assert made.state_at(clock.now) == "scheduled"
        assert made.state_at(clock.now + dt.timedelta(hours=2)) == "active"
        assert made.state_at(clock.now + dt.timedelta(days=2)) == "expired"
        assert mgr.standing.list(state="scheduled")[1] == 1
        assert mgr.standing.list(state="active")[1] == 0
        with pytest.raises(InvalidInput):
            mgr.standing.list(state="asleep")


class TestRevoke:
    def test_owner_revokes_and_it_is_audited(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock)
        revoked = mgr.standing.revoke(made.id, actor=ALICE)
        assert revoked.revoked_by == "alice" and revoked.state_at(clock.now) == "revoked"
        assert mgr.standing.revoke(made.id, actor=ALICE) == revoked  # twice changes nothing
        assert [e.event_type for e in mgr.audit.events()] == ["standing_created", "standing_revoked"]
        assert mgr.standing.list(state="revoked")[1] == 1

    def test_only_the_owner_or_an_admin_revokes(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock)
        with pytest.raises(NotAllowed):
            mgr.standing.revoke(made.id, actor=BOB)
        assert mgr.standing.get(made.id).revoked_at is None
        assert mgr.standing.revoke(made.id, actor=ADMIN, admin=True).revoked_by == "root"

    def test_unknown_id(self, mgr: ApprovalManager) -> None:
        with pytest.raises(StandingNotFound) as err:
            mgr.standing.get("nope")
        assert err.value.status_code == 404
        with pytest.raises(StandingNotFound):
            mgr.standing.revoke("nope", actor=ALICE)


class TestVoting:
    def test_a_gate_opening_in_the_window_gets_the_owners_vote(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, max_uses=3)
        gate = mgr.create(spec())
        assert applier(mgr).apply(mgr) == 1
        approval = mgr.queries.get(gate.id)
        assert approval.state == "approved" and approval.decision_source == "standing"
        (vote,) = approval.votes
        assert (vote.user, vote.source, vote.comment) == ("alice", "standing", "nightly releases, approved ahead")
        assert vote.metadata["standing"] == {
            "id": made.id,
            "uses_left": 2,
            "max_uses": 3,
            "valid_until": made.valid_until.isoformat(),
        }
        assert mgr.standing.get(made.id).uses_left == 2
        assert mgr.standing.owed_to(gate.id)[0]["status"] == "used"
        vote_event = next(e for e in mgr.audit.events(gate.id) if e.event_type == "vote")
        assert vote_event.source == "standing" and vote_event.actor == "alice"
        assert mgr.audit.verify_audit_chain().ok

    def test_the_owner_is_told_by_a_notice_of_its_own(self, mgr: ApprovalManager, clock: Clock, store: Any) -> None:
        made = stand(mgr, clock)
        gate = mgr.create(spec())
        applier(mgr).apply(mgr)
        with store.session() as session:
            keys = session.scalars(
                select(ApprovalOutboxRow.dedupe_key).where(ApprovalOutboxRow.request_id == gate.id)
            ).all()
        assert f"standing_used:{made.id}:0" in keys

    def test_only_gates_of_its_dag_and_task(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock, task_id="gate")
        other_task = mgr.create(spec(task_id="review"))
        other_dag = mgr.create(spec(dag_id="billing"))
        assert applier(mgr).apply(mgr) == 0
        assert mgr.queries.get(other_task.id).votes == () and mgr.queries.get(other_dag.id).votes == ()

    def test_a_gate_already_waiting_is_not_reached_back_to(self, mgr: ApprovalManager, clock: Clock) -> None:
        gate = mgr.create(spec())
        clock.advance(seconds=1)
        stand(mgr, clock)
        assert applier(mgr).apply(mgr) == 0
        assert mgr.queries.get(gate.id).state == "pending"

    def test_outside_the_window_nothing_is_owed(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock, valid_from=clock.now + dt.timedelta(hours=1), valid_until=clock.now + dt.timedelta(hours=2))
        early = mgr.create(spec())
        clock.advance(hours=3)
        late = mgr.create(spec())
        assert applier(mgr).apply(mgr) == 0
        assert mgr.queries.get(early.id).votes == () and mgr.queries.get(late.id).votes == ()

    def test_the_owner_who_triggered_the_run_is_skipped(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock, max_uses=2)
        gate = mgr.create(spec(requested_by="alice"))
        run = applier(mgr)
        assert run.apply(mgr) == 1 and run.skipped == 1
        assert mgr.queries.get(gate.id).state == "pending"
        (owed,) = mgr.standing.owed_to(gate.id)
        assert owed["status"] == "skipped" and "triggered this run" in owed["reason"]
        assert mgr.standing.list()[0][0].uses_left == 2  # a refused vote spends nothing

    def test_not_an_allowed_approver_is_skipped(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock)
        gate = mgr.create(spec(allowed_approvers=["bob"]))
        applier(mgr).apply(mgr)
        assert mgr.queries.get(gate.id).votes == ()
        assert "not an allowed approver" in mgr.standing.owed_to(gate.id)[0]["reason"]

    def test_an_owner_without_edit_access_now_is_skipped(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock)
        gate = mgr.create(spec())
        applier(mgr, access=lambda name, dag_id: f"{name} does not have edit access").apply(mgr)
        assert mgr.queries.get(gate.id).votes == ()
        assert mgr.standing.owed_to(gate.id)[0]["reason"] == "alice does not have edit access"

    def test_an_owner_unknown_to_the_auth_manager_is_skipped(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock, actor=Principal.of("ghost", ["op"]))
        gate = mgr.create(spec())
        applier(mgr).apply(mgr)
        assert "does not know 'ghost'" in mgr.standing.owed_to(gate.id)[0]["reason"]

    def test_a_quorum_counts_it_once(self, mgr: ApprovalManager, clock: Clock) -> None:
        stand(mgr, clock)
        gate = mgr.create(spec(required_approvals=2))
        applier(mgr).apply(mgr)
        assert mgr.queries.get(gate.id).state == "pending"
        with pytest.raises(Exception, match="already voted"):
            mgr.decide(gate.id, Decision(action="approve", user=ALICE, source="api"))
        approved = mgr.decide(gate.id, Decision(action="approve", user=BOB, source="api"))
        assert approved.state == "approved" and [v.user for v in approved.votes] == ["alice", "bob"]

    def test_an_owner_who_already_voted_is_skipped(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, max_uses=1)
        gate = mgr.create(spec(required_approvals=2))
        mgr.decide(gate.id, Decision(action="approve", user=ALICE, source="api"))
        applier(mgr).apply(mgr)
        assert mgr.standing.owed_to(gate.id)[0]["status"] == "skipped"
        assert mgr.standing.get(made.id).uses_left == 1

    def test_four_eyes_across_a_run_binds_it(self, mgr: ApprovalManager, clock: Clock) -> None:
        review = mgr.create(spec(run_id="run-9", task_id="review"))
        mgr.decide(review.id, Decision(action="approve", user=ALICE, source="api"))
        stand(mgr, clock)
        deploy = mgr.create(spec(run_id="run-9", task_id="deploy", distinct_from=["review"]))
        applier(mgr).apply(mgr)
        assert mgr.queries.get(deploy.id).votes == ()
        assert "gate 'review'" in mgr.standing.owed_to(deploy.id)[0]["reason"]

    def test_uses_run_out(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, max_uses=1)
        first, second = mgr.create(spec()), mgr.create(spec())
        applier(mgr).apply(mgr)
        assert mgr.queries.get(first.id).state == "approved"
        assert mgr.queries.get(second.id).state == "pending"
        assert "no uses left" in mgr.standing.owed_to(second.id)[0]["reason"]
        assert mgr.standing.get(made.id).state_at(clock.now) == "used_up"
        third = mgr.create(spec())
        assert mgr.standing.owed_to(third.id) == []  # a used-up one is owed nothing

    def test_revoked_before_the_vote_is_cast_votes_nothing(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock)
        gate = mgr.create(spec())  # owed while it was live...
        mgr.standing.revoke(made.id, actor=ALICE)  # ...revoked before the api-server cast it
        applier(mgr).apply(mgr)
        assert mgr.queries.get(gate.id).votes == ()
        assert "was revoked" in mgr.standing.owed_to(gate.id)[0]["reason"]

    def test_an_escalation_owes_a_vote_of_its_own(self, mgr: ApprovalManager, clock: Clock) -> None:
        from airflow_hitl.policy import EscalationLevel

        stand(mgr, clock)
        gate = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=5),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("alice",), timeout=dt.timedelta(minutes=5))],
                escalation_final_action="reject",
            )
        )
        applier(mgr).apply(mgr)
        assert mgr.queries.get(gate.id).votes == ()  # not allowed at level 0
        clock.advance(minutes=6)
        assert mgr.apply_timeout(gate.id).escalated
        applier(mgr).apply(mgr)
        approval = mgr.queries.get(gate.id)
        assert approval.state == "approved" and approval.votes[0].escalation_level == 1
        assert [o["status"] for o in mgr.standing.owed_to(gate.id)] == ["skipped", "used"]

    def test_nobody_else_may_claim_the_standing_source(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock)
        gate = mgr.create(spec())
        with pytest.raises(InvalidInput, match="standing"):
            mgr.decide(gate.id, Decision(action="approve", user=BOB, source="standing"))
        with pytest.raises(InvalidInput, match="standing"):
            use = StandingUse(due_id=1, standing_id=made.id)
            mgr.decide(gate.id, Decision(action="reject", reason="no", user=ALICE, source="standing", standing=use))
        # A use owed to another request, or made up, spends nothing and is refused.
        with pytest.raises(NotAllowed, match="owes no vote"):
            use = StandingUse(due_id=10**9, standing_id=made.id)
            mgr.decide(gate.id, Decision(action="approve", user=ALICE, source="standing", standing=use))
        assert mgr.queries.get(gate.id).votes == () and mgr.standing.get(made.id).revoked_at is None


class TestRaces:
    def test_two_gates_at_once_against_one_use_left(self, mgr: ApprovalManager, clock: Clock) -> None:
        made = stand(mgr, clock, max_uses=1)
        gates = [mgr.create(spec()) for _ in range(2)]
        owed = mgr.standing.owed()
        assert len(owed) == 2
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def cast(index: int) -> None:
            one = owed[index]
            barrier.wait()
            try:
                mgr.decide(
                    one.request_id,
                    Decision(action="approve", user=ALICE, source="standing", standing=one.use),
                )
                outcomes.append("cast")
            except NotAllowed as err:
                outcomes.append(str(err))

        threads = [threading.Thread(target=cast, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes)[0] == "cast" and "no uses left" in sorted(outcomes)[1]
        assert sorted(mgr.queries.get(g.id).state for g in gates) == ["approved", "pending"]
        assert mgr.standing.get(made.id).uses_left == 0

    def test_two_appliers_cast_each_owed_vote_once(self, store: ApprovalStore, clock: Clock) -> None:
        managers = [ApprovalManager(store=store, clock=clock) for _ in range(2)]
        made = stand(managers[0], clock, max_uses=5)
        gates = [managers[0].create(spec(required_approvals=2)) for _ in range(3)]
        barrier = threading.Barrier(2)

        def run(mgr: ApprovalManager) -> None:
            barrier.wait()
            applier(mgr).apply(mgr)

        threads = [threading.Thread(target=run, args=(m,)) for m in managers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for gate in gates:
            assert [v.user for v in managers[0].queries.get(gate.id).votes] == ["alice"]
        assert managers[0].standing.get(made.id).uses_left == 2

    def test_revoke_racing_a_vote_is_one_or_the_other(self, mgr: ApprovalManager, clock: Clock) -> None:
        for _ in range(5):
            made = stand(mgr, clock)
            gate = mgr.create(spec())
            barrier = threading.Barrier(2)

            def revoke(standing_id: str = made.id, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                mgr.standing.revoke(standing_id, actor=ALICE)

            thread = threading.Thread(target=revoke)
            thread.start()
            barrier.wait()
            applier(mgr).apply(mgr)
            thread.join()
            revoked = mgr.standing.get(made.id)
            votes = mgr.queries.get(gate.id).votes
            (owed,) = mgr.standing.owed_to(gate.id)
            assert revoked.revoked_at is not None
            if votes:
                assert owed["status"] == "used" and votes[0].created_at <= revoked.revoked_at
            else:
                assert owed["status"] == "skipped" and "revoked" in owed["reason"]

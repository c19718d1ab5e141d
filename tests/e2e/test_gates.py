"""Approval gates end to end on real Airflow processes (issue 2).

Every test triggers a DAG run through Airflow's REST API as some user (the gate's
requester), watches the gate wait without a worker (parked in ``awaiting_input`` on Airflow
3.3+, deferred in the triggerer before), decides through
:class:`~airflow_hitl.manager.ApprovalManager` on the same store, and checks what Airflow
did with the run.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from airflow_hitl.exceptions import NotAllowed
from airflow_hitl.manager import ApprovalFilter
from airflow_hitl.policy import Principal
from airflow_hitl.version_compat import HAS_AWAITING_INPUT, TRIGGER_ON_KILL
from tests.e2e.harness import GATE_WAITS, AirflowHarness, HarnessError

pytestmark = pytest.mark.e2e

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
ADMIN = Principal.of("admin", ["admin"])

TRIGGER_CLASSPATH = "airflow_hitl.triggers.approval.ApprovalTrigger"


def assert_waiting_without_a_worker(
    airflow: AirflowHarness, dag_id: str, run_id: str, task_id: str, *, timeout: float = 120.0
) -> dict[str, Any]:
    """No worker slot is held: the gate is parked with no trigger (Airflow 3.3+), or deferred to our trigger."""
    ti = airflow.wait_in_triggerer(dag_id, run_id, task_id, timeout=timeout)
    assert ti["state"] == GATE_WAITS
    if HAS_AWAITING_INPUT:
        assert ti["trigger"] is None
    else:
        assert ti["trigger"]["classpath"] == TRIGGER_CLASSPATH
    return ti


class TestApprove:
    def test_approval_runs_downstream_and_run_succeeds(self, airflow: AirflowHarness) -> None:
        dag_id = "hitl_model_release"
        run_id = airflow.trigger(dag_id, user="op")
        assert airflow.dag_run(dag_id, run_id)["triggering_user_name"] == "op"

        assert_waiting_without_a_worker(airflow, dag_id, run_id, "approve_release")
        approval = airflow.wait_for_approval(dag_id, run_id, "approve_release")
        assert approval.state == "pending"
        assert approval.requested_by == "op"
        assert approval.try_number == 1
        assert approval.title == "Release churn model 1.4.0 to production"
        assert approval.context["metrics"]["accuracy"] == pytest.approx(0.962)
        assert approval.context["model"] == {"artifact": "s3://models/churn/1.4.0"}
        assert approval.metadata["model_version"] == "1.4.0"
        assert airflow.task_states(dag_id, run_id)["deploy"] in (None, "none")

        decided = airflow.manager.approve(approval.id, user=ALICE, comment="metrics look good")
        assert decided.state == "approved"

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id) == {
            "train": "success",
            "evaluate": "success",
            "approve_release": "success",
            "deploy": "success",
        }
        xcom = airflow.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/deploy/xcomEntries/return_value"
        ).json()
        assert "alice" in str(xcom["value"])


class TestReject:
    def test_rejection_fails_gate_and_run(self, airflow: AirflowHarness) -> None:
        dag_id = "hitl_model_release"
        run_id = airflow.trigger(dag_id, user="op")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "approve_release")
        approval = airflow.wait_for_approval(dag_id, run_id, "approve_release", states=["pending"])

        decided = airflow.manager.reject(approval.id, user=ALICE, reason="recall dropped on the EU segment")
        assert decided.state == "rejected"

        airflow.wait_for_run_state(dag_id, run_id, "failed")
        states = airflow.task_states(dag_id, run_id)
        assert states["approve_release"] == "failed"
        assert states["deploy"] == "upstream_failed"
        final = airflow.manager.queries.get(approval.id)
        assert (final.state, final.decided_by) == ("rejected", "alice")

    def test_rejection_with_on_reject_skip_skips_gate_and_downstream(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_skip"
        run_id = airflow.trigger(dag_id, user="op")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "gate")
        approval = airflow.wait_for_approval(dag_id, run_id, "gate", states=["pending"])

        airflow.manager.reject(approval.id, user=ALICE, reason="not this week")

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id) == {"gate": "skipped", "after": "skipped"}
        assert airflow.manager.queries.get(approval.id).state == "rejected"


class TestTimeout:
    @pytest.mark.parametrize(
        ("action", "run_state", "after_state", "decision"),
        [
            pytest.param("approve", "success", "success", "approved", id="approve"),
            pytest.param("reject", "failed", "upstream_failed", "rejected", id="reject"),
        ],
    )
    def test_unanswered_gate_takes_its_timeout_action(
        self, airflow: AirflowHarness, action: str, run_state: str, after_state: str, decision: str
    ) -> None:
        dag_id = f"e2e_timeout_{action}"
        run_id = airflow.trigger(dag_id, user="op")
        approval = airflow.wait_for_approval(dag_id, run_id, "gate")
        assert approval.timeout_action == action
        assert approval.expires_at is not None

        airflow.wait_for_run_state(dag_id, run_id, run_state, timeout=120)
        states = airflow.task_states(dag_id, run_id)
        assert states["gate"] == ("success" if action == "approve" else "failed")
        assert states["after"] == after_state
        final = airflow.manager.queries.get(approval.id)
        assert final.state == "timeout"
        assert final.decision == decision
        assert final.decision_source == "timeout"
        assert final.decided_at is not None and final.decided_at >= approval.expires_at
        assert final.votes == ()


class TestEscalation:
    def test_escalates_then_the_escalation_approver_approves(self, airflow: AirflowHarness) -> None:
        dag_id, task_id = "hitl_escalation", "approve_hotfix"
        run_id = airflow.trigger(dag_id, user="op")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, task_id)
        first = airflow.wait_for_approval(dag_id, run_id, task_id)
        assert first.state == "pending"
        assert first.escalation_level == 0
        assert first.allowed_approvers == ("bob",)
        # Before escalation the admin is not one of the approvers.
        with pytest.raises(NotAllowed):
            airflow.manager.approve(first.id, user=ADMIN)

        escalated = airflow.wait_for_approval(dag_id, run_id, task_id, states=["escalated"], timeout=90)
        assert escalated.id == first.id
        assert escalated.escalation_level == 1
        assert escalated.allowed_approvers == ("bob", "admin")
        assert escalated.expires_at is not None
        assert escalated.expires_at - dt.datetime.now(dt.timezone.utc) > dt.timedelta(minutes=8)
        assert [e.event_type for e in airflow.manager.audit.events(first.id)][:2] == ["requested", "escalated"]

        # Still waiting after the escalation: same try, same request.
        ti = airflow.wait_for_ti_state(dag_id, run_id, task_id, GATE_WAITS)
        assert ti["try_number"] == 1
        decided = airflow.manager.approve(first.id, user=ADMIN, comment="approved after escalation")
        assert decided.state == "approved"

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id) == {task_id: "success", "migrate": "success"}
        final = airflow.manager.queries.get(first.id)
        assert (final.state, final.decided_by, final.escalation_level) == ("approved", "admin", 1)
        assert [(v.user, v.escalation_level) for v in final.votes] == [("admin", 1)]
        assert len(airflow.approvals(dag_id, run_id, task_id)) == 1


class TestQuorum:
    def test_two_of_three_first_approval_keeps_waiting_second_completes(self, airflow: AirflowHarness) -> None:
        dag_id, task_id = "hitl_quorum", "approve_load"
        run_id = airflow.trigger(dag_id, user="admin")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, task_id)
        approval = airflow.wait_for_approval(dag_id, run_id, task_id)
        assert approval.required_approvals == 2
        assert set(approval.allowed_approvers) == {"alice", "bob", "carol"}

        after_one = airflow.manager.approve(approval.id, user=ALICE)
        assert after_one.state == "pending"
        assert [v.user for v in after_one.votes] == ["alice"]
        # Several poll intervals later the gate is still waiting.
        time.sleep(4 * airflow.poll_interval + 2)
        assert_waiting_without_a_worker(airflow, dag_id, run_id, task_id)
        assert airflow.dag_run(dag_id, run_id)["state"] == "running"
        assert airflow.task_states(dag_id, run_id)["load"] in (None, "none")

        after_two = airflow.manager.approve(approval.id, user=BOB)
        assert after_two.state == "approved"

        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert airflow.task_states(dag_id, run_id) == {task_id: "success", "load": "success"}
        assert sorted(v.user for v in airflow.manager.queries.get(approval.id).votes) == ["alice", "bob"]


class TestSelfApproval:
    def test_requester_cannot_approve_own_run_another_user_can(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="alice")
        assert airflow.dag_run(dag_id, run_id)["triggering_user_name"] == "alice"
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "gate")
        approval = airflow.wait_for_approval(dag_id, run_id, "gate")
        assert approval.requested_by == "alice"
        assert approval.allow_self_approval is False

        with pytest.raises(NotAllowed, match="triggered this run"):
            airflow.manager.approve(approval.id, user=ALICE)
        assert airflow.manager.queries.get(approval.id).state == "pending"
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "gate")

        airflow.manager.approve(approval.id, user=BOB)
        airflow.wait_for_run_state(dag_id, run_id, "success")
        final = airflow.manager.queries.get(approval.id)
        assert (final.state, final.decided_by) == ("approved", "bob")
        assert [v.user for v in final.votes] == ["bob"]


class TestClearWaitingGate:
    def test_clearing_a_waiting_gate_cancels_its_request(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "gate")
        first = airflow.wait_for_approval(dag_id, run_id, "gate", try_number=1, states=["pending"])

        airflow.clear_task(dag_id, run_id, "gate")

        cancelled = airflow.wait_for_approval(dag_id, run_id, "gate", try_number=1, states=["cancelled"], timeout=90)
        assert cancelled.id == first.id
        assert cancelled.decision is None
        # Whichever comes first cancels it: the triggerer's on_kill() or, for a parked gate, the
        # api-server's pass over parked gates (source "airflow"), or the new try, whose request
        # supersedes the old one (source "system"). They race on purpose.
        assert cancelled.decision_source in ("airflow", "system"), cancelled.comment
        second = airflow.wait_for_approval(dag_id, run_id, "gate", try_number=2, timeout=120)
        assert second.id != first.id
        assert second.state == "pending"
        ti = airflow.wait_for_ti_state(dag_id, run_id, "gate", GATE_WAITS)
        assert ti["try_number"] == 2
        waiting, _ = airflow.manager.queries.pending(ApprovalFilter(dag_id=dag_id, run_id=run_id))
        assert [a.id for a in waiting] == [second.id]  # no orphan pending request

        airflow.manager.approve(second.id, user=ALICE)
        airflow.wait_for_run_state(dag_id, run_id, "success")
        assert [a.state for a in airflow.approvals(dag_id, run_id, "gate")] == ["cancelled", "approved"]


class TestMarkWaitingGate:
    @pytest.mark.parametrize("new_state", ["failed", "success"])
    def test_marking_a_waiting_gate_cancels_its_request(self, airflow: AirflowHarness, new_state: str) -> None:
        # No new try follows a mark, so only the trigger's on_kill() (or, for a parked gate, the
        # api-server's pass over parked gates, every 30 s) can cancel the request here.
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")
        assert_waiting_without_a_worker(airflow, dag_id, run_id, "gate")
        request = airflow.wait_for_approval(dag_id, run_id, "gate", try_number=1, states=["pending"])

        airflow.api(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/gate",
            json_body={"new_state": new_state},
        )
        if not TRIGGER_ON_KILL:
            # Triggerers before Airflow 3.3 never call on_kill(): the request stays pending until
            # someone cancels it (README, "Airflow versions"); nothing else can touch it here.
            assert airflow.task_instance(dag_id, run_id, "gate")["state"] == new_state
            assert airflow.manager.queries.get(request.id).state == "pending"
            airflow.manager.cancel(request.id, actor="admin", reason="task marked on Airflow < 3.3")
            return

        cancelled = airflow.wait_for_approval(dag_id, run_id, "gate", try_number=1, states=["cancelled"], timeout=90)
        assert cancelled.id == request.id
        assert cancelled.decision_source == "airflow"
        assert airflow.task_instance(dag_id, run_id, "gate")["state"] == new_state
        waiting, _ = airflow.manager.queries.pending(ApprovalFilter(dag_id=dag_id, run_id=run_id))
        assert waiting == []


class TestInstantDecision:
    RUNS = 10

    def test_decision_right_after_the_gate_opens_is_never_lost(self, airflow: AirflowHarness) -> None:
        dag_id = "e2e_instant"
        run_ids = [airflow.trigger(dag_id, user="admin", unpause=i == 0) for i in range(self.RUNS)]
        approved: dict[str, str] = {}  # run_id -> request id
        deadline = time.monotonic() + 240
        while len(approved) < self.RUNS:
            if time.monotonic() > deadline:
                raise HarnessError(f"only {len(approved)} of {self.RUNS} gates opened\n{airflow.dump_logs()}")
            waiting, _ = airflow.manager.queries.pending(ApprovalFilter(dag_id=dag_id))
            for approval in waiting:
                if approval.run_id in run_ids and approval.run_id not in approved:
                    airflow.manager.approve(approval.id, user=ALICE, comment="instant")
                    approved[str(approval.run_id)] = approval.id
            time.sleep(0.02)

        for run_id in run_ids:
            airflow.wait_for_run_state(dag_id, run_id, "success", timeout=240)
            assert airflow.task_states(dag_id, run_id) == {"gate": "success", "after": "success"}
            requests = airflow.approvals(dag_id, run_id, "gate")
            assert [(a.id, a.state) for a in requests] == [(approved[run_id], "approved")]

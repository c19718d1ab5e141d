"""gate_ends.py: the one claim to end a closed gate's task, on real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest

from airflow_hitl.gate_ends import CLOSER_COMMIT_WITHIN, TAKE_OVER_AFTER, claimant
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice")


def closed(manager: ApprovalManager) -> str:
    approval = manager.create(spec())
    return manager.reject(approval.id, user=ALICE, reason="no").id


class TestClaim:
    def test_the_first_claimant_holds_it_and_asking_again_keeps_it(self, manager: ApprovalManager) -> None:
        request_id = closed(manager)
        assert manager.gate_ends.gate_ended_by(request_id) is None
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@a") is True
        assert manager.gate_ends.claim_gate_end(request_id, by="trigger@b") is False
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@a") is True
        assert manager.gate_ends.gate_ended_by(request_id) == "api-server@a"

    def test_a_waiting_or_unknown_request_cannot_be_claimed(self, manager: ApprovalManager) -> None:
        waiting = manager.create(spec())
        assert manager.gate_ends.claim_gate_end(waiting.id, by="trigger@a") is False
        assert manager.gate_ends.claim_gate_end("00000000-0000-4000-8000-000000000000", by="trigger@a") is False
        assert manager.gate_ends.gate_ended_by(waiting.id) is None

    @pytest.mark.parametrize("close", ["approve", "cancel", "timeout"])
    def test_every_way_a_request_closes_can_be_claimed(self, mgr: ApprovalManager, clock: Clock, close: str) -> None:
        approval = mgr.create(spec(timeout=dt.timedelta(minutes=5), timeout_action="reject"))
        if close == "approve":
            mgr.approve(approval.id, user=ALICE)
        elif close == "cancel":
            mgr.cancel(approval.id, actor="ops", reason="withdrawn")
        else:
            clock.advance(minutes=6)
            assert mgr.apply_timeout(approval.id).applied
        assert mgr.gate_ends.claim_gate_end(approval.id, by="trigger@a") is True

    def test_a_released_claim_is_free_and_only_its_holder_releases_it(self, manager: ApprovalManager) -> None:
        request_id = closed(manager)
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@a")
        manager.gate_ends.release_gate_end(request_id, by="trigger@b")  # not the holder: nothing
        assert manager.gate_ends.gate_ended_by(request_id) == "api-server@a"
        manager.gate_ends.release_gate_end(request_id, by="api-server@a")
        assert manager.gate_ends.gate_ended_by(request_id) is None
        assert manager.gate_ends.claim_gate_end(request_id, by="trigger@b") is True

    def test_a_claim_is_taken_over_only_past_the_given_age(self, store: ApprovalStore, clock: Clock) -> None:
        manager = ApprovalManager(store=store, clock=clock)
        request_id = closed(manager)
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@dead")
        clock.advance(seconds=TAKE_OVER_AFTER.total_seconds() - 1)
        assert manager.gate_ends.claim_gate_end(request_id, by="trigger@b", take_over_after=TAKE_OVER_AFTER) is False
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@other") is False, "only with take_over_after"
        clock.advance(seconds=2)
        assert manager.gate_ends.claim_gate_end(request_id, by="api-server@other") is False
        assert manager.gate_ends.claim_gate_end(request_id, by="trigger@b", take_over_after=TAKE_OVER_AFTER) is True
        assert manager.gate_ends.gate_ended_by(request_id) == "trigger@b"

    def test_the_closer_commits_well_inside_the_take_over_age(self) -> None:
        assert CLOSER_COMMIT_WITHIN * 2 <= TAKE_OVER_AFTER

    def test_claimants_are_named_by_party_and_unique(self) -> None:
        names = {claimant("trigger") for _ in range(100)}
        assert len(names) == 100
        assert all(n.startswith("trigger@") and len(n) <= 250 for n in names)


@pytest.mark.postgres
class TestConcurrentClaims:
    THREADS = 16
    REQUESTS = 20

    def test_of_many_threads_claiming_each_request_at_once_exactly_one_wins(self, pg_store: ApprovalStore) -> None:
        manager = ApprovalManager(store=pg_store)
        request_ids = [closed(manager) for _ in range(self.REQUESTS)]
        wins: Counter[str] = Counter()
        winners: dict[str, list[str]] = {i: [] for i in request_ids}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def claim_all(name: str, barrier: threading.Barrier) -> None:
            try:
                for request_id in request_ids:
                    barrier.wait(30)  # every thread asks for the same request at the same moment
                    # Half of them as a trigger that may take an old claim over: none is old here.
                    over = TAKE_OVER_AFTER if name.startswith("trigger") else None
                    if manager.gate_ends.claim_gate_end(request_id, by=name, take_over_after=over):
                        with lock:
                            wins[name] += 1
                            winners[request_id].append(name)
            except BaseException as err:
                errors.append(err)
                barrier.abort()

        barrier = threading.Barrier(self.THREADS)
        names = [claimant("trigger" if i % 2 else "api-server") for i in range(self.THREADS)]
        threads = [threading.Thread(target=claim_all, args=(name, barrier)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert {i: len(w) for i, w in winners.items()} == dict.fromkeys(request_ids, 1)
        assert {i: manager.gate_ends.gate_ended_by(i) for i in request_ids} == {i: w[0] for i, w in winners.items()}

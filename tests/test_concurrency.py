"""Races on PostgreSQL: 50 threads approve, reject and time out the same requests at once.

Whatever the interleaving, each request must end with exactly one outcome, every vote
that was acknowledged to its caller must be in the store (and no other), and the outcome
must agree with the votes.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from airflow_hitl.exceptions import ApprovalConflict
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalVoteRow
from airflow_hitl.policy import Principal
from tests.helpers import spec

THREADS = 50
ROUNDS = 200
TERMINAL_EVENTS = {"approved", "rejected", "timeout", "cancelled"}


def _decision_latency_ms(manager: ApprovalManager) -> float:
    """Median time of one vote here and now, so expiry can be set in units of it."""
    approval = manager.create(spec(required_approvals=50))
    took = []
    for i in range(15):
        started = time.perf_counter()
        manager.approve(approval.id, user=Principal.of(f"calibration{i}"))
        took.append((time.perf_counter() - started) * 1000)
    manager.cancel(approval.id, actor="test", reason="calibration done")
    return max(sorted(took)[len(took) // 2], 2.0)


def _act(
    i: int,
    role: str,
    delay: float,
    *,
    manager: ApprovalManager,
    request_id: str,
    barrier: threading.Barrier,
    lock: threading.Lock,
    acknowledged: list[tuple[str, str]],
) -> None:
    """One racer: wait for all, then approve, reject or apply the timeout; note what was acknowledged."""
    barrier.wait()
    time.sleep(delay)
    user = Principal.of(f"user{i}")
    try:
        if role == "approve":
            manager.approve(request_id, user=user)
        elif role == "reject":
            manager.reject(request_id, user=user, reason="race")
        else:
            manager.apply_timeout(request_id)
            return
    except ApprovalConflict:
        return
    with lock:
        acknowledged.append((user.name, role))


@pytest.mark.postgres
@pytest.mark.slow
class TestRaces:
    def test_fifty_threads_two_hundred_rounds(self, pg_store: ApprovalStore) -> None:
        manager = ApprovalManager(store=pg_store)
        rng = random.Random(20261123)
        unit_ms = _decision_latency_ms(manager)
        outcomes: Counter[str] = Counter()
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for round_no in range(ROUNDS):
                required = rng.randint(1, 12)
                # Expiry lands among the votes whatever the machine's speed: 2 to 25 decisions' time.
                timeout_ms = rng.uniform(2, 25) * unit_ms
                approval = manager.create(
                    spec(
                        required_approvals=required,
                        timeout=dt.timedelta(milliseconds=timeout_ms),
                        timeout_action=rng.choice(["approve", "reject"]),
                    )
                )
                roles = ["approve"] * 40 + ["reject"] * 4 + ["timeout"] * 6
                rng.shuffle(roles)
                delays = [rng.uniform(0, timeout_ms / 1000) for _ in roles]
                barrier = threading.Barrier(THREADS)
                acknowledged: list[tuple[str, str]] = []
                lock = threading.Lock()

                act = functools.partial(
                    _act,
                    manager=manager,
                    request_id=approval.id,
                    barrier=barrier,
                    lock=lock,
                    acknowledged=acknowledged,
                )
                list(pool.map(act, range(THREADS), roles, delays))
                # Whoever is left waiting is timed out now, as the trigger would.
                time.sleep(timeout_ms / 1000)
                manager.apply_timeout(approval.id)

                final = manager.queries.get(approval.id)
                outcomes[final.state] += 1
                events = manager.audit.events(approval.id)
                terminal = [e for e in events if e.event_type in TERMINAL_EVENTS]
                assert len(terminal) == 1, f"round {round_no}: {[e.event_type for e in events]}"
                with pg_store.session() as s:
                    stored = {
                        (v.user, v.vote)
                        for v in s.scalars(select(ApprovalVoteRow).where(ApprovalVoteRow.request_id == approval.id))
                    }
                assert stored == set(acknowledged), f"round {round_no}: votes lost or invented"
                assert len([e for e in events if e.event_type == "vote"]) == len(stored)
                approvals = sum(1 for _, v in stored if v == "approve")
                rejections = sum(1 for _, v in stored if v == "reject")
                if final.state == "approved":
                    assert rejections == 0
                    assert approvals == required
                elif final.state == "rejected":
                    assert rejections == 1
                    assert approvals < required
                else:
                    assert final.state == "timeout"
                    assert rejections == 0
                    assert approvals < required
        assert manager.audit.verify_audit_chain().ok
        # The mix of delays must actually exercise every outcome, or the test proves little.
        assert set(outcomes) == {"approved", "rejected", "timeout"}, outcomes

"""The shared poller of :mod:`airflow_hitl.triggers.poller`, in a real event loop against a real store.

One poller per event loop and store reads every watched request in one query per interval,
reads a newly watched (or, on PostgreSQL, a NOTIFY-announced) id at once, hands each watch
the newest state, survives a store outage without deciding anything, and stops when nobody
watches any more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import text

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from airflow_hitl.records import WaitState
from airflow_hitl.triggers.approval import ApprovalTrigger
from airflow_hitl.triggers.poller import ApprovalPoller, Watch, shared_poller
from tests.helpers import first_event, spec

ALICE = Principal.of("alice")


class TestStoreOutage:
    def test_outage_delays_but_never_decides(self, manager: ApprovalManager, store: ApprovalStore) -> None:
        approval = manager.create(spec(timeout=dt.timedelta(minutes=5), timeout_action="approve"))

        async def main() -> dict[str, Any]:
            trigger = ApprovalTrigger(request_id=approval.id, poll_interval=0.2)
            waiting = asyncio.create_task(first_event(trigger, timeout=60))
            await asyncio.sleep(0.6)
            poller = shared_poller(manager, poll_interval=0.2)
            # The store "goes away": every read now fails.
            await asyncio.to_thread(_rename, store, "approval_requests", "approval_requests_away")
            errors_before = poller.errors
            deadline = time.monotonic() + 15
            while poller.errors == errors_before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert poller.errors > errors_before
            assert not waiting.done()
            await asyncio.to_thread(_rename, store, "approval_requests_away", "approval_requests")
            await asyncio.to_thread(manager.approve, approval.id, user=ALICE)
            return await waiting

        payload = asyncio.run(main())
        assert payload["state"] == "approved"
        assert manager.queries.get(approval.id).decision_source == "api"


def _rename(store: ApprovalStore, old: str, new: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


class TestPoller:
    @staticmethod
    def _count_queries(manager: ApprovalManager, n: int, seconds: float) -> int:
        ids = [manager.create(spec()).id for _ in range(n)]

        async def main() -> int:
            waits = [
                asyncio.create_task(first_event(ApprovalTrigger(request_id=i, poll_interval=0.5), 60)) for i in ids
            ]
            await asyncio.sleep(1.2)  # every trigger registered and read once
            poller = shared_poller(manager, poll_interval=0.5)
            start = poller.queries
            await asyncio.sleep(seconds)
            counted = poller.queries - start
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            return counted

        return asyncio.run(main())

    def test_idle_queries_do_not_grow_with_waiting_gates(self, manager: ApprovalManager) -> None:
        few = self._count_queries(manager, 3, 3.0)
        many = self._count_queries(manager, 300, 3.0)
        # One query per 0.5 s interval whatever the number of gates: about 6 in 3 s.
        assert 3 <= few <= 8
        assert 3 <= many <= 8

    @pytest.mark.postgres
    def test_notify_wakes_before_the_next_poll(self, pg_store: ApprovalStore, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_HITL_STORE_URL", pg_store.url)
        manager = ApprovalManager(store=pg_store)
        approval = manager.create(spec())

        async def main() -> tuple[dict[str, Any], float]:
            waiting = asyncio.create_task(first_event(ApprovalTrigger(request_id=approval.id, poll_interval=120), 60))
            await asyncio.sleep(1.5)  # registered, first read done, LISTEN connected
            started = time.monotonic()
            await asyncio.to_thread(manager.approve, approval.id, user=ALICE)
            payload = await waiting
            return payload, time.monotonic() - started

        payload, waited = asyncio.run(main())
        assert payload["state"] == "approved"
        # With a 120 s poll interval only the NOTIFY can have woken it this soon.
        assert waited < 60


def _state(state: str = "pending", level: int = 0) -> WaitState:
    return WaitState(id="r1", state=state, expires_at=None, escalation_level=level)


async def _turns(n: int = 5) -> None:
    # Let the loop run the tasks an Event.set() woke; no clock involved.
    for _ in range(n):
        await asyncio.sleep(0)


class TestWatch:
    """One trigger's view of its request: woken only by news, never by an older read."""

    def test_a_change_wakes_the_waiter_and_the_same_state_does_not(self) -> None:
        async def main() -> None:
            watch = Watch(request_id="r1")
            waiter = asyncio.create_task(watch.wait(None))
            await _turns()
            watch.update(_state(), read_seq=1)
            await asyncio.wait_for(waiter, 30)
            assert watch.state == _state()
            waiter = asyncio.create_task(watch.wait(None))
            watch.update(_state(), read_seq=2)
            await _turns()
            assert not waiter.done(), "the same state again is no news"
            watch.update(_state("escalated", level=1), read_seq=3)
            await asyncio.wait_for(waiter, 30)
            assert watch.state == _state("escalated", level=1)

        asyncio.run(main())

    def test_a_read_started_before_the_applied_one_is_ignored(self) -> None:
        watch = Watch(request_id="r1")
        watch.update(_state("approved"), read_seq=5)
        watch.update(_state("pending"), read_seq=4)
        assert watch.state == _state("approved")
        watch.update(None, read_seq=3)
        assert watch.missing is False

    def test_a_row_gone_is_missing_and_wakes(self) -> None:
        async def main() -> None:
            watch = Watch(request_id="r1")
            watch.update(_state(), read_seq=1)
            waiter = asyncio.create_task(watch.wait(None))
            watch.update(None, read_seq=2)
            await asyncio.wait_for(waiter, 30)
            assert watch.missing is True
            assert watch.state == _state(), "the last state seen is kept"

        asyncio.run(main())


class TestSubscriptions:
    def test_a_new_watch_is_read_at_once_not_at_the_next_poll(self, manager: ApprovalManager) -> None:
        gate = manager.create(spec())
        gone = "00000000-0000-4000-8000-000000000000"

        async def main() -> tuple[Watch, Watch, int]:
            # A two-minute interval: only the targeted first read can answer within the test (and
            # no LISTEN, whose connecting would read the watched ids once more).
            poller = ApprovalPoller(manager=manager, poll_interval=120, listen=False)
            watch, missing = poller.watch(gate.id), poller.watch(gone)
            await asyncio.wait_for(watch.wait(None), 30)
            while not missing.missing:
                await asyncio.wait_for(missing.wait(None), 30)
            queries = poller.queries
            poller.stop()
            return watch, missing, queries

        watch, missing, queries = asyncio.run(main())
        assert watch.state is not None and (watch.state.id, watch.state.state) == (gate.id, "pending")
        assert missing.missing and missing.state is None
        assert queries == 1, "two ids watched together share one read"

    def test_every_watch_of_a_request_hears_the_decision(self, manager: ApprovalManager) -> None:
        gate = manager.create(spec())
        other = manager.create(spec())

        async def main() -> tuple[WaitState | None, WaitState | None, WaitState | None]:
            poller = ApprovalPoller(manager=manager, poll_interval=0.2)
            first, second, bystander = poller.watch(gate.id), poller.watch(gate.id), poller.watch(other.id)
            assert poller.watched == 2
            await asyncio.wait_for(first.wait(None), 30)
            await asyncio.to_thread(manager.approve, gate.id, user=ALICE)
            for watch in (first, second):
                while watch.state is None or watch.state.state != "approved":
                    await asyncio.wait_for(watch.wait(None), 30)
            poller.stop()
            return first.state, second.state, bystander.state

        first, second, bystander = asyncio.run(main())
        assert first == second and first is not None and first.state == "approved"
        assert bystander is not None and bystander.state == "pending"

    def test_the_last_unwatch_stops_it_and_says_so(self, manager: ApprovalManager) -> None:
        gate = manager.create(spec())
        emptied: list[ApprovalPoller] = []

        async def main() -> ApprovalPoller:
            poller = ApprovalPoller(manager=manager, poll_interval=0.2, on_empty=emptied.append)
            first, second = poller.watch(gate.id), poller.watch(gate.id)
            await asyncio.wait_for(first.wait(None), 30)
            poller.unwatch(first)
            assert (poller.watched, emptied) == (1, []), "one watch of the request is left"
            poller.unwatch(second)
            assert poller.watched == 0
            return poller

        poller = asyncio.run(main())
        assert emptied == [poller]

    def test_it_listens_only_on_postgresql(self, manager: ApprovalManager) -> None:
        assert ApprovalPoller(manager=manager, poll_interval=1).listen is manager.store.is_postgres
        assert ApprovalPoller(manager=manager, poll_interval=1, listen=False).listen is False


class TestSharedPoller:
    def test_one_per_event_loop_and_store_until_it_empties(self, manager: ApprovalManager) -> None:
        gate = manager.create(spec())

        async def main() -> tuple[ApprovalPoller, ApprovalPoller, ApprovalPoller]:
            first = shared_poller(manager, poll_interval=0.2)
            assert shared_poller(manager, poll_interval=5) is first
            watch = first.watch(gate.id)
            await asyncio.wait_for(watch.wait(None), 30)
            first.unwatch(watch)
            # Emptied, it was forgotten: the next trigger gets a fresh one.
            return first, shared_poller(manager, poll_interval=0.2), shared_poller(manager, poll_interval=0.2)

        async def one() -> ApprovalPoller:
            return shared_poller(manager, poll_interval=0.2)

        # Both loops stay alive until the end, so neither can take the other's id.
        loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
        try:
            first, renewed, again = loops[0].run_until_complete(main())
            elsewhere = loops[1].run_until_complete(one())
        finally:
            for loop in loops:
                # As asyncio.run ends: cancel what is left (the stopped poller's tasks), then close.
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                loop.close()
        assert renewed is not first
        assert again is renewed
        assert elsewhere is not renewed
        # Never started, so never emptied: stopping forgets them (no later test inherits one).
        renewed.stop()
        elsewhere.stop()

    def test_another_store_has_its_own(self, manager: ApprovalManager, tmp_path: Any) -> None:
        other = ApprovalManager(store=ApprovalStore(url=f"sqlite:///{tmp_path / 'other.db'}"))

        async def main() -> tuple[ApprovalPoller, ApprovalPoller]:
            return shared_poller(manager, poll_interval=1), shared_poller(other, poll_interval=1)

        try:
            ours, theirs = asyncio.run(main())
            assert ours is not theirs
            assert (ours.manager, theirs.manager) == (manager, other)
            ours.stop()
            theirs.stop()
        finally:
            other.store.dispose()

"""transaction: one write transaction, its row lock, its sealed audit events, NOTIFYs and metrics.

``StoreTransactions`` is the plumbing of the manager's writes; the tests drive it as
``manager.transactions`` of an :class:`ApprovalManager`, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from airflow_hitl.audit import GENESIS_HASH, AuditKey, event_hash
from airflow_hitl.exceptions import ApprovalNotFound, NotAllowed, StoreError, StoreOutcomeUnknown, StoreUnavailable
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import NOTIFY_CHANNEL, OUTBOX_CHANNEL, ApprovalStore
from airflow_hitl.models.tables import ApprovalEventRow
from airflow_hitl.outbox import listen_conninfo
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Vote
from tests.conftest import PG_ADMIN_URL
from tests.helpers import Clock, spec

Kill = Callable[[int], None]
"""Terminates a PostgreSQL backend by its process id."""

ALICE = Principal.of("alice", ["op"])


def chain(store: ApprovalStore) -> list[ApprovalEventRow]:
    """Every audit event, in sequence order."""
    with store.session() as session:
        return list(session.scalars(select(ApprovalEventRow).order_by(ApprovalEventRow.seq)))


def audit(mgr: ApprovalManager, session: Session, request_id: str, event_type: str, **details: object) -> None:
    """Queue one audit event in ``session`` (as a transition does)."""
    mgr.transactions.audit(
        session,
        request_id=request_id,
        event_type=event_type,
        actor="tester",
        source="api",
        at=mgr._clock(),
        details=details,
    )


class TestCountWaiting:
    def test_pending_and_escalated_only(self, mgr: ApprovalManager, clock: Clock) -> None:
        assert mgr.transactions.count_waiting() == 0
        mgr.create(spec())
        escalating = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=1))],
                escalation_final_action="reject",
            )
        )
        mgr.approve(mgr.create(spec()).id, user=ALICE)
        clock.advance(minutes=1)
        assert mgr.apply_timeout(escalating.id).escalated
        assert mgr.transactions.count_waiting() == 2


class TestSeal:
    def test_events_of_one_transaction_extend_the_chain_in_order(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        tail = chain(mgr.store)[-1].hash
        with mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
            for n in range(3):
                audit(mgr, session, a.id, "note", n=n, at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        events = chain(mgr.store)[-3:]
        assert [e.details["n"] for e in events] == [0, 1, 2]
        # Each links to the one before; the first to the chain's tail before this transaction.
        assert [e.prev_hash for e in events] == [tail, events[0].hash, events[1].hash]
        assert events[0].details["at"] == "2026-01-01T00:00:00+00:00"  # stored as JSON reads it back
        assert mgr.audit.verify_audit_chain().ok

    def test_a_keyed_writer_links_each_event_by_hmac_and_records_the_key_id(self, store: ApprovalStore) -> None:
        keyed = ApprovalManager(store=store, audit_key="a key")
        key = AuditKey.of("a key")
        assert key is not None
        keyed.create(spec())
        (event,) = chain(store)
        fields = {name: getattr(event, name) for name in ("request_id", "event_type", "actor", "source", "comment")}
        fields.update(prev_hash=GENESIS_HASH, details=event.details, created_at=event.created_at)
        assert event.key_id == key.key_id
        assert event.hash == event_hash(**fields, key=key) != event_hash(**fields)

    def test_a_refused_seal_rolls_back_the_whole_transaction(self, store: ApprovalStore) -> None:
        keyed = ApprovalManager(store=store, audit_key="a key")
        a = keyed.create(spec())
        with pytest.raises(StoreError, match="audit_key"):
            ApprovalManager(store=store, audit_key="").cancel(a.id, actor="admin", reason="stop")
        assert keyed.queries.get(a.id).state == "pending" and len(chain(store)) == 1

    def test_a_rolled_back_transaction_leaves_no_trace(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        before = len(chain(mgr.store))
        counted: list[str] = []
        with pytest.raises(RuntimeError, match="changed my mind"), mgr.transactions.transaction() as session:
            row, _ = mgr.transactions.lock(session, a.id)
            row.state = "cancelled"
            audit(mgr, session, a.id, "cancelled")
            mgr.transactions.measure(session, lambda: counted.append("cancelled"))
            raise RuntimeError("changed my mind")
        assert mgr.queries.get(a.id).state == "pending"
        assert len(chain(mgr.store)) == before
        assert counted == []
        # Nothing queued in the lost transaction leaks into the next one.
        with mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
        assert len(chain(mgr.store)) == before

    def test_metrics_are_sent_once_the_change_is_committed(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        seen: list[str] = []
        with mgr.transactions.transaction() as session:
            row, _ = mgr.transactions.lock(session, a.id)
            row.state = "cancelled"
            # Read from another session: only a committed change is visible there.
            mgr.transactions.measure(session, lambda: seen.append(mgr.queries.get(a.id).state))
        assert seen == ["cancelled"]


class TestCast:
    def test_a_vote_is_stored_with_the_digest_it_was_cast_on(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        vote = Vote(
            user="alice",
            vote="approve",
            comment=None,
            reason=None,
            source="api",
            escalation_level=0,
            created_at=mgr._clock(),
            content_digest="ab" * 32,
        )
        with mgr.transactions.transaction() as session:
            row, _ = mgr.transactions.lock(session, a.id)
            mgr.transactions.cast(session, row, vote)
        assert mgr.queries.get(a.id).votes == (vote,)


class TestLock:
    def test_unknown_request(self, mgr: ApprovalManager) -> None:
        with pytest.raises(ApprovalNotFound), mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, "00000000-0000-4000-8000-000000000000")

    def test_the_channels_dag_access_is_asked_with_the_rows_dag(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(dag_id="payroll"))
        asked: list[str] = []

        def refuse(dag_id: str) -> str | None:
            asked.append(dag_id)
            return f"you may not edit {dag_id}"

        with pytest.raises(NotAllowed) as err, mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id, dag_access=refuse)
        assert asked == ["payroll"]
        assert err.value.reason == "you may not edit payroll"
        with mgr.transactions.transaction() as session:
            assert mgr.transactions.lock(session, a.id, dag_access=lambda dag_id: None)[0].dag_id == "payroll"


class TestStoreLost:
    def test_an_unreachable_store_is_unavailable(self) -> None:
        # Port 1 on loopback: nothing listens, the connection is refused at once.
        store = ApprovalStore(url="postgresql+psycopg://postgres@127.0.0.1:1/test")
        try:
            with pytest.raises(StoreUnavailable) as err:
                ApprovalManager(store=store).cancel("00000000-0000-4000-8000-000000000000", actor="a", reason="r")
            assert type(err.value) is StoreUnavailable
        finally:
            store.dispose()

    @pytest.fixture
    def kill(self, pg_store: ApprovalStore) -> Iterator[Kill]:
        """Terminates a backend of the test store, waiting until it has gone."""
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

        def terminate(pid: int) -> None:
            with admin.connect() as conn:
                assert conn.scalar(text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": pid})

        yield terminate
        admin.dispose()

    def test_lost_before_commit_is_unavailable(self, pg_store: ApprovalStore, kill: Kill) -> None:
        mgr = ApprovalManager(store=pg_store)
        a = mgr.create(spec())
        with pytest.raises(StoreUnavailable) as err, mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
            audit(mgr, session, a.id, "note")  # sealing it needs the server before COMMIT
            kill(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        assert type(err.value) is StoreUnavailable
        assert mgr.queries.get(a.id).state == "pending"

    def test_lost_while_committing_is_outcome_unknown(self, pg_store: ApprovalStore, kill: Kill) -> None:
        mgr = ApprovalManager(store=pg_store)
        a = mgr.create(spec())
        with pytest.raises(StoreOutcomeUnknown), mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
            # Nothing to seal: the next word to the server is COMMIT.
            kill(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


class TestNotify:
    def test_wake_ups_are_delivered_once_each_and_only_when_committed(self, pg_store: ApprovalStore) -> None:
        mgr = ApprovalManager(store=pg_store)
        a, b, c = (mgr.create(spec()).id for _ in range(3))
        with psycopg.connect(**listen_conninfo(pg_store.url), autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            with mgr.transactions.transaction() as session:
                mgr.transactions.notify(session, a)
                mgr.transactions.notify(session, b)
                mgr.transactions.notify(session, a)
            with pytest.raises(RuntimeError), mgr.transactions.transaction() as session:
                mgr.transactions.notify(session, c)
                raise RuntimeError("rolled back")
            with mgr.transactions.transaction() as session:
                mgr.transactions.notify(session, b)
            # Delivered in commit order: the rolled-back wake-up would come before the last one.
            got = [n.payload for n in listener.notifies(timeout=30, stop_after=3)]
        assert got == [a, b, b]

    def test_only_transactions_that_queue_notices_wake_the_outbox_drainers(self, pg_store: ApprovalStore) -> None:
        mgr = ApprovalManager(store=pg_store)
        with psycopg.connect(**listen_conninfo(pg_store.url), autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            quiet = mgr.create(spec())  # nobody to notify: no notices
            mgr.approve(quiet.id, user=Principal.of("alice"))
            announced = mgr.create(spec(notify={"channels": ["in_app"]}))  # queues "required"
            mgr.approve(announced.id, user=Principal.of("alice"))  # queues "decided"
            got = [(n.channel, n.payload) for n in listener.notifies(timeout=30, stop_after=6)]
        assert got == [
            (NOTIFY_CHANNEL, quiet.id),
            (NOTIFY_CHANNEL, quiet.id),
            (NOTIFY_CHANNEL, announced.id),
            (OUTBOX_CHANNEL, ""),
            (NOTIFY_CHANNEL, announced.id),
            (OUTBOX_CHANNEL, ""),
        ]

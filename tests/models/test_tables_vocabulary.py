"""The vocabulary's enum members are stored as their plain values, on SQLite and PostgreSQL.

psycopg 3 has an ``Enum`` dumper that writes a member's NAME (``PENDING``); a member of a
``str`` enum must reach the store as its value (``pending``) through the ORM, through Core
statements and through psycopg itself, or the check constraints refuse it and old rows stop
matching. The tables' check constraints are built from the enums and must keep the very text
of the migrations.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
from sqlalchemy import CheckConstraint, select, text

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import WAITING_PREDICATE, ApprovalRequestRow, Base
from airflow_hitl.outbox import listen_conninfo
from airflow_hitl.policy import Principal
from airflow_hitl.spec import ApprovalFilter
from airflow_hitl.vocabulary import (
    WAITING_STATES,
    Action,
    ApprovalType,
    Channel,
    Event,
    OnReject,
    Origin,
    OutboxStatus,
    Source,
    State,
)
from tests.helpers import spec

MIGRATIONS = Path(__file__).resolve().parents[2] / "airflow_hitl" / "migrations" / "versions"


def _raw(store: ApprovalStore, sql: str, **params: object) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


class TestStoredValues:
    def test_a_gate_written_with_members_is_stored_as_plain_words(self, store: ApprovalStore) -> None:
        manager = ApprovalManager(store=store, audit_key="")
        opened = manager.create(
            spec(
                approval_type=ApprovalType.MANUAL,
                timeout=dt.timedelta(hours=1),
                timeout_action=Action.REJECT,
                on_reject=OnReject.SKIP,
                notify={"channels": [Channel.IN_APP], "users": ["alice"]},
            ),
            source=Source.OPERATOR,
            origin=Origin.TASK,
        )
        manager.approve(opened.id, user=Principal.of("alice"), source=Source.UI)

        request = _raw(
            store,
            "SELECT state, decision, decision_source, origin, approval_type, timeout_action, on_reject "
            "FROM approval_requests WHERE id = :id",
            id=opened.id,
        )
        assert request == [("approved", "approved", "ui", "task", "manual", "reject", "skip")]
        assert _raw(store, "SELECT vote, source FROM approval_votes") == [("approve", "ui")]
        events = _raw(store, "SELECT event_type, source FROM approval_events ORDER BY seq")
        assert events == [("requested", "operator"), ("vote", "ui"), ("approved", "ui")]
        outbox = _raw(store, "SELECT event_type, status, dedupe_key FROM approval_outbox ORDER BY created_at, id")
        # ``required`` was never tried before the gate closed: no longer wanted.
        assert sorted(outbox) == [("decided", "pending", "final:approved"), ("required", "cancelled", "required")]
        every_word = [v for row in (*request, *events, *outbox) for v in row]
        assert all(type(v) is str for v in every_word)
        # The chain written with members verifies as one written with plain strings.
        verification = manager.audit.verify_audit_chain()
        assert (verification.ok, verification.checked, verification.problem) == (True, 3, None)

    def test_members_bound_in_core_filters_match_stored_rows(self, store: ApprovalStore) -> None:
        manager = ApprovalManager(store=store, audit_key="")
        waiting = manager.create(spec())
        cancelled = manager.create(spec())
        manager.cancel(cancelled.id, actor="alice", reason="no longer needed", source=Source.API)
        found, total = manager.queries.list(ApprovalFilter(states=[State.CANCELLED]))
        assert ([a.id for a in found], total) == ([cancelled.id], 1)
        with store.session() as session:
            ids = session.scalars(
                select(ApprovalRequestRow.id).where(
                    ApprovalRequestRow.state.in_(WAITING_STATES), ApprovalRequestRow.origin == Origin.TASK
                )
            ).all()
        assert ids == [waiting.id]

    def test_the_orm_default_is_stored_as_its_value(self, store: ApprovalStore) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        row = ApprovalRequestRow(
            id="r-default", dag_id="d", title="t", requested_at=now, created_at=now, updated_at=now
        )
        with store.begin() as session:
            session.add(row)
        assert _raw(store, "SELECT state, origin, approval_type, on_reject FROM approval_requests") == [
            ("pending", "task", "manual", "fail")
        ]


def test_psycopg_binds_a_member_as_its_value(pg_store: ApprovalStore) -> None:
    # psycopg's own Enum dumper would send the NAME; the str mixin must win.
    with psycopg.connect(**listen_conninfo(pg_store.url)) as conn:
        row = conn.execute(
            "SELECT %s::text, %s, %s = 'in_app'", (State.PENDING, Event.TIMED_OUT, Channel.IN_APP)
        ).fetchone()
    assert row == ("pending", "timed_out", True)


def test_the_outbox_status_word_is_the_stored_value(pg_store: ApprovalStore) -> None:
    with psycopg.connect(**listen_conninfo(pg_store.url)) as conn:
        row = conn.execute("SELECT %s IN ('pending', 'sent', 'failed', 'cancelled')", (OutboxStatus.PENDING,))
        assert row.fetchone() == (True,)


def test_check_constraints_keep_the_migrations_text() -> None:
    migrations = "\n".join(p.read_text() for p in sorted(MIGRATIONS.glob("*.py")))
    checks = [
        str(c.sqltext)
        for table in Base.metadata.tables.values()
        for c in table.constraints
        if isinstance(c, CheckConstraint) and " IN (" in str(c.sqltext)
    ]
    assert sorted(checks) == sorted(
        [
            "state IN ('pending', 'approved', 'rejected', 'timeout', 'escalated', 'cancelled')",
            "timeout_action IS NULL OR timeout_action IN ('approve', 'reject', 'escalate')",
            "origin IN ('task', 'api')",
            "vote IN ('approve', 'reject')",
            "status IN ('pending', 'sent', 'failed', 'read')",
            "status IN ('pending', 'sent', 'failed', 'cancelled')",
            "status IN ('due', 'used', 'skipped')",
        ]
    )
    for check in checks:
        assert check in migrations, check
    # The partial index's predicate, which queries repeat word for word.
    assert WAITING_PREDICATE == "state IN ('pending', 'escalated')"
    assert WAITING_PREDICATE in migrations

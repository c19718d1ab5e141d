"""models.tables: UTC-aware times on both backends, and the rules the schema itself enforces.

The models' agreement with the migrations is tests/models/test_schema.py; here the rules
(check constraints, uniqueness, cascades) are shown to hold on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, StatementError

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import (
    WAITING_STATES,
    ApprovalDelegationRow,
    ApprovalEventRow,
    ApprovalNotificationRow,
    ApprovalOutboxRow,
    ApprovalRequestRow,
    ApprovalVoteRow,
    UtcDateTime,
)
from airflow_hitl.policy import Principal
from airflow_hitl.spec import ApprovalFilter, where_clauses
from tests.helpers import spec

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)
INDIA = dt.timezone(dt.timedelta(hours=5, minutes=30))


def request_row(**overrides: Any) -> ApprovalRequestRow:
    """A minimal request row."""
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "dag_id": "release",
        "title": "Release",
        "requested_at": T0,
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)
    return ApprovalRequestRow(**fields)


def count(store: ApprovalStore, model: type, **where: Any) -> int:
    with store.session() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.scalar(query) or 0)


class TestUtcDateTime:
    def test_bound_as_utc_naive_on_sqlite_and_aware_on_postgresql(self) -> None:
        kind = UtcDateTime()
        local = T0.astimezone(INDIA)
        assert kind.process_bind_param(local, sqlite.dialect()) == dt.datetime(2026, 11, 30, 9, 0)
        bound = kind.process_bind_param(local, postgresql.dialect())
        assert (bound, bound.utcoffset() if bound else None) == (T0, dt.timedelta(0))
        assert kind.process_bind_param(None, sqlite.dialect()) is None

    def test_read_back_aware_utc(self) -> None:
        kind = UtcDateTime()
        assert kind.process_result_value(dt.datetime(2026, 11, 30, 9, 0), sqlite.dialect()) == T0
        read = kind.process_result_value(T0.astimezone(INDIA), postgresql.dialect())
        assert read is not None and read.tzinfo is dt.timezone.utc and read == T0

    def test_a_time_in_any_zone_reads_back_as_the_same_utc_instant(self, store: ApprovalStore) -> None:
        row = request_row(requested_at=T0.astimezone(INDIA), expires_at=T0.astimezone(INDIA) + dt.timedelta(hours=1))
        with store.begin() as session:
            session.add(row)
        with store.session() as session:
            got = session.get(ApprovalRequestRow, row.id)
            assert got is not None
            assert (got.requested_at, got.requested_at.utcoffset()) == (T0, dt.timedelta(0))
            assert got.expires_at == T0 + dt.timedelta(hours=1)
            assert got.decided_at is None

    def test_a_naive_time_is_refused_and_nothing_is_written(self, store: ApprovalStore) -> None:
        with pytest.raises(StatementError, match="naive datetime"), store.begin() as session:
            session.add(request_row(requested_at=dt.datetime(2026, 11, 30, 9, 0)))
        assert count(store, ApprovalRequestRow) == 0


class TestSchemaRules:
    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({"state": "maybe"}, id="state"),
            pytest.param({"origin": "fax"}, id="origin"),
            pytest.param({"timeout_action": "explode"}, id="timeout-action"),
            pytest.param({"required_approvals": 0}, id="required-approvals"),
        ],
    )
    def test_request_checks(self, store: ApprovalStore, overrides: dict[str, Any]) -> None:
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(request_row(**overrides))
        assert count(store, ApprovalRequestRow) == 0

    def test_one_request_per_task_try(self, store: ApprovalStore) -> None:
        try_of = {"run_id": "r1", "task_id": "gate", "map_index": 0, "try_number": 1}
        with store.begin() as session:
            session.add(request_row(**try_of))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(request_row(**try_of))
        with store.begin() as session:
            session.add(request_row(**{**try_of, "try_number": 2}))
        assert count(store, ApprovalRequestRow) == 2

    def test_one_request_per_task_instance_try(self, store: ApprovalStore) -> None:
        # A DAG run deleted and created again: the same try of other task instances, one request each.
        try_of = {"run_id": "r1", "task_id": "gate", "map_index": 0, "try_number": 1}
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        with store.begin() as session:
            session.add(request_row(**try_of, task_instance_id=first))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(request_row(**try_of, task_instance_id=first))
        with store.begin() as session:
            session.add(request_row(**try_of, task_instance_id=second))
        # One with no id (opened before revision 0013) is one per try among those with none.
        with store.begin() as session:
            session.add(request_row(**try_of))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(request_row(**try_of))
        assert count(store, ApprovalRequestRow) == 3

    def test_a_person_votes_once_per_request(self, store: ApprovalStore) -> None:
        row = request_row()
        with store.begin() as session:
            session.add(row)
        vote = {"request_id": row.id, "user": "alice", "vote": "approve", "source": "api", "created_at": T0}
        vote |= {"dag_id": row.dag_id, "task_id": row.task_id, "requested_at": row.requested_at}
        with store.begin() as session:
            session.add(ApprovalVoteRow(**vote))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(ApprovalVoteRow(**{**vote, "vote": "reject"}))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(ApprovalVoteRow(**{**vote, "user": "bob", "vote": "abstain"}))
        assert count(store, ApprovalVoteRow) == 1

    def test_an_outbox_notice_is_queued_once_per_key(self, store: ApprovalStore) -> None:
        row = request_row()
        with store.begin() as session:
            session.add(row)
        intent = {
            "request_id": row.id,
            "event_type": "required",
            "dedupe_key": "required",
            "status": "pending",
            "due_at": T0,
            "created_at": T0,
            "updated_at": T0,
        }
        with store.begin() as session:
            session.add(ApprovalOutboxRow(id=str(uuid.uuid4()), **intent))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(ApprovalOutboxRow(id=str(uuid.uuid4()), **intent))
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(ApprovalOutboxRow(id=str(uuid.uuid4()), **{**intent, "dedupe_key": "x", "status": "lost"}))
        assert count(store, ApprovalOutboxRow) == 1

    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({"delegate": "alice"}, id="to-oneself"),
            pytest.param({"ends_at": T0}, id="empty-period"),
        ],
    )
    def test_delegation_checks(self, store: ApprovalStore, overrides: dict[str, Any]) -> None:
        fields: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "delegator": "alice",
            "delegate": "bob",
            "starts_at": T0,
            "ends_at": T0 + dt.timedelta(days=1),
            "created_by": "alice",
            "created_at": T0,
        }
        with pytest.raises(IntegrityError), store.begin() as session:
            session.add(ApprovalDelegationRow(**{**fields, **overrides}))
        with store.begin() as session:
            session.add(ApprovalDelegationRow(**fields))
        assert count(store, ApprovalDelegationRow) == 1

    def test_deleting_a_request_takes_its_rows_but_not_its_audit_trail(
        self, mgr: ApprovalManager, store: ApprovalStore
    ) -> None:
        gate = mgr.create(spec(notify={"channels": ["email"]}, required_approvals=2))
        mgr.approve(gate.id, user=Principal.of("alice"))
        mgr.notices.record_notification(request_id=gate.id, channel="in_app", recipient="bob", event_type="required")
        events = count(store, ApprovalEventRow, request_id=gate.id)
        assert events > 0
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM approval_requests WHERE id = :id"), {"id": gate.id})
        for model in (ApprovalVoteRow, ApprovalNotificationRow, ApprovalOutboxRow):
            assert count(store, model, request_id=gate.id) == 0, model.__tablename__
        assert count(store, ApprovalEventRow, request_id=gate.id) == events
        assert mgr.audit.verify_audit_chain().ok


def test_the_inbox_query_can_walk_the_partial_index(pg_store: ApprovalStore) -> None:
    # The waiting filter is the index's very predicate text, not bound values, so even the
    # generic plan of a prepared statement may walk the partial index for the inbox (pending,
    # soonest expiry first) instead of sorting every request.
    query = (
        select(ApprovalRequestRow.id)
        .where(*where_clauses(ApprovalFilter(states=WAITING_STATES)))
        .order_by(ApprovalRequestRow.expires_at.asc().nulls_last(), ApprovalRequestRow.id)
        .limit(100)
    )
    compiled = query.compile(
        dialect=postgresql.dialect(paramstyle="numeric_dollar"), compile_kwargs={"render_postcompile": True}
    )
    values = ", ".join(repr(compiled.params[name]) for name in compiled.positiontup or ())
    with pg_store.engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # the table is tiny: take the cost out
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE hitl_inbox AS {compiled}")
        try:
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE hitl_inbox({values})").scalars())
        finally:
            conn.exec_driver_sql("DEALLOCATE hitl_inbox")
            conn.rollback()
    assert "ix_approval_requests_waiting" in plan, plan

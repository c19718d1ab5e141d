"""Store schema: migrations match the models, are idempotent, and refuse a newer store."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from airflow_hitl.exceptions import StoreSchemaError
from airflow_hitl.models.schema import VERSION_TABLE, ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import Base


@pytest.fixture
def empty_sqlite(tmp_path) -> ApprovalStore:
    return ApprovalStore(url=f"sqlite:///{tmp_path / 'fresh.db'}")


class TestMigrate:
    def test_fresh_store_gets_every_table(self, empty_sqlite: ApprovalStore) -> None:
        status = migrate(empty_sqlite)
        assert status.up_to_date
        tables = set(inspect(empty_sqlite.engine).get_table_names())
        assert {"approval_requests", "approval_votes", "approval_events", "approval_notifications"} <= tables

    def test_migrating_twice_is_a_no_op(self, empty_sqlite: ApprovalStore) -> None:
        first = migrate(empty_sqlite)
        with empty_sqlite.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        second = migrate(empty_sqlite)
        assert first == second
        with empty_sqlite.engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1

    def test_models_match_migrations(self, store: ApprovalStore) -> None:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = [d for d in compare_metadata(context, Base.metadata) if VERSION_TABLE not in str(d)]
        assert diff == []

    def test_newer_store_is_refused(self, empty_sqlite: ApprovalStore) -> None:
        migrate(empty_sqlite)
        with empty_sqlite.engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))
        with pytest.raises(StoreSchemaError, match="newer airflow-hitl"):
            schema_status(empty_sqlite)
        with pytest.raises(StoreSchemaError):
            migrate(empty_sqlite)

    def test_unmigrated_store_explains_what_to_run(self, empty_sqlite: ApprovalStore) -> None:
        with pytest.raises(StoreSchemaError, match="airflow hitl db migrate"):
            ensure_schema(empty_sqlite, migrate=False)
        assert ensure_schema(empty_sqlite, migrate=True).up_to_date

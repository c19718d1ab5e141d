"""Store schema: migrations match the models, are idempotent, and refuse a newer store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from airflow_hitl.exceptions import StoreSchemaError
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import VERSION_TABLE, alembic_config, ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import Base
from airflow_hitl.policy import Principal
from tests.helpers import spec


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ApprovalStore]:
    """An empty store of the test's own, on each backend, for tests that move its revision."""
    if request.param == "sqlite":
        store = ApprovalStore(url=f"sqlite:///{tmp_path / 'own.db'}")
        yield store
        store.dispose()
        return
    pg_url: str = request.getfixturevalue("pg_url")
    name = f"hitl_own_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    store = ApprovalStore(url=pg_url.rsplit("/", 1)[0] + f"/{name}")
    yield store
    store.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _indexes(store: ApprovalStore) -> set[str]:
    return {ix["name"] for ix in inspect(store.engine).get_indexes("approval_requests")}


class TestUpgrade:
    def test_a_0001_store_with_waiting_requests_upgrades_in_place(self, own_store: ApprovalStore) -> None:
        # A store of the first release, with requests in it.
        command.upgrade(alembic_config(own_store), "0001")
        assert "ix_approval_requests_waiting" not in _indexes(own_store)
        manager = ApprovalManager(store=own_store)
        waiting = [manager.create(spec()) for _ in range(3)]
        manager.approve(waiting[0].id, user=Principal.of("alice"))

        status = migrate(own_store)

        assert status.up_to_date and status.current == status.head != "0001"
        assert "ix_approval_requests_waiting" in _indexes(own_store)
        items, total = manager.pending()
        assert total == 2 and {a.id for a in items} == {w.id for w in waiting[1:]}
        assert manager.get(waiting[0].id).state == "approved"
        assert manager.verify_audit_chain().ok

    def test_downgrade_to_0001_drops_only_the_new_index(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        before = _indexes(own_store)
        command.downgrade(alembic_config(own_store), "0001")
        assert _indexes(own_store) == before - {"ix_approval_requests_waiting"}

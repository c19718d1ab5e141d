"""Store schema: migrations match the models, are idempotent, and refuse a newer store."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, inspect, text

from airflow_hitl.exceptions import StoreSchemaError
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import VERSION_TABLE, alembic_config, ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import Base
from airflow_hitl.policy import Principal


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


def _old_request(store: ApprovalStore, state: str) -> str:
    """Insert a request row with only the columns revision 0001 has; return its id."""
    table = Table("approval_requests", MetaData(), autoload_with=store.engine)
    now = dt.datetime.now(dt.timezone.utc)
    row_id = str(uuid.uuid4())
    with store.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                id=row_id,
                dag_id="release",
                run_id=f"manual__{row_id}",
                task_id="gate",
                map_index=-1,
                try_number=1,
                title="old",
                context={},
                approval_type="manual",
                state=state,
                requested_at=now,
                escalation_level=0,
                escalation_targets=[],
                required_approvals=1,
                require_all=False,
                allowed_approvers=[],
                allowed_roles=[],
                allow_self_approval=True,
                on_reject="fail",
                metadata={},
                notify={},
                created_at=now,
                updated_at=now,
            )
        )
    return row_id


def _indexes(store: ApprovalStore) -> set[str]:
    return {ix["name"] for ix in inspect(store.engine).get_indexes("approval_requests")}


class TestUpgrade:
    def test_a_0001_store_with_waiting_requests_upgrades_in_place(self, own_store: ApprovalStore) -> None:
        # A store of the first release, with requests in it.
        command.upgrade(alembic_config(own_store), "0001")
        assert "ix_approval_requests_waiting" not in _indexes(own_store)
        # Rows as the first release wrote them (today's models have columns 0001 lacks).
        waiting = [_old_request(own_store, "pending") for _ in range(3)]
        decided = _old_request(own_store, "approved")

        status = migrate(own_store)

        assert status.up_to_date and status.current == status.head != "0001"
        assert "ix_approval_requests_waiting" in _indexes(own_store)
        manager = ApprovalManager(store=own_store)
        items, total = manager.pending()
        assert total == 3 and {a.id for a in items} == set(waiting)
        assert manager.get(decided).state == "approved"
        assert {a.origin for a in items} == {"task"}
        manager.approve(waiting[0], user=Principal.of("alice"))
        assert manager.get(waiting[0]).state == "approved"
        assert manager.verify_audit_chain().ok

    def test_downgrade_to_0001_drops_only_the_new_index(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        before = _indexes(own_store)
        command.downgrade(alembic_config(own_store), "0001")
        assert _indexes(own_store) == before - {"ix_approval_requests_waiting"}


_STARTER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from airflow_hitl.models.store import get_store
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.01)
store = get_store(url=sys.argv[1])
print("ready", flush=True)
"""


class TestConcurrentStart:
    """Several api-servers and triggerers starting on an empty store migrate it exactly once."""

    def test_processes_starting_at_once_migrate_once(self, own_store: ApprovalStore, tmp_path) -> None:
        go = tmp_path / "go"
        env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__HITL__AUTO_MIGRATE": "True"}
        env.pop("AIRFLOW_HITL_STORE_URL", None)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _STARTER, own_store.url, str(go)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        go.touch()  # every process waits for this file, so they open the store together
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        # Airflow may route logging to either stream once its config is imported: read both.
        logs = [out + err for _, out, err in results]
        for (code, out, _), log_text in zip(results, logs, strict=True):
            assert code == 0, log_text
            assert out.splitlines()[-1] == "ready"
            assert "Context impl" not in log_text
        migrations = [line for text_ in logs for line in text_.splitlines() if "migrated from None" in line]
        assert len(migrations) == 1, logs
        assert schema_status(own_store).up_to_date

    def test_threads_starting_at_once_migrate_once(
        self, own_store: ApprovalStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        barrier = threading.Barrier(8)

        def start() -> bool:
            store = ApprovalStore(url=own_store.url)
            try:
                barrier.wait(timeout=60)
                return migrate(store).up_to_date
            finally:
                store.dispose()

        with caplog.at_level(logging.INFO, logger="airflow_hitl"), ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda _: start(), range(8)))
        assert outcomes == [True] * 8
        assert len([r for r in caplog.records if r.getMessage().startswith("approval store migrated from")]) == 1
        with own_store.engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1

    def test_status_reads_log_no_alembic_info(self, own_store: ApprovalStore, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO):
            migrate(own_store)
            schema_status(own_store)
        assert not [r for r in caplog.records if r.name.startswith("alembic")]
        assert logging.getLogger("alembic").level == logging.NOTSET

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
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, inspect, select, text

from airflow_hitl.audit import GENESIS_HASH, event_hash
from airflow_hitl.exceptions import StoreError, StoreSchemaError
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import VERSION_TABLE, alembic_config, ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import REQUEST_ANALYTICS, TASK_TRY, VOTE_ANALYTICS, Base
from airflow_hitl.policy import Principal
from airflow_hitl.vocabulary import Origin, Source
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


def _old_event(
    store: ApprovalStore, request_id: str, event_type: str, actor: str | None, source: str = "operator", **details: Any
) -> None:
    """Append an event as airflow-hitl wrote them before facts and keys: an unkeyed SHA-256 link."""
    table = Table("approval_events", MetaData(), autoload_with=store.engine)
    now = dt.datetime.now(dt.timezone.utc)
    with store.engine.begin() as conn:
        tail = conn.execute(select(table.c.hash).order_by(table.c.seq.desc()).limit(1)).scalar() or GENESIS_HASH
        content = {"request_id": request_id, "event_type": event_type, "actor": actor, "source": source}
        link = event_hash(prev_hash=tail, comment=None, details=details, created_at=now, **content)
        conn.execute(
            table.insert().values(**content, comment=None, details=details, created_at=now, prev_hash=tail, hash=link)
        )


def _old_request(store: ApprovalStore, state: str) -> str:
    """Insert a request row with only the columns revision 0001 has, and its event; return its id."""
    table = Table("approval_requests", MetaData(), autoload_with=store.engine)
    now = dt.datetime.now(dt.timezone.utc)
    row_id = str(uuid.uuid4())
    _old_event(store, row_id, "requested", "ricky", dag_id="release")
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


#: Revision 0013's unique indexes, and the unique constraint of 0001 they replace.
TASK_TRY_INDEXES = ("uq_approval_requests_task_instance_try", "uq_approval_requests_task_try")
OLD_TASK_TRY_UNIQUE = "uq_approval_requests_dag_id_run_id_task_id_map_index_try_number"


def _unique_keys(store: ApprovalStore) -> list[list[str]]:
    return [list(uq["column_names"]) for uq in inspect(store.engine).get_unique_constraints("approval_requests")]


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
        items, total = manager.queries.pending()
        assert total == 3 and {a.id for a in items} == set(waiting)
        assert manager.queries.get(decided).state == "approved"
        assert {a.origin for a in items} == {"task"}
        manager.approve(waiting[0], user=Principal.of("alice"))
        assert manager.queries.get(waiting[0]).state == "approved"
        assert manager.audit.verify_audit_chain().ok

    def test_downgrade_to_0001_drops_only_the_new_indexes(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        before = _indexes(own_store)
        command.downgrade(alembic_config(own_store), "0001")
        # 0013's two partial unique indexes go, and 0001's unique constraint (an index on PostgreSQL) is back.
        new = {"ix_approval_requests_waiting", "ix_approval_requests_analytics", *TASK_TRY_INDEXES}
        assert _indexes(own_store) - {OLD_TASK_TRY_UNIQUE} == before - new
        assert _unique_keys(own_store) == [list(TASK_TRY)]


def _old_vote(store: ApprovalStore, request_id: str, user: str) -> None:
    """A vote row of revision 0006 (no content digest) and its event, as airflow-hitl wrote them then."""
    table = Table("approval_votes", MetaData(), autoload_with=store.engine)
    with store.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                request_id=request_id,
                user=user,
                user_roles=["op"],
                vote="approve",
                source="api",
                escalation_level=0,
                metadata={},
                inputs={},
                created_at=dt.datetime.now(dt.timezone.utc),
            )
        )
    _old_event(store, request_id, "vote", user, source="api", vote="approve", roles=["op"])


def _columns(store: ApprovalStore, table: str) -> set[str]:
    return {column["name"] for column in inspect(store.engine).get_columns(table)}


class TestKeyedUpgrade:
    """Revision 0007: a store's unkeyed events keep verifying, and it is keyed from the first keyed event on."""

    def test_a_0006_store_keeps_its_unkeyed_events_and_is_keyed_from_then_on(self, own_store: ApprovalStore) -> None:
        command.upgrade(alembic_config(own_store), "0006")
        decided = _old_request(own_store, "approved")
        _old_vote(own_store, decided, "alice")
        _old_event(own_store, decided, "approved", "alice", source="api", decision="approved")
        waiting = _old_request(own_store, "pending")

        migrate(own_store)

        assert "key_id" in _columns(own_store, "approval_events")
        assert "content_digest" in _columns(own_store, "approval_votes")
        keyed = ApprovalManager(store=own_store, audit_key="the audit key")
        keyed.approve(waiting, user=Principal.of("alice", ["op"]))
        events = keyed.audit.events()
        # The older events keep their SHA-256 links; the vote and the approval are keyed.
        key_id = keyed._audit_key.key_id if keyed._audit_key else None
        assert [e.key_id for e in events] == [None] * 4 + [key_id] * 2
        result = keyed.audit.verify_audit_chain()
        assert result.ok, result
        assert result.keyed_from == events[4].seq
        # The request decided before the upgrade has no facts: its links are what is checked.
        assert (result.requests_verified, result.requests_hash_only) == (1, 1)
        # A component left without the key may no longer append to the keyed chain.
        with pytest.raises(StoreError, match=r"\[hitl\] audit_key"):
            ApprovalManager(store=own_store, audit_key="").create(spec())
        assert len(keyed.audit.events()) == 6

    def test_downgrade_to_0006_drops_the_key_id_and_the_votes_digest(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        command.downgrade(alembic_config(own_store), "0006")
        assert "key_id" not in _columns(own_store, "approval_events")
        assert "content_digest" not in _columns(own_store, "approval_votes")
        assert schema_status(own_store).current == "0006"


class TestTaskInstanceUpgrade:
    """Revision 0013: requests record their task instance try; the ones before it keep one request per try."""

    def test_a_0012_stores_requests_keep_being_found_by_their_try(self, own_store: ApprovalStore) -> None:
        command.upgrade(alembic_config(own_store), "0012")
        waiting = _old_request(own_store, "pending")
        decided = _old_request(own_store, "approved")

        migrate(own_store)

        assert "task_instance_id" in _columns(own_store, "approval_requests")
        assert set(TASK_TRY_INDEXES) <= _indexes(own_store) and _unique_keys(own_store) == []
        manager = ApprovalManager(store=own_store)
        for old in (waiting, decided):
            assert manager.queries.get(old).state in {"pending", "approved"}
            # A gate of that try (it names its task instance now) finds the request opened before the upgrade.
            again = spec(run_id=f"manual__{old}", task_instance_id=str(uuid.uuid4()))
            assert manager.create(again).id == old
        assert manager.audit.verify_audit_chain().ok

    def test_downgrade_refuses_while_a_try_has_two_requests(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        manager = ApprovalManager(store=own_store)
        first = manager.create(spec(run_id="scheduled__1", task_instance_id=str(uuid.uuid4())))
        manager.approve(first.id, user=Principal.of("alice"))
        # The run was deleted and created again: its gate asked again, under the same try.
        second = manager.create(spec(run_id="scheduled__1", task_instance_id=str(uuid.uuid4())))
        assert second.id != first.id
        # Down to 0013 first: SQLite's DDL is not transactional, so a refusal after later
        # revisions' downgrades would keep those; this test is about 0013's own refusal.
        command.downgrade(alembic_config(own_store), "0013")
        with pytest.raises(RuntimeError, match="1 task tries have more than one request"):
            command.downgrade(alembic_config(own_store), "0012")
        assert schema_status(own_store).current == "0013", "nothing changed"
        with own_store.engine.begin() as conn:
            conn.execute(text("DELETE FROM approval_requests WHERE id = :id"), {"id": second.id})
        command.downgrade(alembic_config(own_store), "0012")
        assert "task_instance_id" not in _columns(own_store, "approval_requests")
        assert _unique_keys(own_store) == [list(TASK_TRY)]
        assert not set(TASK_TRY_INDEXES) & _indexes(own_store)


def _vote_indexes(store: ApprovalStore) -> dict[str, list[str]]:
    return {ix["name"]: list(ix["column_names"]) for ix in inspect(store.engine).get_indexes("approval_votes")}


def _request_analytics_index(store: ApprovalStore) -> list[str]:
    found = {ix["name"]: ix["column_names"] for ix in inspect(store.engine).get_indexes("approval_requests")}
    return list(found["ix_approval_requests_analytics"])


class TestVoteRequestFacts:
    """Revision 0014: votes carry their request's DAG, task and opening time, for the analytics."""

    def test_a_0013_stores_votes_get_their_requests_values(self, own_store: ApprovalStore) -> None:
        command.upgrade(alembic_config(own_store), "0013")
        request_id = _old_request(own_store, "approved")
        _old_vote(own_store, request_id, "alice")
        _old_vote(own_store, request_id, "bob")

        migrate(own_store)

        request = ApprovalManager(store=own_store).queries.get(request_id)
        with own_store.engine.connect() as conn:
            rows = conn.execute(
                text('SELECT "user", dag_id, task_id, requested_at FROM approval_votes ORDER BY "user"')
            ).all()
        assert [(r.user, r.dag_id, r.task_id) for r in rows] == [
            ("alice", "release", "gate"),
            ("bob", "release", "gate"),
        ]
        # The very instant (SQLite hands back naive UTC, PostgreSQL an aware timestamp).
        for row in rows:
            at = row.requested_at
            at = dt.datetime.fromisoformat(at) if isinstance(at, str) else at
            assert (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)) == request.requested_at
        assert _vote_indexes(own_store)["ix_approval_votes_analytics"] == list(VOTE_ANALYTICS)
        assert _request_analytics_index(own_store) == list(REQUEST_ANALYTICS)
        assert ApprovalManager(store=own_store).audit.verify_audit_chain().ok

    def test_a_vote_cast_now_carries_its_requests_values(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        manager = ApprovalManager(store=own_store)
        approval = manager.create(spec(run_id="scheduled__1", task_instance_id=str(uuid.uuid4())))
        manager.approve(approval.id, user=Principal.of("alice"))
        over_api = manager.create(
            spec(run_id=None, task_id=None, try_number=None), source=Source.API, origin=Origin.API
        )
        manager.reject(over_api.id, user=Principal.of("bob"), reason="no")
        with own_store.engine.connect() as conn:
            rows = conn.execute(text('SELECT request_id, dag_id, task_id FROM approval_votes ORDER BY "user"')).all()
        assert [tuple(r) for r in rows] == [
            (approval.id, approval.dag_id, approval.task_id),
            (over_api.id, over_api.dag_id, None),
        ]

    def test_downgrade_to_0013_drops_the_columns_and_puts_the_old_index_back(self, own_store: ApprovalStore) -> None:
        migrate(own_store)
        command.downgrade(alembic_config(own_store), "0013")
        assert not {"dag_id", "task_id", "requested_at"} & _columns(own_store, "approval_votes")
        assert "ix_approval_votes_analytics" not in _vote_indexes(own_store)
        assert _request_analytics_index(own_store) == [*REQUEST_ANALYTICS, "id"]


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

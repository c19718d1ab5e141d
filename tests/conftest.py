"""Shared fixtures: a migrated approval store on SQLite and on PostgreSQL, managers over it.

Store tests take the ``store`` fixture and run once per backend. PostgreSQL is the server
on 127.0.0.1:5432 (trust auth); each test session gets its own database, dropped at the
end. Where it is unreachable the PostgreSQL variants skip, except in CI (``CI=true``),
where they fail: a green CI must have exercised PostgreSQL.

The local stand-ins of the outside world (SMTP, Slack, webhook receiver) are the plugin
:mod:`tests.standins`; helpers that are not fixtures live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore, reset_stores
from tests.airflow_api import airflow_api, api, api_manager  # noqa: F401  (fixtures, registered here)
from tests.helpers import Clock, migrated_sqlite_url

pytest_plugins = ("tests.standins",)

PG_ADMIN_URL = os.environ.get("HITL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = (
    "approval_standing_due",
    "approval_standing",
    "approval_delegations",
    "approval_outbox",
    "approval_notifications",
    "approval_votes",
    "approval_events",
    "approval_requests",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """Undo the gc.freeze of an api-server app's start (``[hitl] api_server_gc_freeze``) after each test.

    It is meant for a server process; left in the test process it would keep every object of
    the tests before it from ever being collected.
    """
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session."""
    name = f"hitl_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:
        admin.dispose()
        if _in_ci():
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {err}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {err}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _pg_store(pg_url: str) -> Iterator[ApprovalStore]:
    store = ApprovalStore(url=pg_url, pool_size=20)
    migrate(store)
    yield store
    store.dispose()


@pytest.fixture(scope="session")
def _sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalStore]:
    path = tmp_path_factory.mktemp("store") / "hitl.db"
    store = ApprovalStore(url=f"sqlite:///{path}")
    migrate(store)
    yield store
    store.dispose()


def _truncate(store: ApprovalStore) -> None:
    with store.engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[ApprovalStore]:
    """A migrated, empty store; the test runs once on SQLite and once on PostgreSQL."""
    store: ApprovalStore = request.getfixturevalue(f"_{'pg' if request.param == 'postgres' else 'sqlite'}_store")
    _truncate(store)
    yield store
    _truncate(store)


@pytest.fixture
def pg_store(request: pytest.FixtureRequest) -> Iterator[ApprovalStore]:
    """A migrated, empty PostgreSQL store (for tests that need row locks and NOTIFY)."""
    store: ApprovalStore = request.getfixturevalue("_pg_store")
    _truncate(store)
    yield store
    _truncate(store)


@pytest.fixture
def manager(store: ApprovalStore) -> ApprovalManager:
    """An ApprovalManager over the parametrised store."""
    return ApprovalManager(store=store)


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture
def mgr(store: ApprovalStore, clock: Clock) -> ApprovalManager:
    """An ApprovalManager over the parametrised store, on the test's :func:`clock`."""
    return ApprovalManager(store=store, clock=clock)


@pytest.fixture
def sqlite_manager(tmp_path: Path) -> Iterator[ApprovalManager]:
    """A manager over a fresh SQLite store in ``tmp_path`` (for the HTTP route tests)."""
    store = ApprovalStore(url=migrated_sqlite_url(tmp_path / "hitl.db"))
    yield ApprovalManager(store=store)
    store.dispose()


@pytest.fixture
def store_url(store: ApprovalStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point triggers (and anything else resolving the store by itself) at the test store."""
    monkeypatch.setenv("AIRFLOW_HITL_STORE_URL", store.url)
    yield store.url
    reset_stores()

"""Schema management: Alembic migrations run programmatically against the store.

It works on anything shaped like a store (:class:`Migratable`), so it needs nothing from
:mod:`airflow_hitl.models.store`, which calls it the first time a process opens a store.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine

from airflow_hitl.exceptions import StoreSchemaError

log = logging.getLogger(__name__)


class Migratable(Protocol):
    """What migrating needs of a store (:class:`~airflow_hitl.models.store.ApprovalStore` is one)."""

    engine: Engine
    dialect: str

    @property
    def is_postgres(self) -> bool:
        """True for PostgreSQL (advisory lock), False for SQLite (file lock)."""

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file, when there is one."""


VERSION_TABLE = "hitl_alembic_version"
MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations")
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x41F1_4117


@dataclass(frozen=True, kw_only=True)
class SchemaStatus:
    """Where a store's schema stands against this code's migrations."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        """True when the store is at this code's head revision."""
        return self.current == self.head


def alembic_config(store: Migratable) -> Config:
    """An Alembic config bound to ``store``; no ini file is needed."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["store"] = store
    return config


class _AlembicQuiet:
    """Raise the ``alembic`` logger to WARNING while any thread is inside :meth:`__call__`.

    Alembic logs "Context impl SQLiteImpl" and "Will assume ..." at INFO on every status
    read; under Airflow's logging that lands in every CLI call and every gate's task log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = logging.NOTSET

    @contextmanager
    def __call__(self) -> Iterator[None]:
        logger = logging.getLogger("alembic")
        with self._lock:
            if self._depth == 0:
                self._saved = logger.level
                logger.setLevel(max(logging.WARNING, logger.level))
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    logger.setLevel(self._saved)


_quiet_alembic = _AlembicQuiet()


@functools.cache
def _shipped_revisions() -> tuple[str, frozenset[str]]:
    # The head and every revision of the migrations this package ships, read once per process:
    # they cannot change while it runs, and reading them loads every revision's module (each
    # status read did, so every worker opening the store and every test's fresh store paid it).
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    return head, frozenset(rev.revision for rev in script.walk_revisions())


def schema_status(store: Migratable) -> SchemaStatus:
    """Read the store's revision; refuse a store migrated by a newer airflow-hitl."""
    head, known = _shipped_revisions()
    with _quiet_alembic(), store.engine.connect() as conn:
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if current is not None and current not in known:
        raise StoreSchemaError(
            f"the approval store {store!r} is at schema revision {current!r}, which this airflow-hitl "
            f"(head {head!r}) does not know: it was migrated by a newer airflow-hitl. "
            "Upgrade airflow-hitl on this machine; do not downgrade the store."
        )
    return SchemaStatus(current=current, head=head)


@contextmanager
def migration_lock(store: Migratable) -> Iterator[None]:
    """Hold the store's migration lock: one migrator at a time across processes and hosts.

    PostgreSQL: a session advisory lock, which every host sharing the database sees.
    SQLite: an exclusive ``flock`` on a file beside the database (threads and processes on
    the one machine that can open it). An in-memory database has a single user.
    """
    if store.is_postgres:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
        return
    path = store.sqlite_path
    if path is None:
        yield
        return
    import fcntl

    with open(f"{path}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(store: Migratable) -> SchemaStatus:
    """Bring the store to head; a no-op when it is already there.

    Any number of processes may call this at once on an empty store (several api-servers
    and triggerers starting together): the first to take :func:`migration_lock` migrates,
    the others find the store at head once they get it.
    """
    before = schema_status(store)
    if before.up_to_date:
        log.debug("approval store already at revision %s", before.head)
        return before
    with migration_lock(store):
        locked = schema_status(store)
        if locked.up_to_date:
            log.info("approval store was migrated to %s by another process", locked.head)
            return locked
        with _quiet_alembic():
            command.upgrade(alembic_config(store), "head")
    after = schema_status(store)
    log.info("approval store migrated from %s to %s", locked.current, after.current)
    return after


def ensure_schema(store: Migratable, *, migrate: bool) -> SchemaStatus:
    """Check the store before first use: migrate it when allowed, else explain what to run."""
    status = schema_status(store)
    if status.up_to_date:
        return status
    if migrate:
        return _migrate(store)
    raise StoreSchemaError(
        f"the approval store {store!r} is at revision {status.current!r}, this airflow-hitl needs "
        f"{status.head!r}: run `airflow hitl db migrate` (or `airflow-hitl db migrate`)"
    )


_migrate = migrate

"""Schema management: Alembic migrations run programmatically against the store."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from airflow_hitl.exceptions import StoreSchemaError
from airflow_hitl.models.store import ApprovalStore

log = logging.getLogger(__name__)

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


def alembic_config(store: ApprovalStore) -> Config:
    """An Alembic config bound to ``store``; no ini file is needed."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["store"] = store
    return config


def schema_status(store: ApprovalStore) -> SchemaStatus:
    """Read the store's revision; refuse a store migrated by a newer airflow-hitl."""
    script = ScriptDirectory.from_config(alembic_config(store))
    head = script.get_current_head()
    assert head is not None
    with store.engine.connect() as conn:
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise StoreSchemaError(
            f"the approval store {store!r} is at schema revision {current!r}, which this airflow-hitl "
            f"(head {head!r}) does not know: it was migrated by a newer airflow-hitl. "
            "Upgrade airflow-hitl on this machine; do not downgrade the store."
        )
    return SchemaStatus(current=current, head=head)


def migrate(store: ApprovalStore) -> SchemaStatus:
    """Bring the store to head; a no-op when it is already there."""
    before = schema_status(store)
    if before.up_to_date:
        log.info("approval store already at revision %s", before.head)
        return before
    config = alembic_config(store)
    if store.is_postgres:
        # Serialise concurrent migrators (several workers starting at once).
        with store.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            try:
                conn.commit()
                if not schema_status(store).up_to_date:
                    command.upgrade(config, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    else:
        try:
            command.upgrade(config, "head")
        except Exception:
            # Another process may have migrated between our check and our upgrade.
            if not schema_status(store).up_to_date:
                raise
    after = schema_status(store)
    log.info("approval store migrated from %s to %s", before.current, after.current)
    return after


def ensure_schema(store: ApprovalStore, *, migrate: bool) -> SchemaStatus:
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

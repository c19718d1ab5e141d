"""Alembic environment: runs against the store handed over in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from airflow_hitl.models.tables import Base

config = context.config
store = config.attributes["store"]
version_table = config.get_main_option("version_table") or "hitl_alembic_version"


def run_migrations_online() -> None:
    """Run every pending migration in one transaction where the backend allows it."""
    with store.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=version_table,
            render_as_batch=store.dialect == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; run `airflow hitl db migrate`")
run_migrations_online()

"""The task instance try that opened a task's gate: a DAG run deleted and created again asks again.

``approval_requests.task_instance_id`` is Airflow's id of the task instance try whose gate the
request is (NULL: opened before this revision, or over the API). One request per task try
becomes one per task instance try: the unique constraint on (dag_id, run_id, task_id,
map_index, try_number) is replaced by two partial unique indexes, one over those columns and
the id where there is an id, one over those columns alone where there is none (the rule
before this revision, for the requests it left without an id).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows keep NULL: a request opened before this revision names no task instance.
Downgrading refuses while a task try has more than one request (a run deleted and created
again, and its gate asked again): the old constraint could not hold them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Mirrors airflow_hitl.models.tables.TASK_TRY as of this revision.
TASK_TRY = ["dag_id", "run_id", "task_id", "map_index", "try_number"]
OLD_UNIQUE = "uq_approval_requests_dag_id_run_id_task_id_map_index_try_number"
HAS_ID, NO_ID = "task_instance_id IS NOT NULL", "task_instance_id IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_instance_id", sa.String(length=36), nullable=True))
        batch_op.drop_constraint(OLD_UNIQUE, type_="unique")
        batch_op.create_index(
            "uq_approval_requests_task_instance_try",
            [*TASK_TRY, "task_instance_id"],
            unique=True,
            postgresql_where=sa.text(HAS_ID),
            sqlite_where=sa.text(HAS_ID),
        )
        batch_op.create_index(
            "uq_approval_requests_task_try",
            TASK_TRY,
            unique=True,
            postgresql_where=sa.text(NO_ID),
            sqlite_where=sa.text(NO_ID),
        )


def downgrade() -> None:
    columns = ", ".join(TASK_TRY)
    shared = op.get_bind().execute(
        sa.text(
            f"SELECT count(*) FROM (SELECT {columns} FROM approval_requests "
            "WHERE run_id IS NOT NULL AND task_id IS NOT NULL AND try_number IS NOT NULL "
            f"GROUP BY {columns} HAVING count(*) > 1) AS shared"
        )
    )
    count = shared.scalar_one()
    if count:
        raise RuntimeError(
            f"cannot downgrade below revision 0013: {count} task tries have more than one request (a DAG run "
            "deleted and created again asked again), which the unique constraint of revision 0012 cannot hold"
        )
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index("uq_approval_requests_task_try")
        batch_op.drop_index("uq_approval_requests_task_instance_try")
        batch_op.create_unique_constraint(OLD_UNIQUE, TASK_TRY)
        batch_op.drop_column("task_instance_id")

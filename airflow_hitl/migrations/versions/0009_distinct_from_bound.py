"""Four eyes across a run, and approving exactly this artifact.

``approval_requests.distinct_from`` holds the task ids a gate names in ``distinct_from`` (a JSON
list), or NULL when it names none. Whoever voted on one of those gates in the same run (any map
index, any try) may not vote on this one (:mod:`airflow_hitl.policy`, ``separation_check``).
``approval_requests.bound`` holds a gate's rendered ``bind`` values (name -> text), part of what
approvers are shown and of the request's ``content_digest``, or NULL when it binds none.

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-10

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows keep NULL: a gate opened before this revision names no other gate and binds nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere; mirrors airflow_hitl.models.tables.NullableJsonType.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("distinct_from", JSON, nullable=True))
        batch_op.add_column(sa.Column("bound", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_column("bound")
        batch_op.drop_column("distinct_from")

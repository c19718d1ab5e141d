"""Form inputs: the form a request asks approvers to fill in, and what each voter submitted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows get an empty form / no inputs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere; mirrors airflow_hitl.models.tables.JsonType.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    for table in ("approval_requests", "approval_votes"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("inputs", JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    for table in ("approval_votes", "approval_requests"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("inputs")

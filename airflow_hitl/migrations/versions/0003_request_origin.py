"""Record who opened each request: a task's gate (``task``) or the REST API (``api``).

Existing requests are marked by the audit trail: those whose ``requested`` event came
from the REST API (source ``api``) are ``api``, every other one is ``task``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Mirrors airflow_hitl.models.tables.ORIGINS as of this revision.
ORIGIN_CHECK = "origin IN ('task', 'api')"


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=10), nullable=False, server_default="task"))
        batch_op.create_check_constraint(op.f("ck_approval_requests_origin"), ORIGIN_CHECK)
    op.execute(
        "UPDATE approval_requests SET origin = 'api' WHERE id IN "
        "(SELECT request_id FROM approval_events WHERE event_type = 'requested' AND source = 'api')"
    )


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_approval_requests_origin"), type_="check")
        batch_op.drop_column("origin")

"""SLA of a gate: how long a decision should take, and when a gate was found still waiting past it.

``approval_requests.sla_seconds`` is the gate's ``sla`` (NULL: none); ``sla_breached_at`` is set
once, when the api-server finds the gate still waiting at ``requested_at + sla`` (the gate keeps
waiting: an SLA is not a timeout).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows keep NULL: a gate opened before this revision has no SLA.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sla_seconds", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("sla_breached_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_column("sla_breached_at")
        batch_op.drop_column("sla_seconds")

"""Notification outbox: notices queued with the transition they announce.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Mirrors airflow_hitl.models.tables.OUTBOX_STATUSES as of this revision.
OUTBOX_STATUS = "status IN ('pending', 'sent', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "approval_outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("dedupe_key", sa.String(length=80), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(OUTBOX_STATUS, name=op.f("ck_approval_outbox_status")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_outbox_request_id_approval_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_outbox")),
        sa.UniqueConstraint("request_id", "dedupe_key", name=op.f("uq_approval_outbox_request_id_dedupe_key")),
    )
    op.create_index(op.f("ix_approval_outbox_status_due_at"), "approval_outbox", ["status", "due_at"], unique=False)
    with op.batch_alter_table("approval_notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outbox_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_approval_notifications_outbox_id"), ["outbox_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approval_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_notifications_outbox_id"))
        batch_op.drop_column("outbox_id")
    op.drop_index(op.f("ix_approval_outbox_status_due_at"), table_name="approval_outbox")
    op.drop_table("approval_outbox")

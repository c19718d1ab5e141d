"""Delegation: a user hands their approvals to another for a period, and votes say who cast them.

``approval_delegations`` holds one row per delegation (ended early by setting ``ended_at``,
never deleted: the audit trail speaks of it); ``approval_votes.delegate`` is the person who
actually cast a vote counted as ``user``'s (NULL when they cast it themselves).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere, as airflow_hitl.models.tables.JsonType.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "approval_delegations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("delegator", sa.String(length=250), nullable=False),
        sa.Column("delegate", sa.String(length=250), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dag_ids", JSON, nullable=True),
        sa.Column("created_by", sa.String(length=250), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=250), nullable=True),
        sa.CheckConstraint("delegator <> delegate", name=op.f("ck_approval_delegations_not_self")),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_approval_delegations_period")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_delegations")),
    )
    # "Whom may X decide for at time T": the delegate's rows by end, the still-running ones.
    op.create_index(
        op.f("ix_approval_delegations_delegate_ends_at"),
        "approval_delegations",
        ["delegate", "ends_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_approval_delegations_delegator_ends_at"),
        "approval_delegations",
        ["delegator", "ends_at"],
        unique=False,
    )
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delegate", sa.String(length=250), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.drop_column("delegate")
    op.drop_index(op.f("ix_approval_delegations_delegator_ends_at"), table_name="approval_delegations")
    op.drop_index(op.f("ix_approval_delegations_delegate_ends_at"), table_name="approval_delegations")
    op.drop_table("approval_delegations")

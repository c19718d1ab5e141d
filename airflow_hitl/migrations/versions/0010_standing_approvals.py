"""Standing approvals: an approver's vote given ahead of time, scoped, expiring and counted.

``approval_standing`` holds one row per standing approval (revoked by setting ``revoked_at``,
never deleted: the audit trail and the votes it cast speak of it); ``approval_standing_due``
holds one row per standing approval, request and escalation level that a gate opening or
escalating inside the approval's window owes a vote, settled ``used`` or ``skipped`` (with the
reason) by the api-server.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: Unsettled rows, the only ones the api-server looks for (airflow_hitl.vocabulary.StandingDue.DUE).
DUE = "status = 'due'"


def upgrade() -> None:
    op.create_table(
        "approval_standing",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("approver", sa.String(length=250), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=True),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses_left", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=250), nullable=True),
        sa.CheckConstraint("valid_until > valid_from", name=op.f("ck_approval_standing_window")),
        sa.CheckConstraint("max_uses IS NULL OR max_uses >= 1", name=op.f("ck_approval_standing_max_uses")),
        sa.CheckConstraint(
            "uses_left IS NULL OR (uses_left >= 0 AND uses_left <= max_uses)",
            name=op.f("ck_approval_standing_uses_left"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_standing")),
    )
    op.create_index(
        op.f("ix_approval_standing_dag_id_valid_until"), "approval_standing", ["dag_id", "valid_until"], unique=False
    )
    op.create_index(
        op.f("ix_approval_standing_approver_valid_until"),
        "approval_standing",
        ["approver", "valid_until"],
        unique=False,
    )
    op.create_table(
        "approval_standing_due",
        sa.Column("id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("standing_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('due', 'used', 'skipped')", name=op.f("ck_approval_standing_due_status")),
        sa.ForeignKeyConstraint(
            ["standing_id"],
            ["approval_standing.id"],
            name=op.f("fk_approval_standing_due_standing_id_approval_standing"),
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_standing_due_request_id_approval_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_standing_due")),
        sa.UniqueConstraint(
            "standing_id",
            "request_id",
            "escalation_level",
            name=op.f("uq_approval_standing_due_standing_id_request_id_escalation_level"),
        ),
    )
    op.create_index(
        "ix_approval_standing_due_due",
        "approval_standing_due",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text(DUE),
        sqlite_where=sa.text(DUE),
    )
    op.create_index(
        op.f("ix_approval_standing_due_request_id"), "approval_standing_due", ["request_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_approval_standing_due_request_id"), table_name="approval_standing_due")
    op.drop_index("ix_approval_standing_due_due", table_name="approval_standing_due")
    op.drop_table("approval_standing_due")
    op.drop_index(op.f("ix_approval_standing_approver_valid_until"), table_name="approval_standing")
    op.drop_index(op.f("ix_approval_standing_dag_id_valid_until"), table_name="approval_standing")
    op.drop_table("approval_standing")

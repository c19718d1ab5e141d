"""Create the approval store: requests, votes, audit events, notifications.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere; mirrors airflow_hitl.models.tables.JsonType.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:

    op.create_table(
        "approval_events",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("request_id", sa.String(length=36), nullable=True),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=250), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_approval_events")),
        sa.UniqueConstraint("hash", name=op.f("uq_approval_events_hash")),
    )
    with op.batch_alter_table("approval_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_approval_events_request_id_seq"), ["request_id", "seq"], unique=False
        )

    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=True),
        sa.Column("task_id", sa.String(length=250), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("context", JSON, nullable=False),
        sa.Column("approval_type", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("requested_by", sa.String(length=250), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timeout_seconds", sa.Double(), nullable=True),
        sa.Column("timeout_action", sa.String(length=20), nullable=True),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("escalation_targets", JSON, nullable=False),
        sa.Column("escalation_final_action", sa.String(length=20), nullable=True),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("require_all", sa.Boolean(), nullable=False),
        sa.Column("allowed_approvers", JSON, nullable=False),
        sa.Column("allowed_roles", JSON, nullable=False),
        sa.Column("allow_self_approval", sa.Boolean(), nullable=False),
        sa.Column("on_reject", sa.String(length=10), nullable=False),
        sa.Column("decided_by", sa.String(length=250), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision", sa.String(length=20), nullable=True),
        sa.Column("decision_source", sa.String(length=20), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("notify", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'rejected', 'timeout', 'escalated', 'cancelled')",
            name=op.f("ck_approval_requests_state"),
        ),
        sa.CheckConstraint(
            "timeout_action IS NULL OR timeout_action IN ('approve', 'reject', 'escalate')",
            name=op.f("ck_approval_requests_timeout_action"),
        ),
        sa.CheckConstraint("required_approvals >= 1", name=op.f("ck_approval_requests_required_approvals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
        sa.UniqueConstraint(
            "dag_id",
            "run_id",
            "task_id",
            "map_index",
            "try_number",
            name=op.f("uq_approval_requests_dag_id_run_id_task_id_map_index_try_number"),
        ),
    )
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_approval_requests_dag_id_run_id_task_id"),
            ["dag_id", "run_id", "task_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_approval_requests_decided_at"), ["decided_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_approval_requests_decided_by"), ["decided_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_approval_requests_requested_by"), ["requested_by"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_approval_requests_state_expires_at"), ["state", "expires_at"], unique=False
        )

    op.create_table(
        "approval_notifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'read')", name=op.f("ck_approval_notifications_status")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_notifications_request_id_approval_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_notifications")),
    )
    with op.batch_alter_table("approval_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_approval_notifications_recipient_status"), ["recipient", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_approval_notifications_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_approval_notifications_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )

    op.create_table(
        "approval_votes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("user", sa.String(length=250), nullable=False),
        sa.Column("user_roles", JSON, nullable=False),
        sa.Column("vote", sa.String(length=10), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("vote IN ('approve', 'reject')", name=op.f("ck_approval_votes_vote")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_votes_request_id_approval_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_votes")),
        sa.UniqueConstraint("request_id", "user", name=op.f("uq_approval_votes_request_id_user")),
    )


def downgrade() -> None:

    op.drop_table("approval_votes")
    with op.batch_alter_table("approval_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_notifications_status_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_approval_notifications_request_id"))
        batch_op.drop_index(batch_op.f("ix_approval_notifications_recipient_status"))

    op.drop_table("approval_notifications")
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_requests_state_expires_at"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_requested_by"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_decided_by"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_decided_at"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_dag_id_run_id_task_id"))

    op.drop_table("approval_requests")
    with op.batch_alter_table("approval_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_events_request_id_seq"))

    op.drop_table("approval_events")

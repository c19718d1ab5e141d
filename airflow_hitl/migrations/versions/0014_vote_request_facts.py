"""Analytics: each vote carries its request's DAG, task and opening time; covering indexes without the join.

The approvers' figures of a report (``airflow_hitl.analytics``) are per voter, over the votes
of the requests the report's filters keep: DAG, task, and when the request was opened. Read
through a join, every report hashed 100,000 requests and sorted 100,000 votes by voter: most of
a report's time. ``approval_votes.dag_id``, ``task_id`` and ``requested_at`` are copies of the
request's, which never change once it is opened (written with the vote, in the same
statement); ``ix_approval_votes_analytics`` holds every column the approvers' statement reads,
in voter order: it reads the index alone, and groups voters without a sort or a join.
``ix_approval_requests_analytics`` (revision 0012) loses its last column, the request's id,
which only that join read: the index is half as large, and every other statement of a report
reads it faster.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing votes get their request's values (one UPDATE); the columns are then made NOT NULL
(``dag_id`` and ``requested_at``; a request over the API has no task).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

INDEX = "ix_approval_votes_analytics"
# Mirrors airflow_hitl.models.tables.VOTE_ANALYTICS as of this revision.
COLUMNS = ["user", "dag_id", "task_id", "requested_at", "created_at", "vote"]
REQUEST_INDEX = "ix_approval_requests_analytics"
# Mirrors airflow_hitl.models.tables.REQUEST_ANALYTICS as of this revision; revision 0012's had "id" last.
REQUEST_COLUMNS = ["dag_id", "task_id", "state", "escalation_level", "requested_at", "decided_at", "sla_breached_at"]
# Mirrors airflow_hitl.models.tables.UtcDateTime's storage: timestamptz on PostgreSQL.
_TIME = sa.DateTime(timezone=True)
BACKFILL = (
    "UPDATE approval_votes SET "
    "dag_id = (SELECT r.dag_id FROM approval_requests r WHERE r.id = approval_votes.request_id), "
    "task_id = (SELECT r.task_id FROM approval_requests r WHERE r.id = approval_votes.request_id), "
    "requested_at = (SELECT r.requested_at FROM approval_requests r WHERE r.id = approval_votes.request_id)"
)
# PostgreSQL: one join instead of three correlated reads per vote.
BACKFILL_POSTGRES = (
    "UPDATE approval_votes AS v SET dag_id = r.dag_id, task_id = r.task_id, requested_at = r.requested_at "
    "FROM approval_requests AS r WHERE r.id = v.request_id"
)


def upgrade() -> None:
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dag_id", sa.String(length=250), nullable=True))
        batch_op.add_column(sa.Column("task_id", sa.String(length=250), nullable=True))
        batch_op.add_column(sa.Column("requested_at", _TIME, nullable=True))
    op.execute(BACKFILL_POSTGRES if op.get_bind().dialect.name == "postgresql" else BACKFILL)
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.alter_column("dag_id", existing_type=sa.String(length=250), nullable=False)
        batch_op.alter_column("requested_at", existing_type=_TIME, nullable=False)
        batch_op.create_index(INDEX, COLUMNS, unique=False)
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index(REQUEST_INDEX)
        batch_op.create_index(REQUEST_INDEX, REQUEST_COLUMNS, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index(REQUEST_INDEX)
        batch_op.create_index(REQUEST_INDEX, [*REQUEST_COLUMNS, "id"], unique=False)
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.drop_column("requested_at")
        batch_op.drop_column("task_id")
        batch_op.drop_column("dag_id")

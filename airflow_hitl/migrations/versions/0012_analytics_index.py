"""Analytics: a covering index of the requests in gate order, and (PostgreSQL) statistics of their UTC day.

``ix_approval_requests_analytics`` holds every column of a request that
``airflow_hitl.analytics`` reads, in (dag_id, task_id) order: a report reads the index, not
the rows, and groups gates without sorting 100,000 of them. ``st_approval_requests_day``
tells PostgreSQL's planner how many distinct UTC days the requests span, so the daily figures
are hashed rather than sorted (the expression is the one the report groups by).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = ["dag_id", "task_id", "state", "escalation_level", "requested_at", "decided_at", "sla_breached_at", "id"]
DAY_STATISTICS = (
    "CREATE STATISTICS st_approval_requests_day ON ((timezone('UTC', requested_at))::date) FROM approval_requests"
)


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.create_index("ix_approval_requests_analytics", COLUMNS, unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DAY_STATISTICS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_approval_requests_day")
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_approval_requests_analytics")

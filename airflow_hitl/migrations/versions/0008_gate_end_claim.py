"""Who ends a closed gate's task: one claim per request, taken by exactly one party.

``approval_requests.task_ended_by`` names the party that claimed ending the gate's task in Airflow
(the api-server's gate closer or the gate's trigger, with its host and process) and
``task_ended_at`` when; both NULL until a party claims it. The claim is one conditional UPDATE
(:meth:`airflow_hitl.gate_ends.GateEnds.claim_gate_end`), so with any number of
api-servers and triggerers only its holder hands Airflow the task's end.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows keep NULL: a gate closed before this revision was ended already, and one still
open is claimed when it closes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_ended_by", sa.String(length=250), nullable=True))
        batch_op.add_column(sa.Column("task_ended_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_column("task_ended_at")
        batch_op.drop_column("task_ended_by")

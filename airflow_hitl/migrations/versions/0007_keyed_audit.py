"""Keyed audit chain, and the digest each vote was cast on.

``approval_events.key_id`` names the key an event's link was computed under (the fingerprint
of ``[hitl] audit_key``, never the key): NULL is a plain SHA-256 link, as every event before
this revision. ``approval_votes.content_digest`` is the SHA-256 of what the voter was shown
when they voted (NULL for votes cast before this revision, or without a digest).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Self-contained: only ``revision`` / ``down_revision`` need changing to reorder it.
Existing rows keep NULL in both columns. A downgrade drops both: the keyed events written
since then no longer verify with the older airflow-hitl, which knows only SHA-256 links.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_votes", schema=None) as batch_op:
        batch_op.drop_column("content_digest")
    with op.batch_alter_table("approval_events", schema=None) as batch_op:
        batch_op.drop_column("key_id")

"""Alembic migrations of the approval store."""

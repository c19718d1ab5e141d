"""Every trigger test resolves the store by itself: point it at the test store (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _triggers_read_the_test_store(store_url: str) -> str:
    """Apply the shared :func:`tests.conftest.store_url` to every test here."""
    return store_url

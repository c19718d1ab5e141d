"""The ``/hitl`` app over a test's own SQLite store, for the routes that answer emailed links and Slack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from airflow_hitl.api.app import create_app
from airflow_hitl.manager import ApprovalManager


@pytest.fixture
def client(sqlite_manager: ApprovalManager) -> Iterator[TestClient]:
    """The ``/hitl`` app over this test's store, through a real ASGI client."""
    app = create_app()
    app.state.hitl_manager = sqlite_manager
    with TestClient(app) as test_client:
        yield test_client

"""Airflow's real api-server app with real tokens: the fixtures and helpers of the API tests.

The fixtures (``airflow_api``, ``api_manager``, ``api``) are registered in tests/conftest.py,
so the tests of tests/api and tests/notifications share one app per session.

One Airflow api-server app per test session (``airflow.api_fastapi.app.create_app``), built
in-process over a temporary ``AIRFLOW_HOME`` with a migrated SQLite metadata DB (Airflow
checks every token's ``jti`` against it) and SimpleAuthManager users:

========  =======  ==============================================
user      role     what Airflow lets them do with DAGs
========  =======  ==============================================
admin     admin    everything
op        op       read and edit
viewer    viewer   read only
nobody    (none)   nothing
alice     user     read and edit (named approver in policy tests)
bob       user     read and edit
========  =======  ==============================================

Tokens come from the app's own ``POST /auth/token``; our plugin is loaded by its entry
point and mounted at ``/hitl`` exactly as on a real api-server. Each test gets a fresh
approval store (a SQLite file in ``tmp_path``) injected through ``app.state.hitl_manager``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount

from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.records import Approval
from tests.helpers import migrated_sqlite_url

USERS = {
    "admin": "admin",
    "op": "op",
    "viewer": "viewer",
    "nobody": "",
    "alice": "user",
    "bob": "user",
}
# 64 bytes or more, or PyJWT warns that the HS512 key is short.
JWT_SECRET = "hitl-api-tests-" + "x" * 64
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
API = "/hitl/api/v1/approvals"


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        # The tests inject their own store; never let a stray lookup reach a real one.
        "AIRFLOW_HITL_STORE_URL": f"sqlite:///{home / 'unused-hitl.db'}",
    }


@dataclass(kw_only=True)
class AirflowApi:
    """Airflow's api-server app under test, its client and one token per user."""

    app: FastAPI
    hitl_app: FastAPI
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str | None) -> dict[str, str]:
        """Authorization headers of ``user`` (none for ``None``)."""
        return {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}


@pytest.fixture(scope="session")
def airflow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowApi]:
    """Build Airflow's api-server app once per session and log every test user in."""
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    (home / "plugins").mkdir()
    env = _airflow_env(home)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # Migrating in a child process keeps Airflow's migration logging and globals out of ours.
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )
    from airflow import settings

    # Airflow may already have been imported with another AIRFLOW_HOME by an earlier test
    # module; point its ORM at this session's metadata DB.
    settings.configure_vars()
    settings.reconfigure_orm()

    from airflow.api_fastapi.app import create_app, purge_cached_app

    app = create_app()
    hitl_app = next(
        r.app for r in app.routes if isinstance(r, Mount) and r.path == "/hitl" and isinstance(r.app, FastAPI)
    )
    client = TestClient(app)
    passwords = json.loads((home / "passwords.json").read_text())
    api = AirflowApi(app=app, hitl_app=hitl_app, client=client)
    for user in USERS:
        response = client.post("/auth/token", json={"username": user, "password": passwords[user]})
        assert response.status_code == 201, response.text
        api.tokens[user] = response.json()["access_token"]
    yield api

    client.close()
    purge_cached_app()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    settings.configure_vars()
    settings.reconfigure_orm()


@contextmanager
def known_dags(*dag_ids: str, max_active_tasks: int = 1) -> Iterator[None]:
    """Rows of ``dag_ids`` in Airflow's metadata DB while the block runs, as the dag processor writes them.

    The DB is the ``airflow_api`` session's (the api-server app's); each call has a bundle of its own.
    """
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    bundle = f"hitl_tests_{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        session.add(DagBundleModel(name=bundle))
        session.flush()  # the DAG rows name the bundle
        for dag_id in dag_ids:
            session.add(
                DagModel(
                    dag_id=dag_id,
                    bundle_name=bundle,
                    max_active_tasks=max_active_tasks,
                    max_consecutive_failed_dag_runs=0,
                    has_task_concurrency_limits=False,
                )
            )
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(delete(DagModel.__table__).where(DagModel.__table__.c.dag_id.in_(dag_ids)))
            session.execute(delete(DagBundleModel.__table__).where(DagBundleModel.__table__.c.name == bundle))


@contextmanager
def serving(airflow_api: AirflowApi, store_url: str) -> Iterator[ApprovalManager]:
    """The mounted ``/hitl`` app over the (migrated) store at ``store_url`` while the block runs."""
    store = ApprovalStore(url=store_url)
    migrate(store)
    manager = ApprovalManager(store=store)
    airflow_api.hitl_app.state.hitl_manager = manager
    try:
        yield manager
    finally:
        airflow_api.hitl_app.state.hitl_manager = None
        store.dispose()


@pytest.fixture
def api_manager(airflow_api: AirflowApi, tmp_path: Path) -> Iterator[ApprovalManager]:
    """A fresh approval store in ``tmp_path``, used by the mounted ``/hitl`` app for this test."""
    with serving(airflow_api, migrated_sqlite_url(tmp_path / "hitl.db")) as manager:
        yield manager


@pytest.fixture
def api(airflow_api: AirflowApi, api_manager: ApprovalManager) -> AirflowApi:
    """The api-server app, wired to this test's approval store."""
    return airflow_api


def open_request(manager: ApprovalManager, **overrides: Any) -> Approval:
    """Open a pending request the way the operator would (requested by ``trigger-user``)."""
    fields: dict[str, Any] = {
        "dag_id": "billing",
        "run_id": "manual__1",
        "task_id": "gate",
        "title": "Load the billing extract",
        "requested_by": "trigger-user",
        "context": {"rows": 10},
    }
    fields.update(overrides)
    return manager.create(ApprovalSpec(**fields))


def snapshot(manager: ApprovalManager) -> tuple[list[dict[str, Any]], int]:
    """Every request as a dict, and the number of audit events: equal before and after = no change."""
    items, _ = manager.queries.list(limit=10_000, order_by="requested_at")
    return [a.to_dict() for a in items], len(manager.audit.events())


def fill_id(value: Any, approval_id: str) -> Any:
    """``value`` (a path or a JSON body) with every ``{id}`` replaced by ``approval_id``."""
    if isinstance(value, str):
        return value.replace("{id}", approval_id)
    if isinstance(value, list):
        return [fill_id(v, approval_id) for v in value]
    if isinstance(value, dict):
        return {k: fill_id(v, approval_id) for k, v in value.items()}
    return value

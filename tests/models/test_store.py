"""Store resolution: the Airflow connection, the SQLite fallback, and the override."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from airflow.sdk import Connection
from sqlalchemy.engine import make_url

from airflow_hitl.exceptions import StoreError
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import (
    aresolve_store_url,
    executor_names,
    resolve_store_url,
    url_from_connection,
)


class TestUrlFromConnection:
    def test_postgres_connection_uses_psycopg3(self) -> None:
        conn = Connection(
            conn_id="hitl_default",
            conn_type="postgres",
            host="db.internal",
            port=6432,
            login="hitl",
            password="p@ss/word",
            schema="approvals",
            extra=json.dumps({"sslmode": "require", "other": 1}),
        )
        url = make_url(url_from_connection(conn))
        assert url.drivername == "postgresql+psycopg"
        assert (url.host, url.port, url.username, url.password, url.database) == (
            "db.internal",
            6432,
            "hitl",
            "p@ss/word",
            "approvals",
        )
        assert dict(url.query) == {"sslmode": "require"}

    def test_sqlite_connection(self, tmp_path: Path) -> None:
        conn = Connection(conn_id="hitl_default", conn_type="sqlite", host=str(tmp_path / "a.db"))
        assert url_from_connection(conn) == f"sqlite:///{tmp_path / 'a.db'}"

    def test_other_types_are_refused_with_the_reason(self) -> None:
        with pytest.raises(StoreError, match="needs postgres or sqlite"):
            url_from_connection(Connection(conn_id="hitl_default", conn_type="mysql", host="x"))


class TestResolve:
    def test_connection_from_environment(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("AIRFLOW_HITL_STORE_URL", raising=False)
        monkeypatch.setenv(
            "AIRFLOW_CONN_HITL_DEFAULT", json.dumps({"conn_type": "postgres", "host": "pg", "schema": "hitl"})
        )
        assert make_url(resolve_store_url()).host == "pg"
        assert make_url(asyncio.run(aresolve_store_url())).host == "pg"

    def test_sqlite_fallback_under_airflow_home(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("AIRFLOW_HITL_STORE_URL", raising=False)
        monkeypatch.delenv("AIRFLOW_CONN_HITL_DEFAULT", raising=False)
        monkeypatch.setenv("AIRFLOW__HITL__SQLITE_PATH", str(tmp_path / "fallback.db"))
        assert resolve_store_url() == f"sqlite:///{tmp_path / 'fallback.db'}"
        assert asyncio.run(aresolve_store_url()) == f"sqlite:///{tmp_path / 'fallback.db'}"

    def test_override_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_HITL_STORE_URL", "postgresql://u@h/d")
        assert resolve_store_url() == "postgresql+psycopg://u@h/d"


@pytest.fixture
def no_store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No override, no ``hitl_default`` connection, AIRFLOW_HOME in ``tmp_path``, LocalExecutor."""
    for name in ("AIRFLOW_HITL_STORE_URL", "AIRFLOW_CONN_HITL_DEFAULT", "AIRFLOW__HITL__SQLITE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__HITL__CONN_ID", "hitl_default")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    return tmp_path


def _resolve_both(conn_id: str | None = None) -> tuple[str, str]:
    return resolve_store_url(conn_id), asyncio.run(aresolve_store_url(conn_id))


class TestNamedConnectionIsNeverAFallback:
    @pytest.mark.parametrize("resolver", ["sync", "async"])
    def test_a_gate_or_cli_conn_id_that_is_not_defined_is_an_error_naming_it(
        self, no_store_env: Path, resolver: str
    ) -> None:
        with pytest.raises(StoreError, match="'approvals_pg' is not defined"):
            if resolver == "sync":
                resolve_store_url("approvals_pg")
            else:
                asyncio.run(aresolve_store_url("approvals_pg"))
        assert not (no_store_env / "hitl.db").exists()

    def test_naming_the_default_explicitly_is_an_error_too(self, no_store_env: Path) -> None:
        with pytest.raises(StoreError, match="'hitl_default' is not defined"):
            resolve_store_url("hitl_default")

    def test_a_configured_conn_id_that_is_not_defined_is_an_error(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__CONN_ID", "approvals_pg")
        with pytest.raises(StoreError, match="'approvals_pg' is not defined"):
            resolve_store_url()

    def test_a_defined_named_connection_is_used(self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_APPROVALS_PG", json.dumps({"conn_type": "postgres", "host": "pg"}))
        assert [make_url(url).host for url in _resolve_both("approvals_pg")] == ["pg", "pg"]


class TestNoSplitBrain:
    @pytest.mark.parametrize(
        "executor",
        [
            "LocalExecutor",
            "SequentialExecutor",
            "airflow.executors.local_executor.LocalExecutor",
            "LocalExecutor,DebugExecutor",
        ],
        ids=["local", "sequential", "local-path", "local-list"],
    )
    def test_single_machine_executors_fall_back_to_sqlite(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch, executor: str
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
        expected = f"sqlite:///{no_store_env / 'hitl.db'}"
        assert _resolve_both() == (expected, expected)

    @pytest.mark.parametrize(
        ("executor", "named"),
        [
            ("CeleryExecutor", "CeleryExecutor"),
            (
                "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor",
                "KubernetesExecutor",
            ),
            ("LocalExecutor,CeleryExecutor", "CeleryExecutor"),
            ("edge:airflow.providers.edge3.executors.EdgeExecutor", "EdgeExecutor"),
            ("LocalExecutor;team_a=CeleryExecutor", "CeleryExecutor"),
        ],
        ids=["celery", "kubernetes-path", "hybrid", "edge-alias", "multi-team"],
    )
    @pytest.mark.parametrize("resolver", ["sync", "async"])
    def test_remote_executors_refuse_the_fallback_naming_hitl_default(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch, executor: str, named: str, resolver: str
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
        with pytest.raises(StoreError, match=rf"'hitl_default' is not defined, and the executor {named}") as err:
            if resolver == "sync":
                resolve_store_url()
            else:
                asyncio.run(aresolve_store_url())
        assert "define the connection 'hitl_default'" in str(err.value)
        assert not (no_store_env / "hitl.db").exists()

    def test_an_explicit_sqlite_path_is_the_shared_file_any_executor_may_use(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
        monkeypatch.setenv("AIRFLOW__HITL__SQLITE_PATH", str(no_store_env / "shared" / "hitl.db"))
        expected = f"sqlite:///{no_store_env / 'shared' / 'hitl.db'}"
        assert _resolve_both() == (expected, expected)

    def test_a_defined_connection_works_with_any_executor(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
        monkeypatch.setenv("AIRFLOW_CONN_HITL_DEFAULT", json.dumps({"conn_type": "postgres", "host": "pg"}))
        assert make_url(resolve_store_url()).host == "pg"

    def test_a_gate_on_celery_without_a_store_fails_at_once(
        self, no_store_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
        with pytest.raises(StoreError, match="'hitl_default' is not defined"):
            ApprovalManager()
        assert not (no_store_env / "hitl.db").exists()


class TestExecutorNames:
    @pytest.mark.parametrize(
        ("value", "names"),
        [
            ("LocalExecutor", ["LocalExecutor"]),
            (" CeleryExecutor , LocalExecutor ", ["CeleryExecutor", "LocalExecutor"]),
            ("my.module.MyExecutor", ["MyExecutor"]),
            ("alias:my.module.MyExecutor", ["MyExecutor"]),
            (
                "LocalExecutor;team1=CeleryExecutor,KubernetesExecutor",
                ["LocalExecutor", "CeleryExecutor", "KubernetesExecutor"],
            ),
            ("", []),
        ],
        ids=["name", "list", "path", "alias", "multi-team", "empty"],
    )
    def test_every_airflow_spelling(self, value: str, names: list[str]) -> None:
        assert executor_names(value) == names

"""Store resolution: the Airflow connection, the SQLite fallback, and the override."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from airflow.sdk import Connection
from sqlalchemy.engine import make_url

from airflow_hitl.exceptions import StoreError
from airflow_hitl.models.store import aresolve_store_url, resolve_store_url, url_from_connection


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

"""Store resolution: the Airflow connection, the SQLite fallback, and the override."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.sdk import Connection
from sqlalchemy import text
from sqlalchemy.engine import make_url

from airflow_hitl.exceptions import StoreError, StoreUnavailable
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import (
    NOTIFY_CHANNEL,
    ApprovalStore,
    aresolve_store_url,
    executor_names,
    fresh_login,
    resolve_store_url,
    url_from_connection,
)
from airflow_hitl.outbox import listen_conninfo, listen_for_transitions


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


def _pg_connection(pg_url: str, *, extra: dict[str, Any], conn_id: str = "hitl_pg") -> Connection:
    # A postgres connection to this session's test database, as an administrator defines one.
    url = make_url(pg_url)
    return Connection(
        conn_id=conn_id,
        conn_type="postgres",
        host=url.host,
        port=url.port,
        login=url.username,
        schema=url.database,
        extra=json.dumps(extra),
    )


def _show(store: ApprovalStore, *names: str) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in names}


class TestPostgresConnectionThroughThePostgresHook:
    """The store reads a postgres connection as PostgresHook does: every libpq extra, token logins."""

    def test_every_libpq_extra_reaches_the_url(self) -> None:
        conn = Connection(
            conn_id="hitl_default",
            conn_type="postgres",
            host="db.internal",
            login="hitl",
            password="secret",
            schema="approvals",
            extra=json.dumps(
                {
                    "sslmode": "verify-full",
                    "sslrootcert": "/etc/ca.pem",
                    "application_name": "hitl",
                    "target_session_attrs": "read-write",
                    "keepalives": True,
                    "keepalives_idle": 30,
                    "options": "-c search_path=hitl",
                    "sqlalchemy_query": {"gssencmode": "disable"},
                    # The hook's own options and unknown keys are not libpq's: left out.
                    "cursor": "dictcursor",
                    "aws_conn_id": "aws_default",
                    "sqlalchemy_scheme": "postgresql+psycopg2",
                    "not_a_libpq_keyword": "x",
                }
            ),
        )
        url = make_url(url_from_connection(conn))
        assert url.drivername == "postgresql+psycopg", "psycopg 3 whatever sqlalchemy_scheme says"
        assert (url.username, url.password, url.host, url.database) == ("hitl", "secret", "db.internal", "approvals")
        assert dict(url.query) == {
            "sslmode": "verify-full",
            "sslrootcert": "/etc/ca.pem",
            "application_name": "hitl",
            "target_session_attrs": "read-write",
            "keepalives": "1",
            "keepalives_idle": "30",
            "options": "-c search_path=hitl",
            "gssencmode": "disable",
        }

    def test_extras_reach_the_real_server_and_our_timeouts_still_hold(self, pg_url: str) -> None:
        conn = _pg_connection(
            pg_url,
            extra={
                "application_name": "hitl-store-test",
                "options": "-c work_mem=8MB",
                "keepalives_idle": 17,
                "sslmode": "disable",
                "cursor": "dictcursor",
            },
        )
        store = ApprovalStore(url=url_from_connection(conn))
        try:
            assert _show(store, "application_name", "work_mem", "statement_timeout") == {
                "application_name": "hitl-store-test",
                "work_mem": "8MB",
                "statement_timeout": "15s",  # [hitl] store_statement_timeout, appended to the connection's options
            }
            with store.engine.connect() as c:
                raw = c.connection.dbapi_connection
                assert raw is not None
                params = raw.info.get_parameters()  # type: ignore[attr-defined]
                assert (params["keepalives_idle"], params["sslmode"]) == ("17", "disable")
                row = c.execute(text("SELECT 1 AS a, 2 AS b")).one()
                assert tuple(row) == (1, 2), "the hook's cursor extra does not change SQLAlchemy's rows"
            # The LISTEN connections (outbox drainer, gate closer, poller) read the same URL.
            info = {**listen_conninfo(store.url), **fresh_login(store.url)}
            with psycopg.connect(autocommit=True, **info) as listener:
                assert listener.execute("SHOW application_name").fetchone() == ("hitl-store-test",)
        finally:
            store.dispose()

    def test_a_token_login_asks_the_hook_for_a_fresh_token_per_connection(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        issued: list[str] = []

        def token(self: PostgresHook, conn: Any) -> tuple[str, str, int]:
            # Stands in for AWS (generate_db_auth_token): a new short-lived password each call.
            issued.append(f"token-{len(issued) + 1}")
            return conn.login, issued[-1], conn.port

        monkeypatch.setattr(PostgresHook, "get_iam_token", token)
        conn = _pg_connection(
            pg_url, conn_id="hitl_iam", extra={"iam": True, "aws_conn_id": "aws_hitl", "application_name": "hitl-iam"}
        )
        url = url_from_connection(conn)
        assert issued == [], "resolving the store fetches no token (thousands of triggers resolve it)"
        assert make_url(url).password is None, "a token never sits in the URL, where it would expire"
        store = ApprovalStore(url=url)
        try:
            with store.engine.connect() as c:
                raw = c.connection.dbapi_connection
                assert raw is not None
                assert raw.info.password == "token-1"  # type: ignore[attr-defined]
                assert c.execute(text("SHOW application_name")).scalar_one() == "hitl-iam"
            with store.engine.connect() as c:  # the pooled connection: no new token needed
                assert c.connection.dbapi_connection.info.password == "token-1"  # type: ignore[union-attr]
            store.engine.dispose()
            with store.engine.connect() as c:  # a new connection, a new token
                assert c.connection.dbapi_connection.info.password == "token-2"  # type: ignore[union-attr]
            assert fresh_login(url)["password"] == "token-3", "LISTEN connections log in afresh too"
        finally:
            store.dispose()

    def test_a_token_that_cannot_be_had_is_the_store_being_unavailable(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        def no_token(self: PostgresHook, conn: Any) -> tuple[str, str, int]:
            raise RuntimeError("sts.amazonaws.com unreachable")

        monkeypatch.setattr(PostgresHook, "get_iam_token", no_token)
        url = url_from_connection(
            _pg_connection(pg_url, conn_id="hitl_iam_down", extra={"iam": True, "application_name": "hitl-iam-down"})
        )
        with pytest.raises(StoreUnavailable, match="could not get a login token for connection 'hitl_iam_down'"):
            fresh_login(url)

    def test_other_stores_need_no_fresh_login(self, pg_url: str) -> None:
        assert fresh_login(pg_url) == {}
        assert fresh_login(url_from_connection(_pg_connection(pg_url, extra={}))) == {}

    def test_the_listen_loop_logs_in_with_a_fresh_token(self, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        issued: list[str] = []

        def token(self: PostgresHook, conn: Any) -> tuple[str, str, int]:
            issued.append(f"listen-token-{len(issued) + 1}")
            return conn.login, issued[-1], conn.port

        monkeypatch.setattr(PostgresHook, "get_iam_token", token)
        url = url_from_connection(
            _pg_connection(pg_url, conn_id="hitl_iam_listen", extra={"iam": True, "application_name": "hitl-listen"})
        )
        stop, heard, up = threading.Event(), queue.Queue[str](), threading.Event()
        listener = threading.Thread(
            target=listen_for_transitions,
            kwargs={
                "store_url": url,
                "stop": stop,
                "on_payload": heard.put,
                "on_listening": lambda ok: ok and up.set(),
            },
            daemon=True,
        )
        listener.start()
        try:
            assert up.wait(30), "LISTEN with the hook's token"
            assert issued == ["listen-token-1"]
            with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as other:
                other.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'req-1'")
            assert heard.get(timeout=30) == "req-1"
        finally:
            stop.set()
            listener.join(10)

"""The approval store's engine: PostgreSQL through ``hitl_default``, or a SQLite file.

Workers, the triggerer and the api-server all open the store the same way: look up the
Airflow connection named by ``[hitl] conn_id``; when the default ``hitl_default`` is not
defined on a single-machine deployment, use a SQLite file under ``AIRFLOW_HOME``. One
engine per URL per process.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from airflow_hitl.exceptions import StoreError, StoreUnavailable
from airflow_hitl.models.schema import ensure_schema
from airflow_hitl.settings import HitlSettings, option

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

# Channel on which committed decisions are announced (PostgreSQL LISTEN/NOTIFY).
NOTIFY_CHANNEL = "hitl_approvals"
# Channel on which a committed transaction that queued notices wakes the outbox drainers, so
# that the many transitions that queue none (votes short of quorum, requests with nobody to
# notify) cost them nothing.
OUTBOX_CHANNEL = "hitl_outbox"
#: ``Session.info`` key set by a transaction that queued notices (it then NOTIFYs OUTBOX_CHANNEL).
OUTBOX_QUEUED = "hitl_outbox_queued"

_READ_ONLY = "hitl_read_only"
DEFAULT_CONN_ID = option("conn_id").default
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}


def url_from_connection(conn: Any) -> str:
    """Build a SQLAlchemy URL from an Airflow connection (``postgres`` or ``sqlite`` type).

    A ``postgres`` connection goes through :func:`postgres_url` (``PostgresHook``); a token
    login's connection is remembered, so that the store's engine and LISTEN connections opened
    on this URL fetch a fresh token for each new connection (:func:`fresh_login`).
    """
    conn_type = (conn.conn_type or "").lower()
    if conn_type in {"postgres", "postgresql"}:
        return postgres_url(conn)
    if conn_type == "sqlite":
        path = conn.host or conn.schema
        if not path:
            raise StoreError(f"sqlite connection {conn.conn_id!r} names no file (put the path in host)")
        return f"sqlite:///{os.path.abspath(os.path.expanduser(path))}"
    raise StoreError(
        f"connection {conn.conn_id!r} has type {conn.conn_type!r}; the approval store needs postgres or sqlite"
    )


def postgres_url(conn: Any) -> str:
    """The store's URL for a ``postgres`` connection, as ``PostgresHook`` reads the connection.

    What the hook does with a connection, the store does too, so one connection serves the
    store and every other Airflow user of it alike:

    * host, port, login, password, database and the ``sqlalchemy_query`` extra: the hook's
      ``sqlalchemy_url``;
    * every other extra the hook hands psycopg (``PostgresHook.get_conn``: all but its
      ``ignored_extra_options``) that is a libpq connection keyword (``sslmode``, ``sslcert``,
      ``options``, ``application_name``, ``keepalives*``, ``target_session_attrs``,
      ``passfile``, ...), as URL query, which SQLAlchemy's psycopg dialect passes to
      ``psycopg.connect`` and the LISTEN connections read too (JSON booleans become libpq's
      ``1``/``0``). An extra that is no libpq keyword is left out, as before: psycopg would
      refuse every connection over it. The ``cursor`` extra is one of the hook's own options,
      not the connection's: it picks the rows of the hook's cursors, and SQLAlchemy reads its
      own rows, so it is not applied;
    * token logins (the ``iam`` extra: AWS RDS, Redshift, Redshift Serverless, or Azure with
      ``azure_conn_id``): the hook's ``get_iam_token``. Such a token expires (an RDS token
      after 15 minutes) while the pool keeps opening connections for the life of the process,
      so the URL carries no password; the engine asks the hook for a token as it opens each
      connection (SQLAlchemy's ``do_connect`` event, see :func:`fresh_login`).

    The driver stays psycopg 3 (``postgresql+psycopg``) whatever ``sqlalchemy_scheme`` says,
    and the ``[hitl] store_*`` timeouts bound every connection of the engine whatever the
    connection's ``connect_timeout`` (its ``options`` are kept, the statement timeout appended).
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(connection=conn, sqlalchemy_scheme=_PG_DRIVER)
    extra = conn.extra_dejson
    if _is_token_login(conn):
        # hook.sqlalchemy_url would fetch a token now and write it into the URL (and into the
        # connection), where it would outlive its expiry: the fields without it, as it reads them.
        query = extra.get("sqlalchemy_query") or {}
        if not isinstance(query, dict):
            raise StoreError(f"connection {conn.conn_id!r}: the extra sqlalchemy_query must be an object")
        url = URL.create(
            _PG_DRIVER,
            username=conn.login or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
            query=query,
        )
    else:
        try:
            url = hook.sqlalchemy_url
        except (TypeError, ValueError) as err:
            raise StoreError(f"connection {conn.conn_id!r}: {err}") from err
        url = url.set(
            drivername=_PG_DRIVER,
            username=url.username or None,
            password=url.password or None,
            host=url.host or None,
            database=url.database or None,
        )
    ignored = set(getattr(hook, "ignored_extra_options", ())) | _CONNECTION_FIELDS
    keywords = _libpq_keywords()
    params = {k: _libpq_value(v) for k, v in extra.items() if k in keywords and k not in ignored and v is not None}
    rendered = url.update_query_dict(params).render_as_string(hide_password=False)
    if _is_token_login(conn):
        _token_logins[rendered] = conn
    else:  # the same URL without a token login now (the connection was edited)
        _token_logins.pop(rendered, None)
    return rendered


_PG_DRIVER = "postgresql+psycopg"
# The connection's own fields (host, port, login, password, schema) say these; an extra of the
# same name would make SQLAlchemy read the URL's host as a list of hosts.
_CONNECTION_FIELDS = frozenset({"host", "hostaddr", "port", "user", "password", "dbname"})
#: URL of a token-login store -> its connection, for a fresh token per new connection.
_token_logins: dict[str, Any] = {}


def _is_token_login(conn: Any) -> bool:
    return bool(conn.extra_dejson.get("iam", False))


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    # libpq's own list of connection keywords (the one psycopg checks a connection against).
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def _libpq_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def fresh_login(url: str) -> dict[str, Any]:
    """psycopg arguments that log in to the store at ``url`` now: a new token for a token login.

    Empty for every other store (its URL holds its password). For a token login, the
    ``user``, ``password`` and ``port`` ``PostgresHook.get_iam_token`` returns (Redshift may
    name another user; the port defaults by service). Called for each new connection, never
    cached: a token is valid for minutes, a pooled engine lives as long as its process.
    """
    conn = _token_logins.get(url)
    if conn is None:
        return {}
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    try:
        login, password, port = PostgresHook(connection=conn).get_iam_token(conn)
    except Exception as err:
        # Nothing reached the store: a caller may try again, as after a lost connection.
        raise StoreUnavailable(f"could not get a login token for connection {conn.conn_id!r}: {err}") from err
    return {k: v for k, v in {"user": login, "password": password, "port": port}.items() if v is not None}


def normalize_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg 3, which Airflow already installs."""
    parsed = make_url(url)
    if parsed.drivername in _POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (None for other databases or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def resolve_store_url(conn_id: str | None = None, settings: HitlSettings | None = None) -> str:
    """Find the store's URL: an explicit override, the connection, else the SQLite fallback.

    ``conn_id`` is the one a gate or the CLI named (None when they named none). A named
    connection that does not exist is an error, as is the fallback where it would split
    the store between hosts (see :func:`sqlite_fallback_url`).
    """
    settings = settings or HitlSettings.load()
    override = os.environ.get("AIRFLOW_HITL_STORE_URL")
    if override:
        return normalize_url(override)
    name = conn_id or settings.conn_id
    conn = find_connection(name)
    if conn is not None:
        return url_from_connection(conn)
    return sqlite_fallback_url(name, explicit=conn_id is not None, settings=settings)


async def aresolve_store_url(conn_id: str | None = None, settings: HitlSettings | None = None) -> str:
    """:func:`resolve_store_url` for async code (the triggerer), which must not block its loop."""
    settings = settings or HitlSettings.load()
    override = os.environ.get("AIRFLOW_HITL_STORE_URL")
    if override:
        return normalize_url(override)
    name = conn_id or settings.conn_id
    from airflow.sdk import BaseHook

    getter = getattr(BaseHook, "aget_connection", None)
    try:
        if getter is not None:
            conn = await getter(name)
        else:  # Airflow 3.1 has no async lookup
            import asyncio

            conn = await asyncio.to_thread(BaseHook.get_connection, name)
    except Exception as err:
        _raise_unless_not_found(name, err)
        conn = None
    if conn is not None:
        return url_from_connection(conn)
    return sqlite_fallback_url(name, explicit=conn_id is not None, settings=settings)


#: Executors that run every task on the scheduler's own machine, so on the host whose
#: AIRFLOW_HOME the api-server and triggerer also read (Airflow's single-machine setups).
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def executor_names(value: str) -> list[str]:
    """Class names of the executors in a ``[core] executor`` value.

    Understands every spelling Airflow 3 accepts: a name (``CeleryExecutor``), a module path,
    ``alias:module.path.Class``, comma-separated lists (several executors) and the
    multi-team form ``team=Executor,...;other=...``.
    """
    names = []
    for team_part in value.split(";"):
        executors = team_part.split("=", 1)[-1]
        for item in executors.split(","):
            item = item.strip()
            if item:
                names.append(item.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    return names


def _configured_executor() -> str:
    from airflow.configuration import conf

    return str(conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor")


def sqlite_fallback_url(conn_id: str, *, explicit: bool, settings: HitlSettings) -> str:
    """The SQLite store to use because connection ``conn_id`` is not defined, or why there is none.

    Only the default connection falls back, and only where every component shares one
    machine: with Celery, Kubernetes, Edge or any other remote executor, each host would
    open its own file and gates would wait for decisions recorded elsewhere. An explicit
    ``[hitl] sqlite_path`` is the administrator's statement that every component reaches
    that same file (one host, a shared local volume), so it is honoured with any executor.
    """
    if explicit or conn_id != DEFAULT_CONN_ID:
        raise StoreError(
            f"the approval store connection {conn_id!r} is not defined; define it (a postgres or sqlite "
            f"connection) or name another one. Only the default {DEFAULT_CONN_ID!r}, when undefined, "
            "falls back to a local SQLite file."
        )
    if not settings.sqlite_path_configured:
        remote = [name for name in executor_names(_configured_executor()) if name not in LOCAL_EXECUTORS]
        if remote:
            raise StoreError(
                f"the approval store connection {DEFAULT_CONN_ID!r} is not defined, and the executor "
                f"{', '.join(remote)} may run tasks on other hosts, each of which would open its own "
                f"SQLite file: define the connection {DEFAULT_CONN_ID!r} (postgres) for a store every "
                "component shares (or set [hitl] sqlite_path to a file they all reach on one host)."
            )
    return f"sqlite:///{os.path.abspath(settings.sqlite_path)}"


def find_connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id``, or None when it is not defined (other failures raise)."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as err:
        _raise_unless_not_found(conn_id, err)
        return None


def _raise_unless_not_found(conn_id: str, err: Exception) -> None:
    # "Not defined" is the documented way to choose the embedded SQLite store.
    if type(err).__name__ in {"AirflowNotFoundException", "ConnectionNotFound"} or "isn't defined" in str(err):
        return
    raise StoreError(f"could not read connection {conn_id!r}: {err}") from err


def _sqlite_on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # pysqlite's own transaction handling defers BEGIN until the first write, which lets
    # two writers read the same row and both decide. Take control and BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Writers take the write lock up front; readers must not, or a large poll of
    # thousands of ids would block every decision while it runs.
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _log_in_with_token(url: str, _dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    # SQLAlchemy's do_connect event, before each new DBAPI connection of a token-login store:
    # the pool may open one an hour after the last, long after a token fetched then expired.
    cparams.update(fresh_login(url))


class ApprovalStore:
    """An engine and session factory over one approval store."""

    def __init__(self, *, url: str, pool_size: int = 5) -> None:
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.engine = self._create_engine(pool_size)
        # Same pool; only marks its transactions read-only (a deferred BEGIN on SQLite).
        self.read_engine = self.engine.execution_options(**{_READ_ONLY: True})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        """True when the store is PostgreSQL (row locks, LISTEN/NOTIFY)."""
        return self.dialect == "postgresql"

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite store (None for PostgreSQL or an in-memory database)."""
        return sqlite_file(self.url)

    def _create_engine(self, pool_size: int) -> Engine:
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        # Bounded waits, so an unreachable store fails a call in seconds (the REST API then
        # answers 503) instead of holding it until the client gives up.
        # The [hitl] store_* timeouts win over the connection's own (they bound every call of the
        # package); the connection's ``options`` are kept, ours appended so statement_timeout holds.
        limits = HitlSettings.load()
        statement_ms = int(limits.store_statement_timeout * 1000)
        own_options = make_url(self.url).query.get("options")
        options = f"-c statement_timeout={statement_ms}"
        if isinstance(own_options, str) and own_options.strip():
            options = f"{own_options.strip()} {options}"
        engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
            pool_recycle=1800,
            pool_timeout=limits.store_pool_timeout,
            connect_args={
                "connect_timeout": max(1, round(limits.store_connect_timeout)),
                "options": options,
                # A server that vanishes mid-statement (no FIN, no RST) fails the socket too.
                "tcp_user_timeout": statement_ms + int(limits.store_connect_timeout * 1000),
            },
        )
        if self.url in _token_logins:
            event.listen(engine, "do_connect", functools.partial(_log_in_with_token, self.url))
        return engine

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def session(self) -> Session:
        """A session for reads: it never takes the store's write lock."""
        return self._read_sessions()

    def ping(self) -> None:
        """Run a trivial query; raises when the store cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"ApprovalStore({make_url(self.url).render_as_string(hide_password=True)})"


_stores: dict[str, ApprovalStore] = {}
_stores_lock = threading.Lock()


def get_store(*, conn_id: str | None = None, url: str | None = None) -> ApprovalStore:
    """The process-wide store for ``url`` (or the one ``conn_id`` resolves to), migrated if allowed."""
    if url:
        url = normalize_url(url)
        # Thousands of triggers start at once in a triggerer: skip re-reading config for a known store.
        cached = _stores.get(url)
        if cached is not None:
            return cached
    settings = HitlSettings.load()
    url = url or resolve_store_url(conn_id, settings)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = ApprovalStore(url=url, pool_size=settings.pool_size)
            ensure_schema(store, migrate=settings.auto_migrate)
            _stores[url] = store
        return store


def reset_stores() -> None:
    """Forget cached stores (tests, and processes that fork)."""
    with _stores_lock:
        for store in _stores.values():
            store.dispose()
        _stores.clear()

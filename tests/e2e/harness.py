"""Run a real Airflow 3 (api-server, scheduler, triggerer, dag-processor) for end-to-end tests.

:class:`AirflowHarness` builds a throw-away ``AIRFLOW_HOME`` in a temporary folder,
configures Airflow there (SimpleAuthManager users, LocalExecutor, the example DAGs plus the
e2e test DAGs, free loopback ports), migrates Airflow's database and the approval store,
starts the Airflow components as separate processes (each in its own process group,
logging to a file) and stops them again by their own process group.

Airflow's metadata DB is a fresh PostgreSQL database per harness (as in production; the
SQLite metadata DB failed DAG-run inserts under load), dropped again at stop. By default
the approval store is a SQLite file in the same folder, named through
``AIRFLOW_HITL_STORE_URL`` for the Airflow processes; with ``store="postgres"`` it is a
fresh PostgreSQL database reached, as in production, through the ``hitl_default``
connection created with ``airflow connections add``. The test reaches the very same store
through :attr:`AirflowHarness.manager`, so decisions a test makes are the ones the running
gates see.

The distributed topology of ``docker-compose.yaml`` is the same class with
``executor="CeleryExecutor"`` (Redis broker, one Celery worker), ``auth_manager="fab"``
(users and roles created with Airflow's CLI), ``api_servers=2`` and ``triggerers=2``.
:data:`SERVICE_COMMANDS`, :data:`SERVICE_FLAGS` and :data:`INIT_COMMANDS` are the Airflow
commands it runs; ``tests/test_deployment.py`` checks the compose file runs only those.

Usage::

    with AirflowHarness(root=tmp_path) as airflow:
        run_id = airflow.trigger("hitl_quorum", user="admin")
        airflow.wait_for_ti_state("hitl_quorum", run_id, "approve_load", "deferred")
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from airflow_hitl.manager import ApprovalFilter, ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.records import Approval
from airflow_hitl.version_compat import HAS_AWAITING_INPUT

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO_ROOT / "dags"
TEST_DAGS = Path(__file__).resolve().parent / "dags"
#: The state a waiting gate's task instance is in: parked on Airflow 3.3+, deferred to its trigger before.
GATE_WAITS = "awaiting_input" if HAS_AWAITING_INPUT else "deferred"

#: user -> SimpleAuthManager role. ``admin``, ``op`` and ``viewer`` are relied on by the API tests.
DEFAULT_USERS: dict[str, str] = {
    "admin": "admin",
    "op": "op",
    "viewer": "viewer",
    "alice": "op",
    "bob": "op",
    "carol": "op",
    "nobody": "viewer",
}

PG_ADMIN_URL = os.environ.get("HITL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HITL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

#: FAB users of the distributed stack: user -> FAB roles (``ReleaseManagers`` is a custom role).
FAB_USERS: dict[str, tuple[str, ...]] = {
    "admin": ("Admin",),
    "alice": ("Op", "ReleaseManagers"),
    "bob": ("Op",),
}

COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "triggerer", "dag-processor")

#: Long-running Airflow services: service -> the ``airflow`` sub-command that runs it.
#: docker-compose.yaml runs exactly these (checked by tests/test_deployment.py).
SERVICE_COMMANDS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler",),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer",),
    "celery-worker": ("celery", "worker"),
}
#: The options the harness passes to each service (the compose file may use no others).
SERVICE_FLAGS: dict[str, frozenset[str]] = {
    "api-server": frozenset({"--host", "--port", "--workers"}),
    "scheduler": frozenset(),
    "dag-processor": frozenset(),
    "triggerer": frozenset(),
    "celery-worker": frozenset({"--concurrency", "--queues", "--celery-hostname"}),
}
#: One-off deploy steps, in order (``airflow`` sub-commands and the options the harness gives them).
INIT_COMMANDS: dict[tuple[str, ...], frozenset[str]] = {
    ("db", "migrate"): frozenset(),
    ("connections", "add"): frozenset({"--conn-uri"}),
    ("hitl", "db", "migrate"): frozenset(),
    ("roles", "create"): frozenset(),
    ("users", "create"): frozenset({"--username", "--password", "--firstname", "--lastname", "--email", "--role"}),
    ("users", "add-role"): frozenset({"--username", "--role"}),
}
#: Seconds one ``airflow`` CLI step may take: on a loaded 2-core machine a FAB command has taken over 2 minutes.
CLI_TIMEOUT = 900.0
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class HarnessError(RuntimeError):
    """Airflow did not start, or did not reach an expected state in time."""


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Where test processes reserve the ports they picked (one lock file per port).
PORT_LOCKS = Path(os.environ.get("TMPDIR", "/tmp")) / "hitl-test-ports"
# Reservations this process holds, oldest first. A server binds its port within a minute or
# two of the pick; by the time a reservation is this many picks old it has long done so (or
# never will), and a bound port is refused by the bind check anyway.
_HELD_RESERVATIONS = 256
_held: collections.deque[int] = collections.deque()


def _reserve(port: int) -> bool:
    """Take the cross-process reservation of ``port`` (False when another test process holds it)."""
    import fcntl

    PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    while len(_held) > _HELD_RESERVATIONS:
        os.close(_held.popleft())
    return True


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, below the ephemeral range, reserved.

    A port the kernel picked (``bind(("", 0))``) is in the ephemeral range, and any outgoing
    connection of any process (PostgreSQL clients, HTTP calls of the stacks running beside
    this one) may take it before the server binds it: a CI run lost a whole stack to "address
    already in use" that way. Ports below the range are only ever taken by a listener.

    Between the pick and the server's bind (an api-server takes up to a minute on a loaded
    machine) another test process could pick the same free port: the lanes of ``make test``
    run side by side, and a CI run lost a whole stack when its health check was answered by
    the stack of another lane listening on the port it had picked. So each pick is also
    reserved with a lock file that every test process honours, held by the picking process.
    """
    import random

    high = _ephemeral_low() - 1
    for _ in range(200):
        port = random.randint(min(10000, high - 1000), high)
        if not _reserve(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns something truthy, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{detail}" if detail else ""))
        time.sleep(interval)


class AirflowProcess:
    """One Airflow component running in its own process group, logging to a file."""

    def __init__(self, *, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: we stop exactly what we started
        )

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL it when ``grace`` seconds pass."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=grace)
            # Children (task runners, uvicorn workers) may outlive the leader: end the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        finally:
            self._log.close()

    def tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of the component's log."""
        return tail_file(self.log_path, lines)


def tail_file(path: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        data = path.read_bytes()[-200_000:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def create_database(prefix: str) -> str:
    """Create a fresh PostgreSQL database on the server of :data:`PG_ADMIN_URL`; return its URL."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{secrets.token_hex(5)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (closing whatever still holds it open)."""
    from sqlalchemy import create_engine, make_url, text

    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class AirflowHarness:
    """A real Airflow 3 in a temporary ``AIRFLOW_HOME``, with the approval store beside it.

    :param root: Empty folder to build ``AIRFLOW_HOME`` in (removed only if ``cleanup``).
    :param users: SimpleAuthManager ``user -> role``; the defaults keep ``admin``, ``op``, ``viewer``.
        With ``auth_manager="fab"``: ``user -> FAB roles`` (default :data:`FAB_USERS`).
    :param extra_dag_dirs: Folders whose ``*.py`` files are copied into the dags folder too
        (besides the example DAGs of ``dags/`` and the e2e test DAGs).
    :param env: Extra environment for every Airflow process (overrides the defaults).
    :param metadata_db_url: Airflow's metadata database; by default a fresh PostgreSQL
        database created at start and dropped at stop.
    :param store: ``"sqlite"`` (a file under ``root``, named by ``AIRFLOW_HITL_STORE_URL``) or
        ``"postgres"`` (a fresh database behind the ``hitl_default`` connection).
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (Redis at :data:`REDIS_URL`, one worker).
    :param auth_manager: ``"simple"`` (SimpleAuthManager) or ``"fab"`` (FabAuthManager).
    :param api_servers: How many api-servers to run, each on its own port.
    :param triggerers: How many triggerers to run.
    :param poll_interval: ``[hitl] poll_interval`` for the triggerer's shared poller.
    :param python: Python interpreter of the virtualenv that has Airflow and airflow-hitl.
    :param startup_timeout: Seconds allowed for the components to report healthy.
    :param cleanup: Delete ``root`` after stopping.
    """

    def __init__(
        self,
        *,
        root: Path,
        users: Mapping[str, str] | Mapping[str, Sequence[str]] | None = None,
        extra_dag_dirs: Iterable[Path] = (),
        env: Mapping[str, str] | None = None,
        metadata_db_url: str | None = None,
        store: str = "sqlite",
        executor: str = "LocalExecutor",
        auth_manager: str = "simple",
        api_servers: int = 1,
        triggerers: int = 1,
        poll_interval: float = 0.5,
        python: str | None = None,
        startup_timeout: float = 240.0,
        cleanup: bool = False,
    ) -> None:
        if store not in {"sqlite", "postgres"}:
            raise ValueError(f"store must be 'sqlite' or 'postgres', not {store!r}")
        if executor not in {"LocalExecutor", "CeleryExecutor"}:
            raise ValueError(f"executor must be LocalExecutor or CeleryExecutor, not {executor!r}")
        if auth_manager not in {"simple", "fab"}:
            raise ValueError(f"auth_manager must be 'simple' or 'fab', not {auth_manager!r}")
        self.root = Path(root).resolve()
        self.home = self.root / "airflow_home"
        self.dags_folder = self.root / "dags"
        self.plugins_folder = self.root / "plugins"
        self.logs_folder = self.root / "process-logs"
        self.auth_manager = auth_manager
        self.users: dict[str, tuple[str, ...]] = {
            user: (roles,) if isinstance(roles, str) else tuple(roles)
            for user, roles in (users or (FAB_USERS if auth_manager == "fab" else DEFAULT_USERS)).items()
        }
        self.dag_dirs = [EXAMPLE_DAGS, TEST_DAGS, *[Path(d) for d in extra_dag_dirs]]
        self.python = python or sys.executable
        self.airflow_bin = str(Path(self.python).with_name("airflow"))
        self.executor = executor
        self.api_ports = [free_port() for _ in range(max(1, api_servers))]
        self.triggerer_count = max(1, triggerers)
        self.port = self.api_ports[0]
        self.hitl_bin = str(Path(self.python).with_name("airflow-hitl"))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.base_urls = [f"http://127.0.0.1:{port}" for port in self.api_ports]
        self.store_kind = store
        self.store_url = f"sqlite:///{self.root / 'hitl-store.db'}"
        self._owned_databases: list[str] = []
        self.metadata_db_url = metadata_db_url or ""
        self.poll_interval = poll_interval
        self.startup_timeout = startup_timeout
        self.cleanup = cleanup
        # Several stacks may share the Redis server: each gets its own Celery queue and worker name.
        self.celery_queue = f"hitl-e2e-{secrets.token_hex(4)}"
        self.processes: dict[str, AirflowProcess] = {}
        #: Triggerer process name -> its job id (``trigger.triggerer_id``), when there are several.
        self.triggerer_jobs: dict[str, int] = {}
        #: Every ``airflow`` command line this harness ran, in order (init steps and services).
        self.commands: list[list[str]] = []
        self._extra_env = dict(env or {})
        self._passwords: dict[str, str] = {}
        self._tokens: dict[str, str] = {}
        self._store: ApprovalStore | None = None
        self._manager: ApprovalManager | None = None
        self._clients = [httpx.Client(base_url=url, timeout=90.0, trust_env=False) for url in self.base_urls]
        self._http = self._clients[0]
        self.env = self._build_env()

    # ------------------------------------------------------------------ setup

    def _build_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
                "AIRFLOW__CORE__FERNET_KEY": "",
                # Each process keeps a small pool: six helpers' stacks share one PostgreSQL server.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "7",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__EXPOSE_CONFIG": "False",
                # Every process must sign and check task tokens with the same secret.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                # Several stacks may run at once (parallel suites, a developer's demo): never the fixed ports.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                # No test edits a DAG file after the stack starts (a changed file is parsed again
                # at once anyway): re-parsing every file every 30 s cost each stack about 15 % of
                # a core, and the suite runs several stacks on two cores.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # A triggerer whose heartbeat is this old has its triggers taken over by another.
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "20",
                "AIRFLOW__HITL__POLL_INTERVAL": str(self.poll_interval),
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        if self.auth_manager == "fab":
            env["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_AUTH_MANAGER
        else:
            env["AIRFLOW__CORE__AUTH_MANAGER"] = SIMPLE_AUTH_MANAGER
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(
                f"{user}:{roles[0]}" for user, roles in self.users.items()
            )
        if self.store_kind == "sqlite":
            env["AIRFLOW_HITL_STORE_URL"] = self.store_url
        if self.executor == "CeleryExecutor":
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
                    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.celery_queue,
                    "AIRFLOW__CELERY__DEFAULT_QUEUE": self.celery_queue,
                }
            )
        env.update(self._extra_env)
        return env

    def _create_databases(self) -> None:
        # Created here rather than in __init__ so that a harness that never starts owns nothing.
        if not self.metadata_db_url:
            self.metadata_db_url = create_database("airflow_e2e")
            self._owned_databases.append(self.metadata_db_url)
        self.env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", self.metadata_db_url)
        if self.executor == "CeleryExecutor":
            self.env.setdefault("AIRFLOW__CELERY__RESULT_BACKEND", "db+" + self.metadata_db_url)
        if self.store_kind == "postgres" and self.store_url.startswith("sqlite"):
            self.store_url = create_database("hitl_store_e2e")
            self._owned_databases.append(self.store_url)

    def prepare(self) -> None:
        """Create AIRFLOW_HOME and the databases, copy the DAGs in, run the deploy steps.

        The deploy steps are those of docker-compose.yaml's init service: ``airflow db
        migrate``; the ``hitl_default`` connection (PostgreSQL store); ``airflow hitl db
        migrate``; FAB roles and users.
        """
        for folder in (self.home, self.dags_folder, self.plugins_folder, self.logs_folder):
            folder.mkdir(parents=True, exist_ok=True)
        for source in self.dag_dirs:
            for path in sorted(Path(source).glob("*.py")):
                if path.name != "__init__.py":
                    shutil.copy2(path, self.dags_folder / path.name)
        self._create_databases()
        self.run_cli(["db", "migrate"], log="db-migrate.log", timeout=CLI_TIMEOUT)
        if self.store_kind == "postgres":
            self.create_store_connection()
        if self._has_provider_cli():
            self.run_cli(["hitl", "db", "migrate"], log="hitl-db-migrate.log", timeout=CLI_TIMEOUT)
        else:  # Airflow 3.1 has no provider CLI: the same command under `airflow-hitl`
            self.run_cli(["db", "migrate"], log="hitl-db-migrate.log", timeout=CLI_TIMEOUT, binary=self.hitl_bin)
        if self.auth_manager == "fab":
            self._create_fab_users()

    def store_connection_uri(self) -> str:
        """The ``hitl_default`` connection URI of the PostgreSQL store."""
        from sqlalchemy import make_url

        url = make_url(self.store_url)
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def create_store_connection(self) -> None:
        """``airflow connections add hitl_default`` for the PostgreSQL store, as a deployment does."""
        self.run_cli(
            ["connections", "add", "hitl_default", "--conn-uri", self.store_connection_uri()],
            log="connections.log",
            timeout=CLI_TIMEOUT,
        )

    def _create_fab_users(self) -> None:
        builtin = {"Admin", "Op", "User", "Viewer", "Public"}
        custom = sorted({role for roles in self.users.values() for role in roles} - builtin)
        if custom:
            self.run_cli(["roles", "create", *custom], log="fab-users.log", timeout=CLI_TIMEOUT)
        for user, roles in self.users.items():
            # token_urlsafe may start with "-", which argparse takes for an option (1 in 64 per user).
            password = "pw" + secrets.token_urlsafe(12)
            self.run_cli(
                [
                    "users",
                    "create",
                    "--username",
                    user,
                    "--password",
                    password,
                    "--firstname",
                    user,
                    "--lastname",
                    "Example",
                    "--email",
                    f"{user}@example.com",
                    "--role",
                    roles[0],
                ],
                log="fab-users.log",
                timeout=CLI_TIMEOUT,
            )
            for role in roles[1:]:
                argv = ["users", "add-role", "--username", user, "--role", role]
                self.run_cli(argv, log="fab-users.log", timeout=CLI_TIMEOUT)
            self._passwords[user] = password

    def _has_provider_cli(self) -> bool:
        # Provider CLI commands (`airflow hitl ...`) exist from Airflow 3.2 on.
        probe = "import airflow, sys; sys.exit(tuple(map(int, airflow.__version__.split('.')[:2])) < (3, 2))"
        return subprocess.run([self.python, "-c", probe], env=self.env, timeout=120, check=False).returncode == 0

    def run_cli(self, args: Sequence[str], *, log: str, timeout: float, binary: str | None = None) -> None:
        """Run ``airflow <args>`` (or ``binary <args>``) with the stack's environment; raise with the log tail."""
        log_path = self.logs_folder / log
        self.commands.append([Path(binary).name if binary else "airflow", *args])
        with log_path.open("ab") as out:
            result = subprocess.run(
                [binary or self.airflow_bin, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        if result.returncode != 0:
            shown = " ".join("***" if i and args[i - 1] == "--password" else a for i, a in enumerate(args))
            raise HarnessError(f"`airflow {shown}` exited {result.returncode}:\n{tail_file(log_path)}")

    # ------------------------------------------------------------------ lifecycle

    def service_argv(self, service: str, *, index: int = 0) -> list[str]:
        """The ``airflow`` command line of ``service`` (see :data:`SERVICE_COMMANDS`)."""
        argv = [self.airflow_bin, *SERVICE_COMMANDS[service]]
        if service == "api-server":
            argv += ["--host", "127.0.0.1", "--port", str(self.api_ports[index]), "--workers", "1"]
        elif service == "celery-worker":
            argv += ["--concurrency", "4", "--queues", self.celery_queue]
            argv += ["--celery-hostname", f"{self.celery_queue}-{index}@%h"]
        return argv

    def service_env(self, service: str, *, index: int = 0) -> dict[str, str]:
        """The environment of one service process (each server process its own log-server port)."""
        env = dict(self.env)
        if service == "triggerer" and index:
            env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
        if service == "api-server":
            env["AIRFLOW__API__PORT"] = str(self.api_ports[index])
        return env

    def topology(self) -> list[tuple[str, str, int]]:
        """``(process name, service, index)`` of every long-running process of this stack."""
        plan = [(f"api-server-{i}" if i else "api-server", "api-server", i) for i in range(len(self.api_ports))]
        plan += [("scheduler", "scheduler", 0), ("dag-processor", "dag-processor", 0)]
        if self.executor == "CeleryExecutor":
            plan.append(("celery-worker", "celery-worker", 0))
        # Last: with several, each triggerer waits for the one before it to register.
        plan += [(f"triggerer-{i}" if i else "triggerer", "triggerer", i) for i in range(self.triggerer_count)]
        return plan

    def start_process(self, name: str, service: str, index: int = 0) -> AirflowProcess:
        """Start one service process (again, e.g. after a test killed it) under ``name``."""
        argv = self.service_argv(service, index=index)
        self.commands.append(["airflow", *argv[1:]])
        process = AirflowProcess(
            name=name, argv=argv, env=self.service_env(service, index=index), log_path=self.logs_folder / f"{name}.log"
        )
        self.processes[name] = process
        return process

    def _start_triggerer(self, name: str, index: int) -> None:
        # Triggerers start one after another so that each process is known by its job id
        # (the jobs table names no pid): a test can then kill the one that runs given triggers.
        known = {job["id"] for job in self.alive_triggerers()} if index else set()
        self.start_process(name, "triggerer", index)
        if self.triggerer_count == 1:
            return

        def registered() -> int | None:
            self._check_alive()
            new = {job["id"] for job in self.alive_triggerers()} - known - set(self.triggerer_jobs.values())
            return min(new) if new else None

        self.triggerer_jobs[name] = wait_until(
            registered, timeout=self.startup_timeout, what=f"{name} to register", on_timeout=self.dump_logs
        )

    def start(self) -> AirflowHarness:
        """Prepare, start every component and wait until they are healthy and the DAGs are loaded."""
        try:
            self.prepare()
            for name, service, index in self.topology():
                if service == "triggerer":
                    self._start_triggerer(name, index)
                else:
                    self.start_process(name, service, index)
            self._wait_healthy()
            self.wait_for_dags(self.expected_dag_ids())
            self.warm_up()
        except BaseException:
            self.stop()
            raise
        return self

    def warm_up(self, *, attempts: int = 3) -> None:
        """Run ``e2e_warmup`` until it succeeds once.

        On a busy machine the api-server's first task-execution request can take over 30 s;
        the task runner gives up meanwhile and that first task fails. Pay for it here, once,
        rather than in whichever test happens to run first.
        """
        for index in range(len(self.api_ports)):
            wait_until(
                lambda index=index: self._answers("/execution/health", server=index),
                timeout=self.startup_timeout,
                interval=1.0,
                what=f"api-server {index}'s Execution API",
                on_timeout=self.dump_logs,
            )
        for _ in range(attempts):
            run_id = self.trigger("e2e_warmup")
            run = self.wait_for_run_state("e2e_warmup", run_id, ("success", "failed"), timeout=240)
            if run["state"] == "success":
                return
        raise HarnessError(f"e2e_warmup did not succeed in {attempts} runs:\n{self.dump_logs(lines=40)}")

    def _answers(self, path: str, *, server: int) -> bool:
        # Under heavy load the first call can outlast the client's 90 s read timeout: ask again.
        self._check_alive()
        try:
            self.api("GET", path, expect=None, server=server)
        except httpx.TimeoutException:
            return False
        return True

    def stop(self) -> None:
        """Stop every component by its own process group, drop the databases it created; remove ``root`` if asked."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        self.processes.clear()
        for client in self._clients:
            client.close()
        if self._store is not None:
            self._store.dispose()
            self._store = None
        for url in self._owned_databases:
            try:
                drop_database(url)
            except Exception as err:  # a leftover database must not hide the test's own outcome
                print(f"could not drop {url}: {err}", file=sys.stderr)
        self._owned_databases.clear()
        if self.cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AirflowHarness:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _check_alive(self) -> None:
        dead = [p for p in self.processes.values() if not p.alive()]
        if dead:
            raise HarnessError(
                "Airflow process exited: "
                + ", ".join(f"{p.name} (code {p.popen.returncode})" for p in dead)
                + "\n"
                + self.dump_logs(lines=60)
            )

    def _wait_healthy(self) -> None:
        def healthy() -> bool:
            self._check_alive()
            for client in self._clients:
                try:
                    response = client.get("/api/v2/monitor/health", timeout=5)
                except httpx.HTTPError:
                    return False
                if response.status_code != 200:
                    return False
                body = response.json()
                if not all(
                    (body.get(part) or {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                ):
                    return False
            return len(self.alive_triggerers()) >= self.triggerer_count

        wait_until(
            healthy,
            timeout=self.startup_timeout,
            interval=1.0,
            what="Airflow components to report healthy",
            on_timeout=self.dump_logs,
        )

    def alive_triggerers(self) -> list[dict[str, Any]]:
        """The triggerer jobs Airflow considers alive (``GET /api/v2/jobs``; none while the API is down)."""
        try:
            response = self.api(
                "GET", "/api/v2/jobs", params={"job_type": "TriggererJob", "is_alive": True, "limit": 100}, expect=None
            )
        except (httpx.HTTPError, HarnessError):
            return []
        if response.status_code != 200:
            return []
        return list(response.json().get("jobs", []))

    def expected_dag_ids(self) -> list[str]:
        """DAG ids of the copied files (``dag_id="..."`` as written in each file)."""
        import re

        ids: list[str] = []
        for path in sorted(self.dags_folder.glob("*.py")):
            ids += re.findall(r"dag_id=\"([^\"]+)\"", path.read_text())
        return ids

    def wait_for_dags(self, dag_ids: Iterable[str], *, timeout: float = 180.0) -> None:
        """Wait until every DAG is parsed and known to the API; fail at once on import errors."""
        wanted = set(dag_ids)

        def loaded() -> bool:
            self._check_alive()
            errors = self.api("GET", "/api/v2/importErrors").json()
            if errors.get("total_entries"):
                raise HarnessError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)}")
            dags = self.api("GET", "/api/v2/dags", params={"limit": 1000}).json()["dags"]
            return wanted <= {d["dag_id"] for d in dags}

        wait_until(loaded, timeout=timeout, interval=1.0, what=f"DAGs {sorted(wanted)}", on_timeout=self.dump_logs)

    # ------------------------------------------------------------------ logs

    def dump_logs(self, lines: int = 80) -> str:
        """Tails of every process log, for failure reports."""
        parts = []
        for path in sorted(self.logs_folder.glob("*.log")):
            parts.append(f"===== {path.name} (last {lines} lines) =====\n{tail_file(path, lines)}")
        return "\n".join(parts)

    def hitl_logs(self, lines: int = 40) -> str:
        """Our own log lines (loggers ``airflow_hitl.*``) of every process, which polling's access lines would bury."""
        return self._log_lines(lambda line: "[airflow_hitl." in line, what="airflow_hitl lines", lines=lines)

    def run_lines(self, run_id: str, lines: int = 25) -> str:
        """The last lines of every process log that name ``run_id`` (the scheduler's view of its task instances)."""
        return self._log_lines(
            lambda line: run_id in line and "http.access" not in line, what="lines naming the run", lines=lines
        )

    def _log_lines(self, wanted: Callable[[str], bool], *, what: str, lines: int) -> str:
        # The last ``lines`` wanted lines of each process log (each cut to 600 characters), under a heading.
        parts = []
        for path in sorted(self.logs_folder.glob("*.log")):
            try:
                text = path.read_text("utf-8", "replace")
            except OSError:
                continue
            found = [line[:600] for line in text.splitlines() if wanted(line)]
            if found:
                parts.append(f"===== {path.name}: {what} (last {lines}) =====\n" + "\n".join(found[-lines:]))
        return "\n".join(parts)

    def task_logs(self, dag_id: str, run_id: str, task_id: str, lines: int = 60) -> str:
        """Tails of the task's log files (every try) in AIRFLOW_HOME/logs."""
        base = self.home / "logs"
        parts = []
        for path in sorted(base.glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/**/*.log")):
            parts.append(f"===== {path.relative_to(base)} =====\n{tail_file(path, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ auth and HTTP

    @property
    def passwords(self) -> dict[str, str]:
        """Passwords by user: SimpleAuthManager's generated ones, or those given to the FAB users."""
        if not self._passwords and self.auth_manager == "simple":
            path = self.home / "simple_auth_manager_passwords.json.generated"
            self._passwords = json.loads(path.read_text())
        return self._passwords

    def token(self, user: str = "admin") -> str:
        """A JWT for ``user`` from ``POST /auth/token`` (cached; every api-server accepts it)."""
        if user not in self._tokens:
            response = self._http.post("/auth/token", json={"username": user, "password": self.passwords[user]})
            if response.status_code not in (200, 201):
                raise HarnessError(f"POST /auth/token for {user!r}: {response.status_code} {response.text}")
            self._tokens[user] = response.json()["access_token"]
        return self._tokens[user]

    def headers(self, user: str = "admin") -> dict[str, str]:
        """Authorization header for ``user``."""
        return {"Authorization": f"Bearer {self.token(user)}"}

    def api(
        self,
        method: str,
        path: str,
        *,
        user: str = "admin",
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        expect: Iterable[int] | None = (200,),
        server: int = 0,
    ) -> httpx.Response:
        """Call api-server number ``server`` as ``user``; raise unless the status is in ``expect`` (None: any)."""
        client = self._clients[server]
        response = client.request(method, path, headers=self.headers(user), json=json_body, params=params)
        if expect is not None and response.status_code not in set(expect):
            where = f"{method} {path} as {user} on {client.base_url}"
            raise HarnessError(f"{where}: {response.status_code} {response.text}")
        return response

    # ------------------------------------------------------------------ DAGs, runs and task instances

    def unpause(self, dag_id: str, *, user: str = "admin") -> None:
        """Unpause ``dag_id``."""
        self.api("PATCH", f"/api/v2/dags/{dag_id}", user=user, json_body={"is_paused": False})

    def trigger(
        self,
        dag_id: str,
        *,
        user: str = "admin",
        conf: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        unpause: bool = True,
    ) -> str:
        """Trigger a run through ``POST /api/v2/dags/{dag_id}/dagRuns`` as ``user``; return its run id.

        The run's ``triggering_user_name`` is ``user``: the gate's requester.
        """
        if unpause:
            self.unpause(dag_id)
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", user=user, json_body=body, expect=(200, 201))
        return str(response.json()["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run as the REST API returns it."""
        return dict(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json())

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """The task instance as the REST API returns it."""
        return dict(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json())

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id -> state`` of every task instance of the run."""
        body = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def _diagnose(self, dag_id: str, run_id: str, task_id: str | None = None) -> Callable[[], str]:
        def describe() -> str:
            parts = []
            with contextlib.suppress(Exception):
                parts.append(f"run state: {self.dag_run(dag_id, run_id).get('state')}")
                parts.append(f"task states: {self.task_states(dag_id, run_id)}")
            with contextlib.suppress(Exception):
                approvals, _ = self.manager.queries.list(ApprovalFilter(dag_id=dag_id, run_id=run_id))
                parts.append("approvals: " + repr([(a.id, a.task_id, a.try_number, a.state) for a in approvals]))
            # First what Airflow's processes said of this run (a task that failed before its own
            # log began, say on a refused start): a long report is cut from its end.
            parts.append(self.run_lines(run_id))
            for tid in [task_id] if task_id else list(self.task_states(dag_id, run_id)):
                parts.append(self.task_logs(dag_id, run_id, tid))
            parts.append(self.hitl_logs())
            parts.append(self.dump_logs(lines=40))
            return "\n".join(parts)

        return describe

    def wait_in_triggerer(self, dag_id: str, run_id: str, task_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the gate's task instance waits without a worker; return it.

        Parked in ``awaiting_input`` (Airflow 3.3+: no trigger, nothing else holds its row), or
        deferred with its trigger taken by a triggerer: until then each triggerer's assignment
        query (``SELECT ... FOR UPDATE`` over the trigger and task instance tables) may hold the
        task instance's row for a moment.
        """

        def taken() -> dict[str, Any] | None:
            ti = self.wait_for_ti_state(dag_id, run_id, task_id, ("deferred", "awaiting_input"), timeout=timeout)
            if ti["state"] == "awaiting_input":
                return ti
            return ti if (ti["trigger"] or {}).get("triggerer_id") is not None else None

        return wait_until(taken, timeout=timeout, what=f"{dag_id}.{task_id}'s trigger to run in a triggerer")

    def wait_for_ti_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: str | Iterable[str],
        *,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Wait until the task instance is in one of ``states``; fail early if it ends otherwise."""
        wanted = {states} if isinstance(states, str) else set(states)

        def check() -> dict[str, Any] | None:
            self._check_alive()
            response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", expect=None)
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise HarnessError(f"task instance lookup: {response.status_code} {response.text}")
            ti = dict(response.json())
            if ti["state"] in wanted:
                return ti
            if ti["state"] in TERMINAL_TI_STATES:
                raise HarnessError(
                    f"{dag_id}.{task_id} ended {ti['state']!r}, expected {sorted(wanted)}\n"
                    + self._diagnose(dag_id, run_id, task_id)()
                )
            return None

        return wait_until(
            check,
            timeout=timeout,
            interval=0.5,
            what=f"{dag_id}/{run_id}/{task_id} to be {sorted(wanted)}",
            on_timeout=self._diagnose(dag_id, run_id, task_id),
        )

    def wait_for_run_state(
        self, dag_id: str, run_id: str, states: str | Iterable[str] = TERMINAL_RUN_STATES, *, timeout: float = 180.0
    ) -> dict[str, Any]:
        """Wait until the run is in one of ``states`` (default: finished); fail early on another end."""
        wanted = {states} if isinstance(states, str) else set(states)

        def check() -> dict[str, Any] | None:
            self._check_alive()
            run = self.dag_run(dag_id, run_id)
            if run["state"] in wanted:
                return run
            if run["state"] in TERMINAL_RUN_STATES:
                raise HarnessError(
                    f"run {dag_id}/{run_id} ended {run['state']!r}, expected {sorted(wanted)}\n"
                    + self._diagnose(dag_id, run_id)()
                )
            return None

        return wait_until(
            check,
            timeout=timeout,
            interval=0.5,
            what=f"run {dag_id}/{run_id} to be {sorted(wanted)}",
            on_timeout=self._diagnose(dag_id, run_id),
        )

    def clear_task(self, dag_id: str, run_id: str, task_id: str, *, user: str = "admin") -> dict[str, Any]:
        """Clear one task instance through the REST API (as the Clear button does)."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "only_failed": False,
            "only_running": False,
            "include_upstream": False,
            "include_downstream": False,
            "reset_dag_runs": True,
        }
        return dict(self.api("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", user=user, json_body=body).json())

    # ------------------------------------------------------------------ approval store

    @property
    def manager(self) -> ApprovalManager:
        """An ApprovalManager over the same store the running Airflow uses."""
        if self._manager is None:
            self._store = ApprovalStore(url=self.store_url)
            self._manager = ApprovalManager(store=self._store)
        return self._manager

    def approvals(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[Approval]:
        """Every request of the run (of ``task_id`` if given), oldest try first."""
        items, _ = self.manager.queries.list(
            ApprovalFilter(dag_id=dag_id, run_id=run_id, task_id=task_id), order_by="requested_at"
        )
        return items

    def wait_for_approval(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        *,
        try_number: int | None = None,
        states: Iterable[str] | None = None,
        timeout: float = 120.0,
        interval: float = 0.25,
    ) -> Approval:
        """Wait for the gate's request (of ``try_number`` if given, in one of ``states`` if given)."""
        wanted = set(states) if states is not None else None

        def check() -> Approval | None:
            self._check_alive()
            for approval in reversed(self.approvals(dag_id, run_id, task_id)):
                if try_number is not None and approval.try_number != try_number:
                    continue
                if wanted is None or approval.state in wanted:
                    return approval
            return None

        return wait_until(
            check,
            timeout=timeout,
            interval=interval,
            what=f"approval request of {dag_id}/{run_id}/{task_id} (try {try_number}, states {wanted})",
            on_timeout=self._diagnose(dag_id, run_id, task_id),
        )

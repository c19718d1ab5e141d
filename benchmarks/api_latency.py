"""Latency and throughput of the approvals REST API on one real Airflow api-server.

Not a test: it prints figures. What it does, all on loopback:

1. creates two fresh PostgreSQL databases on ``--pg`` (the approval store and Airflow's
   metadata DB) and drops them at the end;
2. builds a temporary ``AIRFLOW_HOME`` (SimpleAuthManager user ``admin``, a DAG using
   Airflow's own ``airflow.providers.standard.operators.hitl.ApprovalOperator``), migrates
   Airflow's DB and serialises the DAG;
3. starts ONE ``airflow api-server`` (our plugin loads through its entry point; the store is
   named by ``AIRFLOW_HITL_STORE_URL``);
4. seeds 10,000 pending requests through :class:`~airflow_hitl.manager.ApprovalManager`,
   and native HITL rows for the comparison: DAG runs triggered through ``/api/v2`` whose
   gate task instances get a ``hitl_detail`` row and are parked as ``deferred``, exactly
   what a waiting native ``ApprovalOperator`` leaves behind (no scheduler runs, so nothing
   else touches them while we measure);
5. measures, at 1, 10 and 50 concurrent keep-alive clients, each operation next to its
   Airflow-native counterpart: deciding (``POST .../approvals/{id}/approve``, each call a
   different request, vs ``PATCH .../hitlDetails``, each call a different task instance),
   reading one (``GET .../approvals/{id}`` vs ``GET .../hitlDetails``) and a 100-item page
   (``GET .../approvals/pending`` with ``can_approve`` vs ``GET /api/v2/dags/~/dagRuns/~/
   hitlDetails``); then both decisions and both 100-item pages again at each fixed offered
   rate (``--rate``, 50 and 100 requests/s by default) from 10 clients, where latency counts
   from when each call was due (open loop). Prints p50/p99 and req/s.
   Ours run first; native's 100-item pages never from 50 clients, and its closed-loop
   PATCHes last: under 50 concurrent native pages or PATCHes Airflow's own connection pool
   runs dry, and the wedged server would slow whatever came after.

Both stores are vacuumed and analysed after seeding, as autovacuum would have done on a
real server (the test PostgreSQL runs without it): a table without statistics makes the
planner sort every waiting request for each page instead of walking the inbox index.

With ``--profile DIR`` the open-loop rows of ours run under ``py-spy`` (sampling the
api-server from outside, whichever thread holds the GIL: where its CPU goes) and the top
functions of each, by samples spent in them and below, are printed and their raw stacks
kept in ``DIR``. Each row also gives the api-server's CPU time per call, which unlike its
latency does not depend on what else the machine is doing.

Closed-loop clients keep the server saturated, so their latency is mostly queueing: about
clients x CPU time per request, divided by the cores the api-server can use. The load
generator (:mod:`loadgen`, about 0.15 ms of CPU per call) shares the machine. Usage::

    .venv/bin/python benchmarks/api_latency.py [--decisions 300] [--reads 300] [--rate 50,100] \\
        [--clients 1,10,50] [--workers 1] [--skip-native] [--pg URL] [--profile DIR]

``--skip-native`` measures ours alone (no native gates parked, no native rows): long open-loop
series such as ``--clients 1 --decisions 1000 --rate 100,100,100`` then take minutes, not more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from loadgen import Call, Result, measure
from sqlalchemy import create_engine, text

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SEED_REQUESTS = 10_000
#: Decisions of each kind made before any row is measured.
WARM_DECISIONS = 50
CONCURRENCY = (1, 10, 50)
API = "/hitl/api/v1/approvals"
NATIVE_DAG_ID = "bench_native_hitl"
NATIVE_TASK_ID = "native_gate"

NATIVE_DAG = textwrap.dedent(
    f'''
    """A gate with Airflow's own HITL operator, for the comparison."""
    from __future__ import annotations

    import datetime as dt

    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import DAG

    with DAG(dag_id="{NATIVE_DAG_ID}", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False):
        ApprovalOperator(task_id="{NATIVE_TASK_ID}", subject="Release?")
    '''
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fresh_databases(admin_url: str, *names: str) -> Iterator[list[str]]:
    """Create PostgreSQL databases for this run and drop them afterwards; yield their URLs."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        yield [admin_url.rsplit("/", 1)[0] + f"/{name}" for name in names]
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class ApiServer:
    """One ``airflow api-server`` in its own process group."""

    def __init__(self, *, airflow_bin: str, env: dict[str, str], port: int, log_path: Path, workers: int) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [airflow_bin, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base_url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the api-server answers its health endpoint."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"api-server exited {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return
            time.sleep(1)
        raise RuntimeError(f"api-server not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM the process group we started, SIGKILL it if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self._log.close()


def airflow_env(home: Path, *, meta_url: str, store_url: str, port: int) -> dict[str, str]:
    """Environment of every Airflow command of the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
            # psycopg 3 is async-capable; without this Airflow derives an asyncpg URL, a driver
            # nothing else here needs.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta_url,
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 4,
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            # Per-request access logging would measure the terminal, not the API.
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__HITL__POOL_SIZE": "10",
            "AIRFLOW_HITL_STORE_URL": store_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def run_cli(airflow_bin: str, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
    """Run an ``airflow`` command to completion; raise with its log on failure."""
    with log_path.open("ab") as out:
        result = subprocess.run(
            [airflow_bin, *args], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed; see {log_path}")


def seed_store(store_url: str, count: int) -> list[str]:
    """Open ``count`` pending requests through the manager; return their ids."""
    from airflow_hitl.manager import ApprovalManager, ApprovalSpec
    from airflow_hitl.models.schema import migrate
    from airflow_hitl.models.store import ApprovalStore
    from airflow_hitl.vocabulary import Origin

    store = ApprovalStore(url=store_url, pool_size=8)
    migrate(store)
    manager = ApprovalManager(store=store)

    def one(i: int) -> str:
        spec = ApprovalSpec(
            dag_id=f"bench_dag_{i % 20}",
            run_id=f"manual__{i}",
            task_id="gate",
            try_number=1,
            title=f"Benchmark gate {i}",
            context={"i": i, "rows": 1000 + i},
            requested_by="seeder",
            timeout=dt.timedelta(days=7),
            timeout_action="reject",
        )
        # Opened as over the REST API: these name runs that do not exist, and the api-server's pass
        # over parked gates cancels a task's waiting request whose DAG run is gone.
        return manager.create(spec, source="benchmark", origin=Origin.API).id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(one, range(count)))
    store.dispose()
    return ids


def seed_native(base_url: str, headers: dict[str, str], meta_url: str, count: int) -> list[str]:
    """Trigger ``count`` runs of the native-HITL DAG and park their gates with a hitl_detail row."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        client.patch(f"/api/v2/dags/{NATIVE_DAG_ID}", json={"is_paused": False}).raise_for_status()
        run_ids = []
        for i in range(count):
            response = client.post(
                f"/api/v2/dags/{NATIVE_DAG_ID}/dagRuns", json={"dag_run_id": f"bench_{i}", "logical_date": None}
            )
            response.raise_for_status()
            run_ids.append(response.json()["dag_run_id"])
    engine = create_engine(meta_url)
    with engine.begin() as conn:
        # What HITLOperator.execute leaves behind when it parks: a hitl_detail row and a
        # deferred task instance that resumes into execute_complete.
        conn.execute(
            text(
                "UPDATE task_instance SET state = 'deferred', next_method = 'execute_complete', "
                "next_kwargs = CAST('{}' AS JSON) WHERE dag_id = :dag AND task_id = :task"
            ),
            {"dag": NATIVE_DAG_ID, "task": NATIVE_TASK_ID},
        )
        conn.execute(
            text(
                "INSERT INTO hitl_detail (ti_id, options, subject, body, defaults, multiple, params, "
                "assignees, created_at, params_input) "
                "SELECT id, CAST(:options AS JSON), 'Release?', NULL, NULL, false, CAST('{}' AS JSON), NULL, now(), "
                "CAST('{}' AS JSON) FROM task_instance WHERE dag_id = :dag AND task_id = :task"
            ),
            {"options": json.dumps(["Approve", "Reject"]), "dag": NATIVE_DAG_ID, "task": NATIVE_TASK_ID},
        )
        found = conn.execute(
            text("SELECT count(*) FROM hitl_detail h JOIN task_instance t ON t.id = h.ti_id WHERE t.dag_id = :dag"),
            {"dag": NATIVE_DAG_ID},
        ).scalar_one()
    engine.dispose()
    if found != count:
        raise RuntimeError(f"expected {count} native HITL rows, made {found}")
    return run_ids


_ORDER = (
    "POST /hitl/.../approve",
    "PATCH /api/v2/.../hitlDetails",
    "GET /hitl/.../approvals/{id}",
    "GET /api/v2/.../hitlDetails (one)",
    "GET /hitl/.../pending (100 items)",
    "GET /api/v2/.../hitlDetails (100 items)",
)


def vacuum_analyze(url: str) -> None:
    """``VACUUM ANALYZE`` the database at ``url``: what autovacuum does on a real server after a bulk load."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def _sort_key(result: Result) -> tuple[int, bool, float, int]:
    # Closed loop first, then the open-loop rows by offered rate.
    name, _, load = result.name.partition("@")
    rate = float(load.strip().split("/", 1)[0]) if load else 0.0
    return (_ORDER.index(name.strip()), bool(load), rate, result.clients)


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """Sample process ``pid`` and its children with py-spy while the block runs; print the top functions."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # py-spy attaches before the first call
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        print_profile(out)


def print_profile(path: Path, top: int = 25) -> None:
    """The functions the sampled process spent most time in (inclusive) and on (self), from py-spy's raw stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first frame names the process/thread
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    print(f"\nprofile {path.name}: {total} samples", file=sys.stderr)
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"  top {top} {title}:", file=sys.stderr)
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * count / max(total, 1):5.1f}%  {frame}", file=sys.stderr)


def warm_up(ours: Calls, native: NativeCalls | None, base_url: str) -> None:
    """Run both code paths (imports, pools, lazy manager) outside the measurements.

    The decisions come from 10 connections: each api-server worker process takes some of them,
    and one that never decided would pay its first decisions' set-up inside a measured row.
    """
    reads = [ours.pending(), ours.get_one()] + ([native.get_one(), native.list_page()] if native else [])
    for call in reads:
        asyncio.run(measure("warm-up", 1, [call] * 20, base_url))
    for decide in [ours.approve] + ([native.answer] if native else []):
        asyncio.run(measure("warm-up", 10, [decide() for _ in range(WARM_DECISIONS)], base_url))


def measure_native(
    run: Callable[..., None],
    native: NativeCalls,
    *,
    concurrency: Sequence[int],
    rates: Sequence[float],
    decisions: int,
    reads: int,
) -> None:
    """The rows of Airflow's own HITL endpoints, each measured by ``run(name, clients, calls, rate)``.

    A native page takes about 0.4 s; 50 clients of them drain Airflow's connection pool and
    leave a backlog that would slow every row after, so pages come from 10 clients at most,
    and the closed-loop PATCHes (which drain it too) come last.
    """
    for rate in rates:
        answers = [native.answer() for _ in range(decisions)]
        run(f"PATCH /api/v2/.../hitlDetails @ {rate:g}/s offered", 10, answers, rate)
    for clients in concurrency:
        run("GET /api/v2/.../hitlDetails (one)", clients, [native.get_one()] * reads)
    for clients in [c for c in concurrency if c <= 10]:
        # At about 0.4 s a page, a third of the calls is plenty.
        run("GET /api/v2/.../hitlDetails (100 items)", clients, [native.list_page()] * (reads // 3))
    for rate in rates:
        # Far beyond what a 0.4 s page can serve: a few calls show it without a long queue.
        pages = [native.list_page()] * (reads // 6)
        run(f"GET /api/v2/.../hitlDetails (100 items) @ {rate:g}/s offered", 10, pages, rate)
    time.sleep(5)  # let the pages that timed out on the client finish on the server
    for clients in concurrency:
        run("PATCH /api/v2/.../hitlDetails", clients, [native.answer() for _ in range(decisions)])


def server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and its children, in seconds."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def print_table(results: Sequence[Result], seeded: int, workers: int, cpu_ms: Sequence[float]) -> None:
    """Print the figures as a Markdown table; ``cpu_ms[i]`` is the api-server's CPU per call of ``results[i]``."""
    print(
        f"\nairflow-hitl REST API vs Airflow native HITL, one api-server "
        f"({workers} worker{'s' if workers != 1 else ''}), "
        f"{seeded:,} requests in the store\n"
    )
    print("| endpoint | clients | load | requests | errors | p50 ms | p99 ms | req/s | server CPU ms/req |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r, cpu in sorted(zip(results, cpu_ms, strict=True), key=lambda pair: _sort_key(pair[0])):
        load = "closed loop" if r.name.find("@") < 0 else r.name.split("@", 1)[1].strip()
        print(
            f"| {r.name.split('@', 1)[0].strip()} | {r.clients} | {load} | {r.requests} | {r.errors} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.throughput:.0f} "
            f"| {cpu:.1f} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Set everything up, measure, print, and clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("HITL_BENCH_PG_URL", PG_ADMIN_URL), help="admin URL")
    parser.add_argument("--seed", type=int, default=SEED_REQUESTS, help="pending requests in the store")
    parser.add_argument("--decisions", type=int, default=300, help="approve / PATCH calls per concurrency")
    parser.add_argument("--reads", type=int, default=300, help="read calls per scenario and concurrency")
    parser.add_argument("--workers", type=int, default=1, help="api-server workers (Airflow's default is 1)")
    parser.add_argument("--clients", default=",".join(map(str, CONCURRENCY)), help="concurrency levels")
    parser.add_argument(
        "--rate",
        default="50,100",
        help="comma-separated requests/s offered by 10 clients in the open-loop runs (0: none)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary AIRFLOW_HOME")
    parser.add_argument("--skip-native", action="store_true", help="measure ours only (no native HITL rows)")
    parser.add_argument("--profile", type=Path, help="py-spy the open-loop rows of ours; raw stacks go here")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.clients.split(",")]
    rates = [float(r) for r in args.rate.split(",") if float(r) > 0]
    needed = args.decisions * (len(concurrency) + len(rates)) + WARM_DECISIONS
    if needed > args.seed:
        parser.error(f"--seed must be at least {needed} (one request per decision)")

    airflow_bin = str(Path(sys.executable).with_name("airflow"))
    home = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    (home / "dags").mkdir()
    (home / "plugins").mkdir()
    (home / "dags" / "bench_native_hitl.py").write_text(NATIVE_DAG)
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    server: ApiServer | None = None
    results: list[Result] = []
    # The api-server's CPU time per call of each row: unlike latency, it does not depend on
    # what else the machine is doing.
    cpu_ms: list[float] = []
    try:
        with fresh_databases(args.pg, f"hitl_bench_store_{suffix}", f"hitl_bench_meta_{suffix}") as (store, meta):
            env = airflow_env(home, meta_url=meta, store_url=store, port=port)
            t0 = time.perf_counter()
            run_cli(airflow_bin, ["db", "migrate"], env, home / "db-migrate.log")
            run_cli(airflow_bin, ["dags", "reserialize"], env, home / "reserialize.log")
            print(f"Airflow metadata DB ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

            t0 = time.perf_counter()
            ids = seed_store(store, args.seed)
            print(f"seeded {len(ids):,} requests in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

            server = ApiServer(
                airflow_bin=airflow_bin, env=env, port=port, log_path=home / "api-server.log", workers=args.workers
            )
            server.wait_ready()
            passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
            token = httpx.post(
                f"{server.base_url}/auth/token", json={"username": "admin", "password": passwords["admin"]}
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}

            host = server.base_url.removeprefix("http://")
            native: NativeCalls | None = None
            if not args.skip_native:
                t0 = time.perf_counter()
                runs = seed_native(server.base_url, headers, meta, needed)
                print(f"parked {len(runs)} native HITL gates in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
                native = NativeCalls(host=host, headers=headers, runs=iter(runs), one=runs[-1])
            vacuum_analyze(store)
            vacuum_analyze(meta)

            ours = Calls(host=host, headers=headers, ids=iter(ids), one=ids[-1])
            warm_up(ours, native, server.base_url)

            api = server

            def run(name: str, clients: int, calls: list[Call], rate: float | None = None) -> None:
                cpu_before = server_cpu_seconds(api.process.pid)
                result = asyncio.run(measure(name, clients, calls, api.base_url, rate=rate, timeout=30.0))
                cpu_used = server_cpu_seconds(api.process.pid) - cpu_before
                cpu_ms.append(1000 * cpu_used / max(result.requests, 1))
                results.append(result)
                if result.first_error:
                    print(f"  {name} x{clients}: first error {result.first_error}", file=sys.stderr)
                print(f"  {result}", file=sys.stderr)

            # All of ours first (see the module docstring).
            for clients in concurrency:
                run("POST /hitl/.../approve", clients, [ours.approve() for _ in range(args.decisions)])
                run("GET /hitl/.../approvals/{id}", clients, [ours.get_one()] * args.reads)
                run("GET /hitl/.../pending (100 items)", clients, [ours.pending()] * args.reads)
            for rate in rates:
                decisions = [ours.approve() for _ in range(args.decisions)]
                with profiled(server.process.pid, args.profile and args.profile / f"approve-{rate:g}.txt"):
                    run(f"POST /hitl/.../approve @ {rate:g}/s offered", 10, decisions, rate)
                with profiled(server.process.pid, args.profile and args.profile / f"pending-{rate:g}.txt"):
                    pages = [ours.pending()] * args.reads
                    run(f"GET /hitl/.../pending (100 items) @ {rate:g}/s offered", 10, pages, rate)
            if native is not None:
                measure_native(
                    run, native, concurrency=concurrency, rates=rates, decisions=args.decisions, reads=args.reads
                )

            server.stop()
            server = None
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}", file=sys.stderr)
    print_table(results, args.seed, args.workers, cpu_ms)
    return 0


@dataclass(kw_only=True)
class Calls:
    """Requests to our API; each decision takes the next pending request."""

    host: str
    headers: dict[str, str]
    ids: Iterator[str]
    one: str

    def approve(self) -> Call:
        """Approve the next pending request."""
        return Call.make(
            method="POST",
            path=f"{API}/{next(self.ids)}/approve",
            host=self.host,
            headers=self.headers,
            body={"comment": "benchmark"},
        )

    def get_one(self) -> Call:
        """Read one request with its votes and ``can_approve``."""
        return Call.make(method="GET", path=f"{API}/{self.one}", host=self.host, headers=self.headers)

    def pending(self) -> Call:
        """The first page (100 items) of the pending list."""
        return Call.make(method="GET", path=f"{API}/pending", host=self.host, headers=self.headers)


@dataclass(kw_only=True)
class NativeCalls:
    """The same operations on Airflow's own HITL API; each answer takes the next parked gate."""

    host: str
    headers: dict[str, str]
    runs: Iterator[str]
    one: str

    def _path(self, run_id: str) -> str:
        return f"/api/v2/dags/{NATIVE_DAG_ID}/dagRuns/{run_id}/taskInstances/{NATIVE_TASK_ID}/-1/hitlDetails"

    def answer(self) -> Call:
        """Approve the next parked gate."""
        return Call.make(
            method="PATCH",
            path=self._path(next(self.runs)),
            host=self.host,
            headers=self.headers,
            body={"chosen_options": ["Approve"]},
        )

    def get_one(self) -> Call:
        """Read one gate's details."""
        return Call.make(method="GET", path=self._path(self.one), host=self.host, headers=self.headers)

    def list_page(self) -> Call:
        """The first page (100 items) of all gates."""
        return Call.make(
            method="GET", path="/api/v2/dags/~/dagRuns/~/hitlDetails?limit=100", host=self.host, headers=self.headers
        )


if __name__ == "__main__":
    raise SystemExit(main())

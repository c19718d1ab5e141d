"""How ApprovalTrigger scales: N waiting triggers in one event loop, as in one triggerer.

For each backend (PostgreSQL, SQLite) and each N (100, 1,000, 10,000 by default) this
script:

1. creates a fresh store (a new PostgreSQL database ``hitl_bench_<pid>_<n>`` on the
   server given by ``--pg-url``, or a SQLite file in a temporary directory), migrates it
   with :func:`airflow_hitl.models.schema.migrate`, and seeds ``N + decisions`` pending
   requests (in bulk by default; ``--seed manager`` creates each through
   :meth:`ApprovalManager.create` instead);
2. starts N :class:`~airflow_hitl.triggers.approval.ApprovalTrigger` instances in ONE
   asyncio event loop, each ``trigger.run()`` async generator consumed by its own task,
   exactly as the triggerer does; ``AIRFLOW_HITL_STORE_URL`` points them at the store, so
   no Airflow connection is looked up;
3. (a) once every trigger has registered with the shared poller and seen its request's
   first state, counts store queries over an idle window, twice: the poller's own
   ``queries`` counter, and every statement the store's engine sends (a SQLAlchemy
   ``before_cursor_execute`` listener; on SQLite each read also sends ``BEGIN IMMEDIATE``,
   so it shows two statements per poll);
4. (b) makes ``--decisions`` decisions, one at a time at random (exponential) gaps, each
   through :meth:`ApprovalManager.approve` in a worker thread so the loop keeps running,
   and measures from just before ``approve()`` is called to the moment the matching
   trigger yields its event. Every decided trigger is replaced by a new one on a spare
   request, so N triggers keep waiting throughout (this matters for N=100 < 200 decisions).

It prints one table and asserts nothing about timing. Goals (issue 2): idle queries per
second independent of N; decision-to-event p99 under 1 s on PostgreSQL. SQLite has no
LISTEN/NOTIFY, so there a decision is seen at the next full poll (up to
``poll_interval`` later).

Run::

    .venv/bin/python benchmarks/trigger_scale.py                     # everything (~10 min)
    .venv/bin/python benchmarks/trigger_scale.py --sizes 100 --idle-seconds 3 --decisions 50
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.engine import make_url

from airflow_hitl import manager as manager_module
from airflow_hitl.audit import GENESIS_HASH, event_hash
from airflow_hitl.manager import ApprovalManager, ApprovalSpec, utcnow
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore, get_store, reset_stores
from airflow_hitl.models.tables import ApprovalEventRow, ApprovalRequestRow
from airflow_hitl.policy import Principal
from airflow_hitl.triggers.approval import ApprovalTrigger
from airflow_hitl.triggers.poller import ApprovalPoller, shared_poller

DAG_ID = "bench_trigger_scale"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"
# The manager serialises audit-chain appends with this advisory lock; the bulk seeder takes it too.
AUDIT_LOCK_KEY: int = getattr(manager_module, "_AUDIT_LOCK_KEY", 0x41F1_A0D1)

log = logging.getLogger("trigger_scale")


# ---------------------------------------------------------------------- results


@dataclass(kw_only=True)
class RunResult:
    """Figures for one (backend, N) run."""

    backend: str
    n: int
    seed_s: float = 0.0
    start_s: float = 0.0
    idle_window_s: float = 0.0
    idle_poller_queries: int = 0
    idle_statements: int = 0
    idle_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    approve_ms: list[float] = field(default_factory=list)
    lost: int = 0
    wrong_events: int = 0
    early_events: int = 0
    loop_lag_max_ms: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def poller_qps(self) -> float:
        """Poller queries per second while idle."""
        return self.idle_poller_queries / self.idle_window_s if self.idle_window_s else float("nan")

    @property
    def statements_ps(self) -> float:
        """Engine statements per second while idle."""
        return self.idle_statements / self.idle_window_s if self.idle_window_s else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / (1024 * 1024)


# ---------------------------------------------------------------------- stores


class StatementCounter:
    """Counts every statement an engine sends, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, *_args: Any, **_kwargs: Any) -> None:
        with self._lock:
            self.count += 1


@contextmanager
def postgres_store_url(base_url: str, n: int) -> Iterator[str]:
    """Create a fresh database for one run, yield its URL, drop it afterwards."""
    base = make_url(base_url)
    name = f"hitl_bench_{os.getpid()}_{n}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            reset_stores()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def sqlite_store_url(n: int) -> Iterator[str]:
    """A SQLite file in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hitl_bench_") as tmp:
        try:
            yield f"sqlite:///{os.path.join(tmp, f'hitl_bench_{n}.db')}"
        finally:
            reset_stores()


def bulk_seed(store: ApprovalStore, count: int) -> list[str]:
    """Insert ``count`` pending requests in a few statements, as ApprovalManager.create would.

    Each request row carries what ``ApprovalManager._insert`` writes for a minimal manual
    gate, and gets its ``requested`` audit event, chained to the previous event by hash
    under the manager's audit lock, so the store stays valid (checked afterwards with
    :meth:`ApprovalManager.verify_audit_chain`).
    """
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with store.begin() as session:
        if store.is_postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
        prev = session.scalar(select(ApprovalEventRow.hash).order_by(ApprovalEventRow.seq.desc()).limit(1))
        prev = prev or GENESIS_HASH
        for start in range(0, count, 1000):
            chunk = ids[start : start + 1000]
            requests: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for offset, request_id in enumerate(chunk):
                run_id = f"run_{start + offset}"
                requests.append(
                    {
                        "id": request_id,
                        "dag_id": DAG_ID,
                        "run_id": run_id,
                        "task_id": "gate",
                        "map_index": -1,
                        "try_number": 1,
                        "title": f"benchmark gate {start + offset}",
                        "context": {},
                        "approval_type": "manual",
                        "state": "pending",
                        "requested_at": now,
                        "escalation_level": 0,
                        "escalation_targets": [],
                        "required_approvals": 1,
                        "require_all": False,
                        "allowed_approvers": [],
                        "allowed_roles": [],
                        "allow_self_approval": False,
                        "on_reject": "fail",
                        "metadata_": {},
                        "notify": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                details = {
                    "dag_id": DAG_ID,
                    "run_id": run_id,
                    "task_id": "gate",
                    "map_index": -1,
                    "try_number": 1,
                    "expires_at": None,
                    "required_approvals": 1,
                    "allowed_approvers": [],
                    "allowed_roles": [],
                }
                digest = event_hash(
                    prev_hash=prev,
                    request_id=request_id,
                    event_type="requested",
                    actor=None,
                    source="operator",
                    comment=None,
                    details=details,
                    created_at=now,
                )
                events.append(
                    {
                        "request_id": request_id,
                        "event_type": "requested",
                        "actor": None,
                        "source": "operator",
                        "comment": None,
                        "details": details,
                        "created_at": now,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            session.execute(insert(ApprovalRequestRow), requests)
            # Rows are inserted in list order, so ``seq`` follows the chain (verified after seeding).
            session.execute(insert(ApprovalEventRow), events)
    return ids


def manager_seed(manager: ApprovalManager, count: int, threads: int = 4) -> list[str]:
    """Create ``count`` requests one by one through ApprovalManager.create (slow, exact)."""

    def create(i: int) -> str:
        spec = ApprovalSpec(dag_id=DAG_ID, title=f"benchmark gate {i}", run_id=f"run_{i}", task_id="gate", try_number=1)
        return manager.create(spec).id

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(create, range(count)))


# ---------------------------------------------------------------------- the run


async def loop_lag_monitor(result: RunResult, stop: asyncio.Event, tick: float = 0.05) -> None:
    """Record the worst lateness of a short sleep: how long the loop was kept busy."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(tick)
        lag = (time.perf_counter() - before - tick) * 1000
        result.loop_lag_max_ms = max(result.loop_lag_max_ms, lag)


async def consume(
    trigger: ApprovalTrigger,
    result: RunResult,
    decided_at: dict[str, float],
    waiters: dict[str, asyncio.Future[float]],
) -> None:
    """What the triggerer does with ``trigger.run()``: iterate it and hand events on (here: time them)."""
    async for ev in trigger.run():
        now = time.perf_counter()
        payload = ev.payload
        rid = trigger.request_id
        if rid not in decided_at:
            result.early_events += 1
            log.error("trigger %s yielded %r before any decision", rid, payload)
        elif payload.get("status") != "decided" or payload.get("state") != "approved":
            result.wrong_events += 1
            log.error("trigger %s yielded %r, expected decided/approved", rid, payload)
        fut = waiters.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(now)


def record_latencies(
    result: RunResult, decided_at: dict[str, float], waiters: dict[str, asyncio.Future[float]]
) -> None:
    """Decision-to-event latency of every decided request; one that saw no event is lost."""
    for request_id, fut in waiters.items():
        if fut.done():
            result.latencies_ms.append((fut.result() - decided_at[request_id]) * 1000)
        else:
            result.lost += 1
            log.error("no event for decided request %s within the deadline", request_id)


async def run_triggers(
    *,
    result: RunResult,
    manager: ApprovalManager,
    counter: StatementCounter,
    ids: list[str],
    n: int,
    decisions: int,
    idle_seconds: float,
    poll_interval: float,
    decision_gap: float,
    rng: random.Random,
) -> None:
    """Start ``n`` triggers, measure idle load, then decision-to-event latency."""
    loop = asyncio.get_running_loop()
    # The same call, with the same arguments, that every ApprovalTrigger makes; the first
    # caller creates the poller, every later one (all the triggers) gets this same object.
    poller: ApprovalPoller = shared_poller(manager, poll_interval=poll_interval)
    waiting: deque[str] = deque()
    spare = deque(ids[n:])
    decided_at: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def start(request_id: str) -> None:
        trigger = ApprovalTrigger(request_id=request_id, poll_interval=poll_interval)
        task = loop.create_task(consume(trigger, result, decided_at, waiters), name=f"trigger-{request_id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        waiting.append(request_id)

    def all_registered() -> bool:
        # Private state, read only here: every watch exists and has seen its first state.
        watches = poller._watches
        return len(watches) >= n and all(w.state is not None for ws in watches.values() for w in ws)

    stop_monitor = asyncio.Event()
    first = ids[:n]
    rng.shuffle(first)  # decisions then hit waiting triggers in random order
    t0 = time.perf_counter()
    for request_id in first:
        start(request_id)
        await asyncio.sleep(0)  # the triggerer yields to the loop between trigger creations
    while not all_registered():
        await asyncio.sleep(0.05)
    result.start_s = time.perf_counter() - t0

    monitor = loop.create_task(loop_lag_monitor(result, stop_monitor))

    # (a) idle load: nothing is decided, every trigger waits.
    q0, s0, e0 = poller.queries, counter.count, poller.errors
    w0 = time.perf_counter()
    await asyncio.sleep(idle_seconds)
    result.idle_window_s = time.perf_counter() - w0
    result.idle_poller_queries = poller.queries - q0
    result.idle_statements = counter.count - s0
    result.idle_errors = poller.errors - e0

    # (b) decisions, one at a time, from a worker thread; N stays constant.
    alice = Principal.of("alice")
    decider = ThreadPoolExecutor(1, thread_name_prefix="decider")

    def approve(request_id: str) -> tuple[float, float]:
        before = time.perf_counter()
        manager.approve(request_id, user=alice, comment="benchmark", source="api")
        return before, time.perf_counter()

    try:
        for _ in range(decisions):
            request_id = waiting.popleft()
            waiters[request_id] = loop.create_future()
            decided_at[request_id] = float("nan")  # the trigger may wake before approve() returns
            before, after = await loop.run_in_executor(decider, approve, request_id)
            decided_at[request_id] = before
            result.approve_ms.append((after - before) * 1000)
            if spare:
                start(spare.popleft())
            await asyncio.sleep(rng.expovariate(1 / decision_gap) if decision_gap > 0 else 0)
        deadline = 3 * poll_interval + 10
        pending = [f for f in waiters.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=deadline)
    finally:
        decider.shutdown(wait=True)
    record_latencies(result, decided_at, waiters)

    stop_monitor.set()
    await monitor
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_one(
    *,
    backend: str,
    n: int,
    args: argparse.Namespace,
) -> RunResult:
    """Create and seed a store, run the triggers against it, tear it down."""
    result = RunResult(backend=backend, n=n)
    store_cm = postgres_store_url(args.pg_url, n) if backend == "postgres" else sqlite_store_url(n)
    with store_cm as url:
        fresh = ApprovalStore(url=url)
        migrate(fresh)
        fresh.dispose()
        os.environ["AIRFLOW_HITL_STORE_URL"] = url
        store = get_store(url=url)  # the very store object every trigger resolves to
        manager = ApprovalManager(store=store)
        counter = StatementCounter()
        event.listen(store.engine, "before_cursor_execute", counter)

        total = n + args.decisions
        t0 = time.perf_counter()
        ids = manager_seed(manager, total) if args.seed == "manager" else bulk_seed(store, total)
        result.seed_s = time.perf_counter() - t0
        check = manager.audit.verify_audit_chain()
        if not check.ok or manager.queries.get(ids[-1]).state != "pending":
            raise SystemExit(f"seeding broke the store: {check}")

        asyncio.run(
            run_triggers(
                result=result,
                manager=manager,
                counter=counter,
                ids=ids,
                n=n,
                decisions=args.decisions,
                idle_seconds=args.idle_seconds,
                poll_interval=args.poll_interval,
                decision_gap=args.decision_gap,
                rng=random.Random(args.random_seed),
            )
        )
        check = manager.audit.verify_audit_chain()
        if not check.ok:
            log.error("audit chain broken after the run: %s", check)
        event.remove(store.engine, "before_cursor_execute", counter)
        os.environ.pop("AIRFLOW_HITL_STORE_URL", None)
    result.peak_rss_mb = peak_rss_mb()
    return result


# ---------------------------------------------------------------------- output


def format_table(results: list[RunResult]) -> str:
    """One fixed-width table of every run."""
    headers = [
        "backend",
        "N",
        "seed s",
        "start s",
        "idle q/s",
        "stmts/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "approve p50 ms",
        "lost",
        "loop lag max ms",
        "peak RSS MiB",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.backend,
                f"{r.n:,}",
                f"{r.seed_s:.1f}",
                f"{r.start_s:.1f}",
                f"{r.poller_qps:.2f}",
                f"{r.statements_ps:.2f}",
                f"{percentile(r.latencies_ms, 50):.0f}",
                f"{percentile(r.latencies_ms, 99):.0f}",
                f"{max(r.latencies_ms, default=float('nan')):.0f}",
                f"{statistics.median(r.approve_ms) if r.approve_ms else float('nan'):.0f}",
                f"{r.lost + r.wrong_events + r.early_events}",
                f"{r.loop_lag_max_ms:.0f}",
                f"{r.peak_rss_mb:.0f}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        # The backend name is left-aligned, every figure right-aligned.
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    lines.extend(line(row) for row in rows)
    return "\n".join(lines)


def goals_note(results: list[RunResult], poll_interval: float) -> str:
    """Say whether the two goals of issue 2 were met by these figures."""
    lines = ["Goals:"]
    for backend in sorted({r.backend for r in results}):
        rates = [r.poller_qps for r in results if r.backend == backend]
        sizes = [f"{r.n:,}" for r in results if r.backend == backend]
        spread = max(rates) - min(rates)
        ok = all(abs(q - 1 / poll_interval) <= 0.5 / poll_interval + 0.1 for q in rates)
        lines.append(
            f"  {backend}: idle queries/s {', '.join(f'{q:.2f}' for q in rates)} for N = {', '.join(sizes)}"
            f" (spread {spread:.2f}; one poll per {poll_interval:g} s = {1 / poll_interval:.2f}/s)"
            f" -> {'independent of N' if ok else 'NOT independent of N'}"
        )
    pg = [r for r in results if r.backend == "postgres"]
    if pg:
        worst = max(percentile(r.latencies_ms, 99) for r in pg)
        verdict = "met" if worst < 1000 else "NOT met"
        lines.append(f"  postgres: worst p99 {worst:.0f} ms -> p99 < 1 s {verdict}")
    if any(r.backend == "sqlite" for r in results):
        lines.append(
            f"  sqlite: no LISTEN/NOTIFY, so a decision is seen at the next full poll: latency is spread"
            f" over 0..{poll_interval:g} s by design (p99 goal applies to PostgreSQL only)."
        )
    lost = sum(r.lost + r.wrong_events + r.early_events for r in results)
    errors = sum(r.idle_errors for r in results)
    lines.append(f"  lost / wrong / early events: {lost}; store errors while idle: {errors}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 10000], help="N values"
    )
    parser.add_argument(
        "--backends",
        type=lambda s: [x.strip() for x in s.split(",")],
        default=["postgres", "sqlite"],
        help="comma-separated: postgres,sqlite",
    )
    parser.add_argument("--decisions", type=int, default=200, help="decisions timed per run (default 200)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle window per run (default 10)")
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="poller interval in seconds (default 2.0, the [hitl] default)"
    )
    parser.add_argument(
        "--decision-gap", type=float, default=0.05, help="mean random gap between decisions, seconds (default 0.05)"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"PostgreSQL server (default {DEFAULT_PG_URL})")
    parser.add_argument(
        "--seed", choices=["bulk", "manager"], default="bulk", help="how to create the requests (default bulk)"
    )
    parser.add_argument("--random-seed", type=int, default=1234, help="seed for decision order and gaps")
    args = parser.parse_args(argv)
    unknown = set(args.backends) - {"postgres", "sqlite"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.decisions < 1 or args.idle_seconds <= 0 or args.poll_interval <= 0:
        parser.error("--decisions, --idle-seconds and --poll-interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every (backend, N) combination and print the table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # One INFO line per decided trigger would drown the table.
    logging.getLogger("airflow_hitl").setLevel(logging.WARNING)
    logging.getLogger("airflow.triggers").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"trigger_scale: poll_interval={args.poll_interval:g} s"
        f"{' (the [hitl] default)' if args.poll_interval == 2.0 else ''}, idle window {args.idle_seconds:g} s,"
        f" {args.decisions} decisions per run (mean gap {args.decision_gap * 1000:.0f} ms), seeding: {args.seed},"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f},"
        f" {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    results: list[RunResult] = []
    for backend in args.backends:
        for n in args.sizes:
            print(f"  running {backend} N={n:,} ...", end="", flush=True)
            t0 = time.perf_counter()
            result = run_one(backend=backend, n=n, args=args)
            results.append(result)
            print(
                f" {time.perf_counter() - t0:.0f} s (idle {result.poller_qps:.2f} q/s,"
                f" p99 {percentile(result.latencies_ms, 99):.0f} ms)",
                flush=True,
            )
    print()
    print(format_table(results))
    print()
    print(
        "seed s: creating N+decisions pending requests; start s: from starting N trigger tasks until all have\n"
        "registered with the shared poller and seen their first state; idle q/s: the poller's `queries` counter;\n"
        "stmts/s: statements on the store's engine (SQLite adds BEGIN IMMEDIATE to each read; the LISTEN\n"
        "connection is separate and idle); p50/p99/max: approve() called -> trigger yields its event;\n"
        "approve p50: duration of the approve() call itself; lost: decisions with no, a wrong or an early event;\n"
        "loop lag: worst lateness of a 50 ms sleep in the triggers' event loop; peak RSS: whole process so far."
    )
    print()
    print(goals_note(results, args.poll_interval))
    print(f"Load average after the runs: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"Peak RSS of this process: {peak_rss_mb():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

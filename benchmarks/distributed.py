"""Gates opened, decided and resumed on the production topology, beside a single-machine Airflow.

Not a test: it prints figures. For each setup it starts a real Airflow with the e2e harness
(``tests/e2e/harness.py``), both with Airflow's metadata DB and the approval store on fresh
PostgreSQL databases (the store behind the ``hitl_default`` connection):

* ``distributed``: the shape of ``docker-compose.yaml``: CeleryExecutor on the local Redis
  with one Celery worker, two api-servers, two triggerers, FAB auth manager;
* ``single``: LocalExecutor, one api-server, one triggerer, SimpleAuthManager.

Then it triggers ``--gates`` runs of a one-gate DAG at once (through the api-servers in
turn), approves each request through the REST API the moment it appears in the store (8
client threads, the api-servers in turn), and waits until every run has succeeded. Printed
per setup:

* gates per second **opened** (requests created / time from the first trigger to the last
  request), **decided** (decisions / time from the first to the last decision) and
  **resumed** (gate tasks ended / time from the first decision to the last gate's end);
* decision to gate-task success, p50 and p99 (the store's ``decided_at`` to the task
  instance's ``end_date``); the trigger ends the task itself, so no worker slot is involved;
* the store's queries per second: ``pg_stat_database.xact_commit`` of the store database over
  the whole measurement, divided by its duration (every statement the store runs is its own
  transaction or part of one, so this counts transactions, not statements).

Usage::

    .venv/bin/python benchmarks/distributed.py [--gates 200] [--setups distributed,single]

On the 2-core development machine, shared with other work, one setup takes several minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from airflow_hitl.manager import ApprovalFilter  # noqa: E402
from tests.e2e.harness import PG_ADMIN_URL, AirflowHarness, HarnessError, wait_until  # noqa: E402

DAG_ID = "bench_distributed"
CLIENTS = 8
SETUPS = {
    "distributed": {"executor": "CeleryExecutor", "auth_manager": "fab", "api_servers": 2, "triggerers": 2},
    "single": {"executor": "LocalExecutor", "auth_manager": "simple", "api_servers": 1, "triggerers": 1},
}


def bench_dag(gates: int) -> str:
    """A DAG with one gate and one task after it that lets ``gates`` runs be active at once."""
    return textwrap.dedent(
        f'''
        """One gate per run, for benchmarks/distributed.py."""
        from __future__ import annotations

        import datetime as dt

        from airflow.sdk import DAG, task

        from airflow_hitl.operators.approval import ApprovalOperator

        with DAG(
            dag_id="{DAG_ID}",
            schedule=None,
            start_date=dt.datetime(2026, 1, 1),
            catchup=False,
            max_active_runs={gates},
            max_active_tasks={gates},
        ):

            @task
            def after() -> str:
                return "ran"

            ApprovalOperator(task_id="gate", title="benchmark gate") >> after()
        '''
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True, kw_only=True)
class Figures:
    """What one setup measured."""

    setup: str
    gates: int
    opened_per_s: float
    decided_per_s: float
    resumed_per_s: float
    p50_s: float
    p99_s: float
    store_qps: float
    failed: int


def xact_commits(store_url: str) -> int:
    """Committed transactions of the store's database so far."""
    name = make_url(store_url).database
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = :name"), {"name": name}
            ).scalar()
    finally:
        engine.dispose()
    return int(value or 0)


def gate_ends(metadata_url: str) -> dict[str, tuple[str | None, dt.datetime | None]]:
    """``run_id -> (state, end_date)`` of every gate task instance of the benchmark DAG."""
    engine = create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT run_id, state, end_date FROM task_instance WHERE dag_id = :d AND task_id = 'gate'"),
                {"d": DAG_ID},
            ).all()
    finally:
        engine.dispose()
    return {row[0]: (row[1], row[2]) for row in rows}


def measure(airflow: AirflowHarness, *, setup: str, gates: int) -> Figures:
    """Open ``gates`` gates at once, approve each as it appears, wait for every run to end."""
    users = ("alice", "bob") if setup == "distributed" else ("alice",)
    for user in users:
        airflow.token(user)
    airflow.unpause(DAG_ID)
    servers = len(airflow.base_urls)
    commits_before = xact_commits(airflow.store_url)
    started = time.time()
    start_clock = dt.datetime.now(dt.timezone.utc)

    def trigger(i: int) -> str:
        body = {"logical_date": None, "conf": {}}
        response = airflow.api(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json_body=body, server=i % servers, expect=(200, 201)
        )
        return str(response.json()["dag_run_id"])

    with ThreadPoolExecutor(CLIENTS) as pool:
        run_ids = set(pool.map(trigger, range(gates)))

    decided: dict[str, str] = {}
    lock = threading.Lock()
    pool = ThreadPoolExecutor(CLIENTS)
    counter = iter(range(10**9))

    def approve(approval_id: str) -> None:
        n = next(counter)
        airflow.api(
            "POST",
            f"/hitl/api/v1/approvals/{approval_id}/approve",
            user=users[n % len(users)],
            server=n % servers,
            json_body={"comment": "benchmark"},
            expect=(200, 409),
        )

    deadline = time.monotonic() + 60 * 30
    while True:
        waiting, _ = airflow.manager.queries.pending(ApprovalFilter(dag_id=DAG_ID), limit=1000)
        for approval in waiting:
            with lock:
                if approval.run_id in run_ids and approval.run_id not in decided:
                    decided[str(approval.run_id)] = approval.id
                    pool.submit(approve, approval.id)
        if len(decided) >= gates:
            break
        if time.monotonic() > deadline:
            raise HarnessError(f"only {len(decided)} of {gates} gates opened in 30 minutes")
        time.sleep(0.05)
    pool.shutdown(wait=True)

    def all_ended() -> dict[str, tuple[str | None, dt.datetime | None]] | None:
        ends = gate_ends(airflow.metadata_db_url)
        done = {r: e for r, e in ends.items() if r in run_ids and e[0] in {"success", "failed", "skipped"}}
        return done if len(done) == gates else None

    ends = wait_until(all_ended, timeout=60 * 30, interval=1.0, what="every gate to end")
    elapsed = time.time() - started
    commits = xact_commits(airflow.store_url) - commits_before

    approvals = [airflow.manager.queries.get(request_id) for request_id in decided.values()]
    opened = [a.requested_at for a in approvals]
    decisions = {a.run_id: a.decided_at for a in approvals if a.decided_at}
    end_dates = {run_id: end for run_id, (_, end) in ends.items() if end}
    latencies = [
        (end_dates[run_id] - decided_at).total_seconds()
        for run_id, decided_at in decisions.items()
        if run_id in end_dates
    ]
    first_decision, last_decision = min(decisions.values()), max(decisions.values())
    return Figures(
        setup=setup,
        gates=gates,
        opened_per_s=gates / max((max(opened) - start_clock).total_seconds(), 1e-9),
        decided_per_s=gates / max((last_decision - first_decision).total_seconds(), 1e-9),
        resumed_per_s=gates / max((max(end_dates.values()) - first_decision).total_seconds(), 1e-9),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        store_qps=commits / elapsed,
        failed=sum(1 for state, _ in ends.values() if state != "success"),
    )


def run_setup(setup: str, *, gates: int) -> Figures:
    """Start ``setup``, measure it, stop it."""
    with tempfile.TemporaryDirectory(prefix=f"hitl-bench-{setup}-") as tmp:
        root = Path(tmp)
        dags = root / "bench-dags"
        dags.mkdir()
        (dags / "bench_distributed.py").write_text(bench_dag(gates))
        airflow = AirflowHarness(root=root / "stack", extra_dag_dirs=[dags], store="postgres", **SETUPS[setup])
        airflow.env.update(
            {
                "AIRFLOW__CORE__PARALLELISM": "32",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "8",
            }
        )
        print(f"starting the {setup} setup ...", file=sys.stderr, flush=True)
        airflow.start()
        try:
            print(f"measuring {gates} gates on the {setup} setup ...", file=sys.stderr, flush=True)
            return measure(airflow, setup=setup, gates=gates)
        finally:
            airflow.stop()


def print_table(results: Sequence[Figures]) -> None:
    """The figures, one row per setup."""
    print(f"\n{results[0].gates} gates opened at once, approved through the REST API\n")
    print("| setup | opened/s | decided/s | resumed/s | decision->success p50 s | p99 s | store q/s | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.setup} | {r.opened_per_s:.1f} | {r.decided_per_s:.1f} | {r.resumed_per_s:.1f} "
            f"| {r.p50_s:.2f} | {r.p99_s:.2f} | {r.store_qps:.1f} | {r.failed} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gates", type=int, default=200)
    parser.add_argument("--setups", default="distributed,single")
    args = parser.parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {sorted(SETUPS)}")
    results = [run_setup(setup, gates=args.gates) for setup in setups]
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

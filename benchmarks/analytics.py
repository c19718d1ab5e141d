"""How long ``ApprovalAnalytics.report`` takes over 100,000 requests, on PostgreSQL and SQLite.

Not a test: it prints figures. For each backend it

1. makes a fresh store (a new PostgreSQL database on ``--pg``, dropped at the end; a SQLite
   file in a temporary directory), migrated as the package migrates it;
2. fills it with ``--requests`` synthetic requests (100,000 by default) by bulk insert, not
   through the manager. What is synthetic: 50 DAGs of 4 gates each, and 2 % of requests
   opened over the API without a task, over the last 90 days; 70 % approved (one in twenty
   automatically, at once), 12 % rejected, 8 % timed out, 5 % cancelled and 5 % still
   waiting (opened in the last 3 days), 10 % escalated; waits drawn from a log-normal law
   (median about 20 minutes, a tail of days); one vote per decision (two on 30 % of
   approvals, one short of quorum on some timeouts) from 300 approvers; a third of the gates
   with a 2-hour SLA, breached (``sla_breached_at`` and its audit event) when one still
   waited as it ran out; about a kilobyte of title, description, context and notify per
   request, as real gates carry (what a scan of the table reads); an audit event per
   request, vote, escalation, breach and ending, with random hashes (the chain does not
   verify: the report never reads the audit trail). The seed is fixed: every run reads the
   same rows;
3. analyses the tables (``VACUUM ANALYZE``; SQLite ``ANALYZE``), as autovacuum would have;
4. calls ``report()`` ``--calls`` times per filter (after a few warm-up calls) and prints
   p50, p99 (nearest rank) and max in milliseconds, and how many gates, approvers and days
   each answered and how many decisions its time-to-decision histogram counted (the report's
   four statements: gates, approvers, days, histogram), with the store as migrated (the
   covering indexes of revisions 0012 and 0014, and the day statistics of 0012).

The target (issue 28): p99 <= 200 ms on PostgreSQL. The machine line gives its load and
speed (``sum(range(1000000))``, as docs/benchmarks.md compares machines). Usage::

    .venv/bin/python benchmarks/analytics.py [--requests 100000] [--calls 50]
        [--backend postgres,sqlite] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from api_latency import PG_ADMIN_URL, fresh_databases  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402

from airflow_hitl.analytics import ApprovalAnalytics  # noqa: E402
from airflow_hitl.models.schema import migrate  # noqa: E402
from airflow_hitl.models.store import ApprovalStore  # noqa: E402
from airflow_hitl.models.tables import ApprovalEventRow, ApprovalRequestRow, ApprovalVoteRow  # noqa: E402
from airflow_hitl.spec import utcnow  # noqa: E402
from airflow_hitl.vocabulary import Action, AuditType, Origin, Source, State  # noqa: E402

DAGS = 50
GATES_PER_DAG = 4
APPROVERS = 300
DAYS = 90
BATCH = 5_000
#: The SLA of the synthetic gates that have one.
SLA_SECONDS = 7200.0
DESCRIPTION = "Promote the candidate to production once its evaluation has been reviewed. " * 3
METRICS = {f"metric_{i}": i / 7 for i in range(16)}
FACTS = {"content_digest": "0" * 64, "required_approvals": 1, "allowed_approvers": ["a", "b", "c"]}
WARM_UP = 5
SEED = 28


@dataclass(frozen=True)
class Filter:
    """One row of the table: a name and the arguments of ``report()``."""

    name: str
    arguments: dict[str, Any]


def filters(now: dt.datetime) -> list[Filter]:
    """The report's calls measured: every DAG, a caller's readable DAGs, one DAG, one gate, a week."""
    every = {f"dag_{d:02d}" for d in range(DAGS)}
    return [
        Filter("every DAG (dag_ids=None)", {"dag_ids": None}),
        Filter(f"readable DAGs listed ({DAGS} of {DAGS})", {"dag_ids": every}),
        Filter(f"readable DAGs listed (10 of {DAGS})", {"dag_ids": {f"dag_{d:02d}" for d in range(0, DAGS, 5)}}),
        Filter("dag_id", {"dag_ids": None, "dag_id": "dag_07"}),
        Filter("dag_id + task_id", {"dag_ids": None, "dag_id": "dag_07", "task_id": "gate_1"}),
        Filter("since: last 7 days", {"dag_ids": None, "since": now - dt.timedelta(days=7)}),
        Filter(
            "10 DAGs + last 30 days",
            {"dag_ids": {f"dag_{d:02d}" for d in range(10)}, "since": now - dt.timedelta(days=30)},
        ),
    ]


class Synthetic:
    """The synthetic rows of the store (see the module docstring), generated batch by batch."""

    def __init__(self, *, requests: int, now: dt.datetime) -> None:
        self.requests = requests
        self.now = now
        self.random = random.Random(SEED)
        self.counts = {"requests": 0, "votes": 0, "events": 0}

    def batches(self) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
        """(requests, votes, events) rows, ``BATCH`` requests at a time."""
        for start in range(0, self.requests, BATCH):
            rows: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] = ([], [], [])
            for index in range(start, min(start + BATCH, self.requests)):
                self._request(index, *rows)
            for name, got in zip(self.counts, rows, strict=True):
                self.counts[name] += len(got)
            yield rows

    def _request(
        self, index: int, requests: list[dict[str, Any]], votes: list[dict[str, Any]], events: list[dict[str, Any]]
    ) -> None:
        rnd = self.random
        draw = rnd.random()
        state = (
            State.APPROVED
            if draw < 0.70
            else State.REJECTED
            if draw < 0.82
            else State.TIMEOUT
            if draw < 0.90
            else State.CANCELLED
            if draw < 0.95
            else State.PENDING
        )
        age = dt.timedelta(days=rnd.uniform(0, 3 if state == State.PENDING else DAYS))
        requested_at = self.now - age
        escalated = rnd.random() < 0.10
        if state == State.PENDING and escalated:
            state = State.ESCALATED
        automatic = state == State.APPROVED and rnd.random() < 0.05
        # Log-normal waits: median e^7 s (about 20 minutes), a long tail of days.
        wait = 0.0 if automatic else min(rnd.lognormvariate(7.1, 1.4), age.total_seconds())
        decided_at = None if state in (State.PENDING, State.ESCALATED) else requested_at + dt.timedelta(seconds=wait)
        api = rnd.random() < 0.02
        dag_id = f"dag_{rnd.randrange(DAGS):02d}"
        request_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        voters = rnd.sample(range(APPROVERS), 3)
        voters_named = [f"user_{v:03d}" for v in voters]
        # A third of the gates have an SLA; a breach is recorded when one still waits as it runs out.
        sla = SLA_SECONDS if rnd.random() < 1 / 3 else None
        breach_due = requested_at + dt.timedelta(seconds=SLA_SECONDS)
        waits_past_sla = wait > SLA_SECONDS or (decided_at is None and breach_due <= self.now)
        breached_at = breach_due if sla is not None and waits_past_sla else None
        requests.append(
            {
                "id": request_id,
                "dag_id": dag_id,
                "run_id": None if api else f"scheduled__{index}",
                "task_id": None if api else f"gate_{rnd.randrange(GATES_PER_DAG)}",
                "try_number": None if api else 1,
                "origin": Origin.API if api else Origin.TASK,
                "title": f"Release model {dag_id} build {index}",
                # About a kilobyte per row, as gates carry: what the heap scans would read.
                "description": DESCRIPTION,
                "context": {"run_conf": {"model": f"m{index % 97}", "version": index}, "metrics": METRICS},
                "allowed_approvers": voters_named[:3],
                "allowed_roles": ["Op"],
                "notify": {"channels": ["email", "slack"], "remind_every_seconds": 3600},
                "sla_seconds": sla,
                "sla_breached_at": breached_at,
                "state": state,
                "requested_by": "scheduler",
                "requested_at": requested_at,
                "escalation_level": 1 if escalated else 0,
                "required_approvals": 2 if state == State.APPROVED and rnd.random() < 0.3 else 1,
                "decided_at": decided_at,
                "decision": state if state in (State.APPROVED, State.REJECTED) else None,
                "decision_source": None if decided_at is None else Source.AUTO if automatic else Source.API,
                "created_at": requested_at,
                "updated_at": decided_at or requested_at,
            }
        )
        self._event(events, request_id, AuditType.REQUESTED, requested_at)
        cast = (
            requests[-1]["required_approvals"]
            if state == State.APPROVED and not automatic
            else 1
            if state == State.REJECTED or (state == State.TIMEOUT and rnd.random() < 0.3)
            else 0
        )
        for number in range(cast):
            # The last vote decides; an earlier one came somewhere in between.
            at = (
                decided_at
                if number == cast - 1 and decided_at
                else requested_at + dt.timedelta(seconds=wait * rnd.random())
            )
            vote = Action.REJECT if state == State.REJECTED else Action.APPROVE
            votes.append(
                {
                    "request_id": request_id,
                    "user": voters_named[number],
                    "vote": vote,
                    "reason": "no" if vote == Action.REJECT else None,
                    "source": Source.API,
                    "created_at": at,
                    # The request's own, as the manager writes them with every vote (revision 0014).
                    "dag_id": dag_id,
                    "task_id": requests[-1]["task_id"],
                    "requested_at": requested_at,
                }
            )
            self._event(events, request_id, AuditType.VOTE, at)
        if escalated:
            self._event(events, request_id, AuditType.ESCALATED, requested_at + dt.timedelta(seconds=wait / 2))
        if breached_at is not None:
            self._event(events, request_id, AuditType.SLA_BREACHED, breached_at)
        if decided_at is not None:
            self._event(events, request_id, str(state), decided_at)

    @staticmethod
    def _event(events: list[dict[str, Any]], request_id: str, event_type: str, at: dt.datetime) -> None:
        events.append(
            {
                "request_id": request_id,
                "event_type": event_type,
                "source": Source.SYSTEM,
                "created_at": at,
                "details": {"dag_id": "synthetic", "facts": FACTS},
                "prev_hash": "0" * 64,
                "hash": uuid.uuid4().hex + uuid.uuid4().hex,
            }
        )


def fill(store: ApprovalStore, *, requests: int, now: dt.datetime) -> dict[str, int]:
    """Bulk-insert the synthetic rows and analyse the tables; how many rows of each."""
    data = Synthetic(requests=requests, now=now)
    for request_rows, vote_rows, event_rows in data.batches():
        with store.engine.begin() as conn:
            conn.execute(insert(ApprovalRequestRow), request_rows)
            conn.execute(insert(ApprovalVoteRow), vote_rows)
            conn.execute(insert(ApprovalEventRow), event_rows)
    analyse(store)
    return data.counts


def analyse(store: ApprovalStore) -> None:
    """Statistics (and, on PostgreSQL, the visibility map index-only scans need), as autovacuum keeps them."""
    if store.is_postgres:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def machine() -> str:
    """The machine's load and speed, as docs/benchmarks.md compares machines."""
    started = time.perf_counter()
    for _ in range(5):
        sum(range(1_000_000))
    speed = (time.perf_counter() - started) / 5 * 1000
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}, sum(range(1000000)) {speed:.1f} ms"


def percentile(values: list[float], p: int) -> float:
    """The ``p``-th percentile (nearest rank: with 50 calls, p99 is the slowest but none)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class CpuClock:
    """CPU time spent by this process and by the store's PostgreSQL backends (read from ``/proc``).

    Unlike latency it does not depend on what else the machine runs. The backends are known
    when the store's pool opens a connection; on a server elsewhere (or without ``/proc``)
    only this process is counted. SQLite runs in this process: its CPU is the client's.
    """

    def __init__(self, store: ApprovalStore) -> None:
        self.backends: set[int] = set()
        if store.is_postgres:
            event.listen(store.engine, "connect", self._connected)
            store.engine.dispose()  # the connections of the fill are not known: opened again

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        self.backends.add(int(cursor.fetchone()[0]))
        cursor.close()
        dbapi_connection.commit()  # the pool hands out connections outside a transaction

    def store_ms(self) -> float | None:
        """CPU milliseconds of the backends so far (None: not readable here)."""
        ticks = 0
        for pid in self.backends:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks * 1000 / os.sysconf("SC_CLK_TCK") if self.backends else None


@dataclass
class Measured:
    """What one row of the table measured."""

    times: list[float]
    answer: dict[str, Any]
    client_cpu_ms: float
    store_cpu_ms: float | None


def measure(call: Callable[[], dict[str, Any]], calls: int, cpu: CpuClock) -> Measured:
    """Milliseconds of each of ``calls`` calls (after warming up), the last answer, and CPU per call."""
    for _ in range(WARM_UP):
        answer = call()
    times = []
    client, store = time.process_time(), cpu.store_ms()
    for _ in range(calls):
        started = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - started) * 1000)
    client_ms = (time.process_time() - client) * 1000 / calls
    store_after = cpu.store_ms()
    store_ms = None if store is None or store_after is None else (store_after - store) / calls
    return Measured(times=times, answer=answer, client_cpu_ms=client_ms, store_cpu_ms=store_ms)


def run(backend: str, store: ApprovalStore, *, requests: int, calls: int) -> list[str]:
    """Fill one store and time the report on it; the table's rows."""
    now = utcnow()
    migrate(store)
    started = time.perf_counter()
    counts = fill(store, requests=requests, now=now)
    print(
        f"{backend}: {counts['requests']:,} requests, {counts['votes']:,} votes, {counts['events']:,} audit events "
        f"inserted and analysed in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    analytics = ApprovalAnalytics(store=store)
    cpu = CpuClock(store)
    rows = []
    for case in filters(now):
        got = measure(lambda case=case: dict(analytics.report(**case.arguments)), calls, cpu)
        sizes = "/".join(str(len(got.answer[k])) for k in ("gates", "approvers", "daily"))
        bars = got.answer["time_to_decision_histogram"]
        sizes += "/" + str(sum(b["approved"] + b["rejected"] for b in bars))
        store_cpu = "-" if got.store_cpu_ms is None else f"{got.store_cpu_ms:.0f}"
        rows.append(
            f"| {backend} | {case.name} | {sizes} | {statistics.median(got.times):.1f} | "
            f"{percentile(got.times, 99):.1f} | {max(got.times):.1f} | {store_cpu} | {got.client_cpu_ms:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


@contextmanager
def sqlite_store() -> Iterator[ApprovalStore]:
    """A SQLite store in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="hitl-analytics-") as folder:
        store = ApprovalStore(url=f"sqlite:///{folder}/hitl.db")
        try:
            yield store
        finally:
            store.dispose()


@contextmanager
def postgres_store(admin_url: str) -> Iterator[ApprovalStore]:
    """A store on a fresh PostgreSQL database, dropped afterwards."""
    with fresh_databases(admin_url, f"hitl_analytics_{uuid.uuid4().hex[:10]}") as (url,):
        store = ApprovalStore(url=url)
        try:
            yield store
        finally:
            store.dispose()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--backend", default="postgres,sqlite", help="comma-separated: postgres, sqlite")
    parser.add_argument("--pg", default=PG_ADMIN_URL, help="PostgreSQL admin URL (a database is created and dropped)")
    args = parser.parse_args(argv)
    rows: list[str] = []
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        if backend not in {"postgres", "sqlite"}:
            parser.error(f"--backend: unknown backend {backend!r} (postgres, sqlite)")
        opened = postgres_store(args.pg) if backend == "postgres" else sqlite_store()
        with opened as store:
            rows += run(backend, store, requests=args.requests, calls=args.calls)
    print()
    print(f"ApprovalAnalytics.report() over {args.requests:,} requests, {args.calls} calls a row; {machine()}:")
    print()
    print("| store | filter | gates/approvers/days/decided | p50 ms | p99 ms | max ms | store CPU ms | client CPU ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

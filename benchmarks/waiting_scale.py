"""Waiting gates at scale (issue 29 item 7): what N waiting gates cost, and how they end.

Not a test: it prints figures. For each mode, one real Airflow 3.3 stack (api-server,
scheduler, triggerer, dag-processor; LocalExecutor; metadata DB and approval store on
PostgreSQL, fresh databases each, dropped afterwards):

- ``parked``: ours, ``ApprovalOperator`` parked in ``awaiting_input`` (``[hitl] park_gates`` True);
- ``deferral`` (``--deferral``): ours with ``[hitl] park_gates = False``, deferred to ``ApprovalTrigger``;
- ``native`` (``--native``): Airflow's own ``providers.standard`` ``ApprovalOperator``
  (``awaiting_input`` with a ``hitl_detail`` row).

What is real and what is synthetic:

1. REAL: one template run per mode is triggered through the REST API; its gate task runs on a
   worker and waits exactly as the operator makes it (parks, defers, or parks with hitl_detail).
2. SYNTHETIC: the other N-1 gates are copies of that template's rows, inserted in bulk with SQL
   (2 cores cannot run N workers): ``dag_run`` and ``task_instance`` (new run id and task
   instance id; ``next_kwargs`` carry the copy's own request id), for ``deferral`` a ``trigger``
   row each (kwargs with the copy's request id, unassigned, so the triggerer picks them up as
   it would), for ``native`` a ``hitl_detail`` row each, for ours an ``approval_requests`` row
   each (no ``requested`` audit event, no outbox intents). Non-expiring gates expire in a day.
3. REAL: the idle window (CPU seconds per minute and RSS of each process tree, via psutil;
   ``triggerer_slots_used`` = triggers assigned to a triggerer), then decisions on a sample
   through the REST API (ours ``POST /hitl/api/v1/approvals/{id}/approve``, native ``PATCH
   .../hitlDetails``), timed from the HTTP response to the task instance's terminal state in
   the metadata DB (polled every 20 ms).
4. SYNTHETIC deadline set-up, REAL expiry: 1,000 gates get ``expires_at`` spread over one
   minute by an SQL UPDATE (ours: the request's ``expires_at``, and the parked task's backstop
   ``trigger_timeout`` 60 s later; native: the task's ``trigger_timeout``, which is its
   ``response_timeout`` deadline), then one NOTIFY on the store's channel so our deadline worker
   re-reads its deadlines (an operator opening a gate sends one too). Lateness = when the task
   instance was seen terminal (polled every 100 ms) minus its expiry; gates not ended
   ``--expiry-cap`` seconds after the last expiry count as ending then (a lower bound).

The table has one row per mode; the LAST line is one JSON object (the first mode's figures,
with every mode under ``"modes"``).

Usage::

    .venv/bin/python benchmarks/waiting_scale.py --gates 2000 --native --deferral [--idle 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import psutil  # noqa: E402
from sqlalchemy import MetaData, Table, bindparam, create_engine, insert, select, text, update  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from airflow_hitl.models.store import NOTIFY_CHANNEL  # noqa: E402
from airflow_hitl.models.tables import ApprovalRequestRow  # noqa: E402
from tests.e2e.harness import AirflowHarness  # noqa: E402

TERMINAL = ("success", "failed", "skipped", "upstream_failed")
LONG = dt.timedelta(days=1)
EXPIRIES = 1000
BACKSTOP = dt.timedelta(seconds=60)

DAGS = textwrap.dedent(
    '''
    """Gates for benchmarks/waiting_scale.py."""
    from __future__ import annotations

    import datetime as dt

    from airflow.providers.standard.operators.hitl import ApprovalOperator as NativeApproval
    from airflow.sdk import DAG

    from airflow_hitl.operators.approval import ApprovalOperator

    START = dt.datetime(2026, 1, 1)
    with DAG(dag_id="scale_ours", schedule=None, start_date=START, catchup=False):
        ApprovalOperator(task_id="gate", title="scale", timeout=dt.timedelta(days=1), timeout_action="approve")
    with DAG(dag_id="scale_native", schedule=None, start_date=START, catchup=False):
        NativeApproval(task_id="gate", subject="scale", defaults=["Approve"], response_timeout=dt.timedelta(days=1))
    '''
)


@dataclass
class Gate:
    """One waiting gate: its run, task instance and (ours) approval request."""

    run_id: str
    ti_id: str
    request_id: str | None


@dataclass
class Result:
    """Figures of one mode."""

    mode: str
    gates: int
    clone_s: float = 0.0
    decisions: list[float] = field(default_factory=list)
    decisions_lost: int = 0
    late: list[float] = field(default_factory=list)
    expiries_unended: int = 0
    slots: int = 0
    expiries: int = 0
    cpu_per_min: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, q in 0..100 (None: no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


def _wait(check: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(interval)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _rss(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def clone_gates(h: AirflowHarness, meta: Engine, store: Engine, *, dag_id: str, run_id: str, n: int) -> list[Gate]:
    """Copy the template gate's rows ``n`` times (see the module docstring); the copies."""
    md = MetaData()
    dag_run, ti, trigger = (Table(name, md, autoload_with=meta) for name in ("dag_run", "task_instance", "trigger"))
    hitl = Table("hitl_detail", md, autoload_with=meta)
    requests = cast(Table, ApprovalRequestRow.__table__)
    with meta.connect() as conn:
        run_row = dict(
            conn.execute(select(dag_run).where(dag_run.c.dag_id == dag_id, dag_run.c.run_id == run_id)).one()._mapping
        )
        ti_row = dict(conn.execute(select(ti).where(ti.c.dag_id == dag_id, ti.c.run_id == run_id)).one()._mapping)
        trig_row = (
            dict(conn.execute(select(trigger).where(trigger.c.id == ti_row["trigger_id"])).one()._mapping)
            if ti_row["trigger_id"]
            else None
        )
        hitl_row = conn.execute(select(hitl).where(hitl.c.ti_id == ti_row["id"])).one_or_none()
    with store.connect() as conn:
        req_row = conn.execute(
            select(requests).where(requests.c.dag_id == dag_id, requests.c.run_id == run_id)
        ).one_or_none()
    template_request = str(req_row._mapping["id"]) if req_row is not None else None
    gates = [
        Gate(
            run_id=f"clone_{i:06d}", ti_id=str(uuid.uuid4()), request_id=str(uuid.uuid4()) if template_request else None
        )
        for i in range(n)
    ]
    now = _utc()

    def swap(value: Any, gate: Gate) -> Any:
        # The request id appears in next_kwargs / trigger kwargs: each copy waits on its own request.
        if value is None or template_request is None or gate.request_id is None:
            return value
        if isinstance(value, str):
            return value.replace(template_request, gate.request_id)
        return json.loads(json.dumps(value).replace(template_request, gate.request_id))

    for start in range(0, n, 1000):
        chunk = gates[start : start + 1000]
        with meta.begin() as conn:
            runs = []
            for gate in chunk:
                row = {k: v for k, v in run_row.items() if k != "id"}
                row["run_id"] = gate.run_id
                runs.append(row)
            conn.execute(insert(dag_run), runs)
            trigger_ids: list[Any] = [None] * len(chunk)
            if trig_row is not None:
                rows = []
                for gate in chunk:
                    row = {k: v for k, v in trig_row.items() if k != "id"}
                    row["kwargs"] = swap(row.get("kwargs"), gate)
                    row["triggerer_id"] = None
                    row["created_date"] = now
                    rows.append(row)
                trigger_ids = list(
                    conn.execute(insert(trigger).returning(trigger.c.id, sort_by_parameter_order=True), rows).scalars()
                )
            tis = []
            for gate, trigger_id in zip(chunk, trigger_ids, strict=True):
                row = dict(ti_row)
                row.update(id=gate.ti_id, run_id=gate.run_id, trigger_id=trigger_id)
                row["next_kwargs"] = swap(row.get("next_kwargs"), gate)
                if ti_row.get("trigger_timeout") is not None:
                    row["trigger_timeout"] = now + LONG + (BACKSTOP if template_request else dt.timedelta(0))
                tis.append(row)
            conn.execute(insert(ti), tis)
            if hitl_row is not None:
                base = dict(hitl_row._mapping)
                conn.execute(insert(hitl), [{**base, "ti_id": gate.ti_id} for gate in chunk])
        if req_row is not None:
            with store.begin() as conn:
                base = dict(req_row._mapping)
                conn.execute(
                    insert(requests),
                    [
                        {
                            **base,
                            "id": gate.request_id,
                            "run_id": gate.run_id,
                            "expires_at": now + LONG,
                            # Each copy's own task instance: the api-server's pass cancels a request
                            # whose task instance is another one (its run was deleted and re-created).
                            **({"task_instance_id": gate.ti_id} if "task_instance_id" in base else {}),
                        }
                        for gate in chunk
                    ],
                )
    return gates


def states(meta: Engine, ti_ids: list[str]) -> dict[str, str | None]:
    """``ti id -> state`` of these task instances."""
    with meta.connect() as conn:
        rows = conn.execute(
            # By the primary key: a cast of the column would read all N rows at every look.
            text("SELECT CAST(id AS TEXT), state FROM task_instance WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": ti_ids},
        )
        return {r[0]: r[1] for r in rows}


def decide(h: AirflowHarness, meta: Engine, mode: str, dag_id: str, gate: Gate) -> float | None:
    """Decide one gate through the REST API; seconds from the response to its terminal state."""
    if gate.request_id is not None:
        h.api("POST", f"/hitl/api/v1/approvals/{gate.request_id}/approve", json_body={"comment": "bench"})
    else:
        h.api(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{gate.run_id}/taskInstances/gate/-1/hitlDetails",
            json_body={"chosen_options": ["Approve"], "params_input": {}},
        )
    answered = time.monotonic()
    deadline = answered + 60
    while time.monotonic() < deadline:
        if states(meta, [gate.ti_id]).get(gate.ti_id) in TERMINAL:
            return time.monotonic() - answered
        time.sleep(0.02)
    return None


def expire(meta: Engine, store: Engine, gates: list[Gate], *, ours: bool, cap: float) -> tuple[list[float], int]:
    """Make ``gates`` expire over the next minute; lateness of each end, and how many never ended."""
    start = _utc() + dt.timedelta(seconds=5)
    due = {g.ti_id: start + dt.timedelta(seconds=60 * i / len(gates)) for i, g in enumerate(gates)}
    ti = Table("task_instance", MetaData(), autoload_with=meta)
    params = [{"b_id": g.ti_id, "b_at": due[g.ti_id] + (BACKSTOP if ours else dt.timedelta(0))} for g in gates]
    with meta.begin() as conn:
        conn.execute(update(ti).where(ti.c.id == bindparam("b_id")).values(trigger_timeout=bindparam("b_at")), params)
    if ours:
        requests = cast(Table, ApprovalRequestRow.__table__)
        with store.begin() as conn:
            conn.execute(
                update(requests).where(requests.c.id == bindparam("b_id")).values(expires_at=bindparam("b_at")),
                [{"b_id": g.request_id, "b_at": due[g.ti_id]} for g in gates],
            )
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": gates[0].request_id})
    seen: dict[str, dt.datetime] = {}
    last = max(due.values()) + dt.timedelta(seconds=cap)
    ids = [g.ti_id for g in gates]
    while len(seen) < len(gates) and _utc() < last:
        now = _utc()
        for ti_id, state in states(meta, [i for i in ids if i not in seen]).items():
            if state in TERMINAL:
                seen[ti_id] = now
        time.sleep(0.1)
    # A gate still waiting counts as ending when the benchmark stopped looking: a lower bound.
    late = [(seen.get(i, last) - due[i]).total_seconds() for i in ids]
    return late, len(gates) - len(seen)


def bench(mode: str, args: argparse.Namespace) -> Result:
    """Start a stack for ``mode``, put N gates into the waiting state, measure, stop it."""
    root = Path(tempfile.mkdtemp(prefix=f"waiting-{mode}-"))
    dag_dir = root / "bench-dags"
    dag_dir.mkdir()
    (dag_dir / "waiting_scale.py").write_text(DAGS)
    env = {"AIRFLOW__HITL__PARK_GATES": "False" if mode == "deferral" else "True"}
    h = AirflowHarness(root=root / "stack", extra_dag_dirs=[dag_dir], store="postgres", env=env)
    dag_id = "scale_native" if mode == "native" else "scale_ours"
    result = Result(mode=mode, gates=args.gates)
    print(f"[{mode}] starting stack in {root}", file=sys.stderr, flush=True)
    h.start()
    meta = create_engine(_sync_url(h.metadata_db_url), pool_size=2)
    store = create_engine(_sync_url(h.store_url), pool_size=2)
    try:
        run_id = h.trigger(dag_id, user="op", run_id=f"template_{uuid.uuid4().hex[:8]}")
        waiting = "deferred" if mode == "deferral" else "awaiting_input"
        _wait(lambda: h.task_instance(dag_id, run_id, "gate")["state"] == waiting, timeout=180)
        t0 = time.perf_counter()
        gates = clone_gates(h, meta, store, dag_id=dag_id, run_id=run_id, n=args.gates - 1)
        result.clone_s = time.perf_counter() - t0
        print(
            f"[{mode}] {args.gates - 1} gates copied in {result.clone_s:.1f} s; settling", file=sys.stderr, flush=True
        )
        time.sleep(args.settle)
        trees = {name: _tree(h.processes[name].pid) for name in ("scheduler", "triggerer", "api-server")}
        cpu0 = {name: _cpu(p) for name, p in trees.items()}
        w0 = time.monotonic()
        time.sleep(args.idle)
        window = time.monotonic() - w0
        for name, procs in trees.items():
            procs = _tree(h.processes[name].pid)
            result.cpu_per_min[name] = (_cpu(procs) - cpu0[name]) / window * 60
            result.rss_mib[name] = _rss(procs)
        with meta.connect() as conn:
            result.slots = int(conn.scalar(text("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")) or 0)
        print(f"[{mode}] idle measured; deciding {args.sample}", file=sys.stderr, flush=True)
        for gate in gates[: args.sample]:
            value = decide(h, meta, mode, dag_id, gate)
            if value is None:
                result.decisions_lost += 1
            else:
                result.decisions.append(value)
        expiring = gates[args.sample : args.sample + min(EXPIRIES, len(gates) - args.sample)]
        print(f"[{mode}] {len(expiring)} expiries over one minute", file=sys.stderr, flush=True)
        result.expiries = len(expiring)
        result.late, result.expiries_unended = expire(meta, store, expiring, ours=mode != "native", cap=args.expiry_cap)
        return result
    finally:
        meta.dispose()
        store.dispose()
        h.stop()


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def figures(r: Result) -> dict[str, Any]:
    """The JSON figures of one mode."""
    out: dict[str, Any] = {
        "mode": r.mode,
        "gates": r.gates,
        "decision_p50_s": pct(r.decisions, 50),
        "decision_p99_s": pct(r.decisions, 99),
        "decisions_lost": r.decisions_lost,
        "timeout_late_p99_s": pct(r.late, 99),
        "timeouts": r.expiries,
        "timeout_unended": r.expiries_unended,
        "triggerer_slots_used": r.slots,
    }
    for name in ("scheduler", "triggerer", "api-server"):
        key = name.replace("-", "_")
        out[f"{key}_cpu_s_per_min"] = round(r.cpu_per_min.get(name, float("nan")), 2)
        out[f"{key}_rss_mib"] = round(r.rss_mib.get(name, float("nan")), 1)
    return out


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    """One row per mode."""
    head = (
        f"{'mode':<9} {'gates':>6} {'dec p50':>8} {'dec p99':>8} {'lost':>4} {'exp p50':>8} {'exp p99':>8} "
        f"{'unended':>7} {'slots':>5} {'sched cpu':>9} {'trig cpu':>8} {'api cpu':>8} "
        f"{'sched MiB':>9} {'trig MiB':>8} {'api MiB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        c, m = r.cpu_per_min, r.rss_mib
        print(
            f"{r.mode:<9} {r.gates:>6} {_f(pct(r.decisions, 50)):>8} {_f(pct(r.decisions, 99)):>8} "
            f"{r.decisions_lost:>4} {_f(pct(r.late, 50)):>8} {_f(pct(r.late, 99)):>8} {r.expiries_unended:>7} "
            f"{r.slots:>5} {c['scheduler']:>9.1f} {c['triggerer']:>8.1f} {c['api-server']:>8.1f} "
            f"{m['scheduler']:>9.0f} {m['triggerer']:>8.0f} {m['api-server']:>8.0f}"
        )
    print(
        f"1 real gate + {args.gates - 1} SQL copies per mode (see docstring); dec = decision HTTP response -> "
        f"task terminal ({args.sample} gates, s); exp = task terminal - expires_at (s), {results[0].expiries} over one "
        f"minute, unended {args.expiry_cap:g} s after the last expiry count as ending then; slots = triggers "
        f"assigned to a triggerer; cpu = CPU s per minute over a {args.idle:g} s idle window (process tree); "
        "MiB = RSS of the process tree"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the modes asked for, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gates", type=int, required=True, help="waiting gates per mode")
    parser.add_argument("--native", action="store_true", help="also Airflow's own HITL ApprovalOperator")
    parser.add_argument("--deferral", action="store_true", help="also ours with [hitl] park_gates = False")
    parser.add_argument("--sample", type=int, default=50, help="gates decided (default 50)")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds (default 60)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after copying before measuring")
    parser.add_argument("--expiry-cap", type=float, default=120.0, help="seconds after the last expiry to wait")
    args = parser.parse_args(argv)
    if args.gates < args.sample + 2:
        parser.error("--gates must exceed --sample by at least 2")
    modes = ["parked", *(["deferral"] if args.deferral else []), *(["native"] if args.native else [])]
    results = []
    for mode in modes:
        results.append(bench(mode, args))
        print(f"[{mode}] {json.dumps(figures(results[-1]))}", file=sys.stderr, flush=True)
    print_table(results, args)
    first = figures(results[0])
    first["modes"] = {r.mode: figures(r) for r in results}
    print(json.dumps(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Decision to gate success: airflow-hitl's ApprovalOperator next to Airflow's native one (issue 12).

Not a test: it prints figures. One real Airflow stack per executor (api-server, scheduler,
triggerer, dag-processor; LocalExecutor, and CeleryExecutor on Redis 127.0.0.1:6379 with a
Celery worker), Airflow's metadata DB and the approval store on PostgreSQL, both operators
in the same stack:

- ours: ``airflow_hitl.operators.approval.ApprovalOperator``, decided with
  ``POST /hitl/api/v1/approvals/{id}/approve`` as soon as its request row exists (0 s) or
  ``--late-delay`` seconds later; its trigger ends the task (no worker resume);
- native: ``airflow.providers.standard.operators.hitl.ApprovalOperator``, decided with
  ``PATCH /api/v2/.../hitlDetails`` as soon as its ``hitl_detail`` exists, or later.

Resume = from the decision's HTTP response to the task instance's ``success`` as Airflow's
REST API reports it (polled every 20 ms). A run whose gate ends in any other state is
"lost". Timeout lateness = when the gate reached ``success`` minus its expiry (ours: the
request's ``expires_at``; native: ``hitl_detail.created_at`` + ``response_timeout``), for
5 s timeouts; reminder lateness = when an in-app reminder was sent minus when it was due (ours
only: native HITL has no reminders), for a gate reminding every 3 s. Prints lost / p50 / p99 /
max per scenario for both and ours/native ratios.

``--burst N`` adds the race scenario of issue 12: N runs of ours triggered back to back, each
approved through the REST API the moment its request is committed (the store's NOTIFY on
PostgreSQL), and counts the gates that did not end in ``success`` and the decisions made within
100 ms of the gate opening (NOTIFY received to decision answered).

Usage::

    .venv/bin/python benchmarks/resume_vs_native.py [--runs 5] [--timeout-runs 5] [--late-delay 15]
        [--burst 100] [--executor local|celery|both] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import httpx  # noqa: E402
import psycopg  # noqa: E402
from api_latency import fresh_databases  # noqa: E402

from airflow_hitl.exceptions import ApprovalNotFound  # noqa: E402
from airflow_hitl.manager import ApprovalFilter  # noqa: E402
from airflow_hitl.models.store import NOTIFY_CHANNEL  # noqa: E402
from airflow_hitl.outbox import listen_conninfo  # noqa: E402
from tests.e2e.harness import AirflowHarness, AirflowProcess  # noqa: E402

TIMEOUT = dt.timedelta(seconds=5)
REMIND_EVERY = dt.timedelta(seconds=3)
POLL = 0.02
END_TIMEOUT = 180.0

DAGS = textwrap.dedent(
    f'''
    """Both operators side by side, for benchmarks/resume_vs_native.py."""
    from __future__ import annotations

    import datetime as dt

    from airflow.providers.standard.operators.hitl import ApprovalOperator as NativeApproval
    from airflow.sdk import DAG

    from airflow_hitl.operators.approval import ApprovalOperator

    START = dt.datetime(2026, 1, 1)
    TIMEOUT = dt.timedelta(seconds={TIMEOUT.total_seconds()})

    with DAG(dag_id="bench_ours", schedule=None, start_date=START, catchup=False, max_active_runs=50):
        ApprovalOperator(task_id="gate", title="bench")
    with DAG(dag_id="bench_native", schedule=None, start_date=START, catchup=False, max_active_runs=50):
        NativeApproval(task_id="gate", subject="bench")
    with DAG(dag_id="bench_ours_timeout", schedule=None, start_date=START, catchup=False, max_active_runs=50):
        ApprovalOperator(task_id="gate", title="bench timeout", timeout=TIMEOUT, timeout_action="approve")
    with DAG(dag_id="bench_native_timeout", schedule=None, start_date=START, catchup=False, max_active_runs=50):
        NativeApproval(task_id="gate", subject="bench timeout", defaults=["Approve"], response_timeout=TIMEOUT)
    with DAG(dag_id="bench_ours_remind", schedule=None, start_date=START, catchup=False):
        ApprovalOperator(
            task_id="gate",
            title="bench reminders",
            allowed_approvers=["admin"],
            notify_channels=["in_app"],
            remind_every=dt.timedelta(seconds={REMIND_EVERY.total_seconds()}),
            timeout=dt.timedelta(minutes=10),
        )
    '''
)
DAG_IDS = ("bench_ours", "bench_native", "bench_ours_timeout", "bench_native_timeout", "bench_ours_remind")


class BenchHarness(AirflowHarness):
    """The e2e harness, plus a Celery worker (started before the warm-up run needs it)."""

    def __init__(self, *, celery: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.celery = celery
        # The api-server's first /execution call can take longer than the harness's 90 s here.
        self._http = httpx.Client(base_url=self.base_url, timeout=300.0, trust_env=False)

    def warm_up(self, *, attempts: int = 3) -> None:
        """Start the Celery worker first when the executor is Celery."""
        if self.celery and "celery-worker" not in self.processes:
            self.processes["celery-worker"] = AirflowProcess(
                name="celery-worker",
                argv=[self.airflow_bin, "celery", "worker", "--concurrency", "8"],
                env=self.env,
                log_path=self.logs_folder / "celery-worker.log",
            )
        super().warm_up(attempts=attempts)


@dataclass
class Scenario:
    """Samples of one operator in one scenario."""

    name: str
    values: list[float] = field(default_factory=list)
    lost: int = 0

    def add(self, value: float | None) -> None:
        """A measured value, or None for a lost run."""
        if value is None:
            self.lost += 1
        else:
            self.values.append(value)

    def p(self, q: float) -> float | None:
        """The q-quantile (nearest rank) of the values."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ti_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/gate"


def _wait(check: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(POLL)


def _end_state(h: AirflowHarness, dag_id: str, run_id: str) -> tuple[str, float]:
    """Poll the gate's task instance until it ends; return its state and when it was seen."""

    def ended() -> tuple[str, float] | None:
        state = h.api("GET", _ti_path(dag_id, run_id)).json()["state"]
        if state in ("success", "failed", "skipped", "upstream_failed", "up_for_retry"):
            return state, time.monotonic()
        return None

    try:
        return _wait(ended, timeout=END_TIMEOUT)  # type: ignore[no-any-return]
    except TimeoutError:
        # A gate that never ends after its decision is lost too (e.g. stuck awaiting input).
        return "stuck", time.monotonic()


def _open_ours(h: AirflowHarness, dag_id: str, run_id: str) -> Any:
    def opened() -> Any:
        items, _ = h.manager.queries.pending(ApprovalFilter(dag_id=dag_id, run_id=run_id))
        return items[0] if items else None

    return _wait(opened)


def _open_native(h: AirflowHarness, dag_id: str, run_id: str) -> dict[str, Any]:
    def opened() -> dict[str, Any] | None:
        response = h.api("GET", f"{_ti_path(dag_id, run_id)}/-1/hitlDetails", expect=None)
        return dict(response.json()) if response.status_code == 200 else None

    return _wait(opened)  # type: ignore[no-any-return]


def decide_once(h: AirflowHarness, kind: str, delay: float) -> float | None:
    """One run: open the gate, decide after ``delay`` s, return decision -> success (None: lost)."""
    dag_id = f"bench_{kind}"
    run_id = h.trigger(dag_id, user="op", unpause=False, run_id=f"{kind}_{uuid.uuid4().hex[:10]}")
    if kind == "ours":
        approval = _open_ours(h, dag_id, run_id)
        opened = time.monotonic()
        time.sleep(max(0.0, delay - (time.monotonic() - opened)))
        h.api("POST", f"/hitl/api/v1/approvals/{approval.id}/approve", json_body={"comment": "bench"})
    else:
        _open_native(h, dag_id, run_id)
        opened = time.monotonic()
        time.sleep(max(0.0, delay - (time.monotonic() - opened)))
        h.api(
            "PATCH",
            f"{_ti_path(dag_id, run_id)}/-1/hitlDetails",
            json_body={"chosen_options": ["Approve"], "params_input": {}},
        )
    decided = time.monotonic()
    state, seen = _end_state(h, dag_id, run_id)
    return seen - decided if state == "success" else None


def timeout_once(h: AirflowHarness, kind: str) -> float | None:
    """One run of a 5 s timeout: seconds from expiry to the gate's success (None: lost)."""
    dag_id = f"bench_{kind}_timeout"
    run_id = h.trigger(dag_id, unpause=False, run_id=f"{kind}_t_{uuid.uuid4().hex[:10]}")
    if kind == "ours":
        expires = _open_ours(h, dag_id, run_id).expires_at.timestamp()
    else:
        created = _open_native(h, dag_id, run_id)["created_at"]
        expires = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() + TIMEOUT.total_seconds()
    state, seen = _end_state(h, dag_id, run_id)
    # Wall-clock expiry against a monotonic observation: convert the observation to wall time.
    seen_wall = time.time() - (time.monotonic() - seen)
    return seen_wall - expires if state == "success" else None


def reminders_late(h: AirflowHarness, count: int) -> Scenario:
    """Open one gate that reminds every 3 s; how late each of its first ``count`` reminders went out."""
    from airflow_hitl.outbox import Outbox

    dag_id = "bench_ours_remind"
    run_id = h.trigger(dag_id, user="op", unpause=False, run_id=f"remind_{uuid.uuid4().hex[:10]}")
    approval = _open_ours(h, dag_id, run_id)

    def sent() -> list[Any] | None:
        rows = h.manager.notices.list_notifications(request_id=approval.id, event_type="reminder", status="sent")
        return rows if len(rows) >= count else None

    rows = _wait(sent, timeout=count * REMIND_EVERY.total_seconds() + 120)
    due = {i.id: i.due_at for i in Outbox(store=h.manager.store).intents(approval.id)}
    scenario = Scenario("reminder")
    for row in rows[:count]:
        scenario.add((row.sent_at - due[row.outbox_id]).total_seconds())
    h.api("POST", f"/hitl/api/v1/approvals/{approval.id}/approve", json_body={"comment": "bench"})
    return scenario


@dataclass
class Burst:
    """The race scenario: gates decided the moment they open."""

    runs: int
    lost: int
    within_100ms: int
    lags: list[float]


def burst(h: AirflowHarness, runs: int) -> Burst:
    """Trigger ``runs`` runs of ours at once; approve each the moment its request is committed."""
    dag_id = "bench_ours"
    run_ids: list[str] = []
    lags: dict[str, float] = {}
    with psycopg.connect(autocommit=True, **listen_conninfo(h.store_url)) as conn:
        # The manager NOTIFYs every new request on commit: the earliest moment anyone could decide.
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def trigger_all() -> None:
            for i in range(runs):
                run_ids.append(h.trigger(dag_id, user="op", unpause=False, run_id=f"burst_{i}_{uuid.uuid4().hex[:8]}"))

        triggering = threading.Thread(target=trigger_all)
        triggering.start()
        deadline = time.monotonic() + 900
        while len(lags) < runs and time.monotonic() < deadline:
            for note in conn.notifies(timeout=1.0):
                received = time.monotonic()
                try:
                    approval = h.manager.queries.get(note.payload)
                except ApprovalNotFound:
                    continue
                if approval.dag_id != dag_id or not approval.is_waiting or approval.run_id in lags:
                    continue
                h.api("POST", f"/hitl/api/v1/approvals/{approval.id}/approve", json_body={"comment": "burst"})
                lags[str(approval.run_id)] = time.monotonic() - received
                if len(lags) == runs:
                    break
        triggering.join()
    states = [_end_state(h, dag_id, run_id)[0] for run_id in run_ids]
    return Burst(
        runs=runs,
        lost=sum(1 for state in states if state != "success"),
        within_100ms=sum(1 for lag in lags.values() if lag <= 0.1),
        lags=sorted(lags.values()),
    )


def print_burst(executor: str, result: Burst) -> None:
    """The race scenario's line."""
    lags = result.lags or [float("nan")]
    print(
        f"{executor}: {result.runs} gates decided as they opened: lost {result.lost}; "
        f"{result.within_100ms} decided within 100 ms of opening "
        f"(open -> decision p50 {statistics.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms)"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(ours: float | None, native: float | None) -> str:
    return "-" if ours is None or not native else f"{ours / native:.2f}"


def print_table(executor: str, results: dict[str, dict[str, Scenario]]) -> None:
    """One row per scenario: both operators and ours/native."""
    print(f"\n{executor}: ours vs Airflow native ApprovalOperator (seconds)")
    head = f"{'scenario':<24} {'op':<7} {'n':>3} {'lost':>4} {'p50':>7} {'p99':>7} {'max':>7}"
    print(head + f" {'p50 ratio':>10}")
    print("-" * (len(head) + 11))
    for name, pair in results.items():
        for kind in ("ours", "native"):
            s = pair[kind]
            ratio = _ratio(pair["ours"].p(0.5), pair["native"].p(0.5)) if kind == "ours" else ""
            print(
                f"{name:<24} {kind:<7} {len(s.values) + s.lost:>3} {s.lost:>4} {_fmt(s.p(0.5)):>7} "
                f"{_fmt(s.p(0.99)):>7} {_fmt(max(s.values) if s.values else None):>7} {ratio:>10}"
            )
    print(
        "resume = decision HTTP response -> task success in Airflow's REST API; "
        "timeout = gate success - expiry; reminder = sent - due (native has none); "
        "lost = gate ended in another state"
    )


def bench(executor: str, args: argparse.Namespace) -> tuple[dict[str, dict[str, Scenario]], Burst | None]:
    """Start a stack for ``executor``, run every scenario, stop it."""
    suffix = uuid.uuid4().hex[:8]
    with fresh_databases(args.pg, f"bench_resume_af_{suffix}", f"bench_resume_store_{suffix}") as (meta, store):
        root = Path(tempfile.mkdtemp(prefix=f"resume-{executor}-"))
        dag_dir = root / "bench-dags"
        dag_dir.mkdir()
        (dag_dir / "bench_resume.py").write_text(DAGS)
        celery = executor == "celery"
        h = BenchHarness(root=root / "stack", extra_dag_dirs=[dag_dir], metadata_db_url=meta, celery=celery)
        h.store_url = store
        env = {
            "AIRFLOW_HITL_STORE_URL": store,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta,
            "AIRFLOW__CORE__PARALLELISM": "8",
        }
        if celery:
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "8",
                }
            )
        h.env.update(env)
        print(f"starting {executor} stack in {root}", file=sys.stderr)
        h.start()
        try:
            for dag_id in DAG_IDS:
                h.unpause(dag_id)
            results: dict[str, dict[str, Scenario]] = {}
            for delay in (0.0, args.late_delay):
                name = f"decision at {delay:g} s"
                pair = {"ours": Scenario(name), "native": Scenario(name)}
                for i in range(args.runs):
                    for kind in ("ours", "native") if i % 2 == 0 else ("native", "ours"):
                        pair[kind].add(decide_once(h, kind, delay))
                results[name] = pair
                print(f"{executor}: {name} done", file=sys.stderr)
            pair = {"ours": Scenario("timeout"), "native": Scenario("timeout")}
            for i in range(args.timeout_runs):
                for kind in ("ours", "native") if i % 2 == 0 else ("native", "ours"):
                    pair[kind].add(timeout_once(h, kind))
            results[f"{TIMEOUT.total_seconds():g} s timeout late by"] = pair
            if args.reminders:
                late = reminders_late(h, args.reminders)
                results[f"reminder (every {REMIND_EVERY.total_seconds():g} s) late by"] = {
                    "ours": late,
                    "native": Scenario("reminder"),
                }
            return results, (burst(h, args.burst) if args.burst else None)
        finally:
            h.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison on the chosen executors and print a table per executor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="decisions per operator per delay (default 5)")
    parser.add_argument("--timeout-runs", type=int, default=5, help="5 s timeouts per operator (default 5)")
    parser.add_argument("--late-delay", type=float, default=15.0, help="the later decision's delay (default 15)")
    parser.add_argument("--reminders", type=int, default=5, help="reminders whose lateness is measured (default 5)")
    parser.add_argument("--burst", type=int, default=0, help="gates of ours decided as they open (issue 12: 100)")
    parser.add_argument("--executor", choices=("local", "celery", "both"), default="local")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-db", type=int, default=7, help="Redis database for the Celery broker")
    args = parser.parse_args(argv)
    executors = ("local", "celery") if args.executor == "both" else (args.executor,)
    for executor in executors:
        results, race = bench(executor, args)
        print_table(executor, results)
        if race:
            print_burst(executor, race)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

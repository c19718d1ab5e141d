"""Exactly one party ends a gate, and no Airflow process dies of two trying (issue 23, item 8).

On the shared ``notifying_airflow`` stack (tests/e2e/conftest.py): one api-server whose gate
closer ends decided gates, one triggerer whose triggers end them too, Airflow's metadata DB and
the approval store on PostgreSQL. A burst of rejections lands on gates whose tasks have a retry
left, each trigger already running: the closer and the triggers both go for every gate at once
(on Airflow 3.3+ the gates are parked, with no trigger: the closer ends them all, still once each).
Ending such a task writes a ``task_instance_history`` row and gives the task instance a new id,
so two ends of one try collide in Airflow's DB (a deadlock, or a duplicate history key), and
the triggerer, which submits its triggers' events outside any retry, exited on it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from airflow_hitl.manager import ApprovalFilter
from airflow_hitl.policy import Principal
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_end_race"
BURST = int(os.environ.get("HITL_E2E_END_RACE_RUNS", "50"))
ALICE = Principal.of("alice", ["op"])
#: What a second end of the same try leaves in a process log (a deadlock can have other causes
#: inside Airflow, so it is not looked for here: the triggerer exiting on one is).
COLLISIONS = ("task_instance_history_dtrt_uq", "StaleDataError")


@pytest.fixture
def metadata_db(notifying_airflow: AirflowHarness) -> Iterator[Engine]:
    """Airflow's metadata DB of the stack, read directly (one query for every gate)."""
    engine = create_engine(notifying_airflow.metadata_db_url)
    yield engine
    engine.dispose()


def gate_rows(engine: Engine, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """run_id -> the gate's task instance (state, try_number, whether a triggerer has its trigger)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT ti.run_id, ti.state, ti.try_number, t.triggerer_id FROM task_instance ti"
                " LEFT JOIN trigger t ON ti.trigger_id = t.id"
                " WHERE ti.dag_id = :dag_id AND ti.task_id = 'gate'"
            ),
            {"dag_id": DAG_ID},
        ).all()
    wanted = set(run_ids)
    return {
        run_id: {"state": state, "try_number": try_number, "in_triggerer": triggerer_id is not None}
        for run_id, state, try_number, triggerer_id in rows
        if run_id in wanted
    }


def history_rows(engine: Engine, run_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    """run_id -> the gate's archived tries, as (try_number, state)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT run_id, try_number, state FROM task_instance_history"
                " WHERE dag_id = :dag_id AND task_id = 'gate' ORDER BY run_id, try_number"
            ),
            {"dag_id": DAG_ID},
        ).all()
    found: dict[str, list[tuple[int, str]]] = {run_id: [] for run_id in run_ids}
    for run_id, try_number, state in rows:
        if run_id in found:
            found[run_id].append((try_number, state))
    return found


def ended_by(airflow: AirflowHarness, request_ids: list[str]) -> dict[str, str | None]:
    """request id -> who claimed ending its gate (the store's ``approval_requests.task_ended_by``)."""
    with airflow.manager.store.session() as session:
        rows = session.execute(
            text("SELECT id, task_ended_by FROM approval_requests WHERE id = ANY(:ids)"), {"ids": request_ids}
        ).all()
    return {request_id: by for request_id, by in rows}


def log_sizes(airflow: AirflowHarness) -> dict[str, int]:
    """Process name -> bytes its log holds now."""
    return {name: p.log_path.stat().st_size if p.log_path.exists() else 0 for name, p in airflow.processes.items()}


def logged_since(airflow: AirflowHarness, sizes: dict[str, int]) -> dict[str, str]:
    """Process name -> what its log gained since ``sizes``."""
    grown = {}
    for name, process in airflow.processes.items():
        with process.log_path.open("rb") as log:
            log.seek(sizes.get(name, 0))
            grown[name] = log.read().decode("utf-8", "replace")
    return grown


class TestRejectionBurst:
    def test_each_rejected_gate_with_retries_is_ended_once_and_every_process_lives(
        self, notifying_airflow: AirflowHarness, metadata_db: Engine
    ) -> None:
        airflow = notifying_airflow
        started = time.monotonic()
        airflow.unpause(DAG_ID)
        run_ids = [airflow.trigger(DAG_ID, unpause=False) for _ in range(BURST)]
        try:
            # Every gate parked (Airflow 3.3+), or deferred with its trigger taken by the triggerer:
            # every party that may end it is there.
            def all_in_triggerer() -> bool:
                rows = gate_rows(metadata_db, run_ids)
                return len(rows) == BURST and all(
                    r["state"] == "awaiting_input" or (r["state"] == "deferred" and r["in_triggerer"])
                    for r in rows.values()
                )

            wait_until(
                all_in_triggerer,
                timeout=600,
                interval=1.0,
                what=f"{BURST} gates parked, or deferred with their triggers in the triggerer",
                on_timeout=airflow.dump_logs,
            )
            opened = time.monotonic()
            items, _ = airflow.manager.queries.list(ApprovalFilter(dag_id=DAG_ID), limit=BURST * 2)
            requests = {a.run_id: a.id for a in items if a.run_id in set(run_ids)}
            assert sorted(requests) == sorted(run_ids), "one waiting request per gate"
            # The triggerer's runner starts a trigger a loop after taking it; then each one waits
            # on its request (a race needs both parties up, not an assertion on timing).
            time.sleep(5)
            sizes = log_sizes(airflow)

            def reject(ids: list[str]) -> None:
                for request_id in ids:
                    airflow.manager.reject(request_id, user=ALICE, reason="burst")

            ids = list(requests.values())
            burst = time.monotonic()
            threads = [threading.Thread(target=reject, args=(ids[i::4],)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            def all_ended() -> dict[str, dict[str, Any]] | None:
                airflow._check_alive()  # a dead triggerer or api-server fails the test here, naming it
                rows = gate_rows(metadata_db, run_ids)
                waiting = [row for row in rows.values() if row["state"] in ("deferred", "awaiting_input")]
                return None if waiting else rows

            rows = wait_until(all_ended, timeout=300, interval=0.5, what="every rejected gate's task to end")
            ended = time.monotonic()
            # Still alive once the dust settles: an exit can follow the last end by a loop.
            time.sleep(3)
            airflow._check_alive()

            assert {r: (row["state"], row["try_number"]) for r, row in rows.items()} == {
                r: ("up_for_retry", 1) for r in run_ids
            }, "each rejected try ended once, routed to its retry"
            history = history_rows(metadata_db, run_ids)
            assert {r: [n for n, _ in tries] for r, tries in history.items()} == {r: [1] for r in run_ids}
            claims = ended_by(airflow, ids)
            assert all(claims[i] for i in ids), "every gate's end was claimed by the one party that ended it"
            parties = {(by or "").split("@", 1)[0] for by in claims.values()}
            print(
                f"\n{BURST} gates open with their triggers running after {opened - started:.0f} s; the rejected"
                f" tasks ended {ended - burst:.1f} s after the burst, by "
                + ", ".join(f"{p} {sum(1 for b in claims.values() if (b or '').startswith(p))}" for p in parties),
                file=sys.stderr,
            )
            grown = logged_since(airflow, sizes)
            # The closer ended exactly the gates it claimed; the triggers' events ended the others.
            closer_ended = {i for i in ids if f"ended the task of request {i} " in grown["api-server"]}
            assert closer_ended == {i for i, by in claims.items() if (by or "").startswith("api-server@")}
            collisions = {
                name: [line for line in text_.splitlines() if any(c in line for c in COLLISIONS)][:3]
                for name, text_ in grown.items()
                if name.startswith(("triggerer", "api-server"))
            }
            assert {n: lines for n, lines in collisions.items() if lines} == {}
        finally:
            for run_id in run_ids:
                # Nothing of this test keeps the shared stack busy: the retries wait an hour.
                airflow.api(
                    "PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", json_body={"state": "failed"}, expect=None
                )

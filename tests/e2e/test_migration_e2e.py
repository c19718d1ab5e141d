"""The migration page's before-and-after DAGs, side by side in one real Airflow (issue 27).

One stack for the module, whose dags folder holds the eight files of ``docs/examples/migration/``
(each of Airflow's four HITL operators and its airflow-hitl replacement) and the warm-up DAG.
Every DAG is triggered at once. Each "ours" gate must open the request its file writes and,
approved over ``POST /hitl/api/v1/approvals/{id}/approve`` as the page says, let its run go
on; each "native" gate is answered the way Airflow documents it, ``PATCH .../hitlDetails``, with
the same answer. Then both runs of a pair must have ended alike: every task in the same state
and the last task returning the same value. That is the page's promise (the migrated DAG does
what the old one did) and its "side by side" section (both kinds wait and are answered in one
deployment, each through its own API, neither seeing the other's).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.harness import REPO_ROOT, TEST_DAGS, AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "docs" / "examples" / "migration"
API = "/hitl/api/v1/approvals"
#: The states a native HITL task waits in: ``awaiting_input`` on Airflow 3.3+, ``deferred`` before.
NATIVE_WAITING = ("awaiting_input", "deferred")


@dataclass(frozen=True)
class Pair:
    """One native operator's example and its replacement, and the one answer both get."""

    #: The files' prefix: ``<name>_native.py`` and ``<name>_ours.py``.
    name: str
    #: The gate's task id, the same in both files.
    gate: str
    #: The headline as both files render it (``subject`` there, ``title`` here).
    title: str
    #: The task whose return value is the run's result.
    last: str
    #: What the person answers: Airflow's options chosen ...
    chosen_options: list[str]
    #: ... and the form's values (``params_input`` there, ``inputs`` here).
    values: dict[str, Any] = field(default_factory=dict)
    #: What the last task returns, as both files write it, given that answer.
    result: str = ""
    #: Who answers (assigned in both files where the gate names people).
    user: str = "alice"

    @property
    def native_dag(self) -> str:
        """The DAG id of ``<name>_native.py``."""
        return f"migrate_{self.name}_native"

    @property
    def ours_dag(self) -> str:
        """The DAG id of ``<name>_ours.py``."""
        return f"migrate_{self.name}_ours"


PAIRS: dict[str, Pair] = {
    pair.name: pair
    for pair in (
        Pair(
            name="approval",
            gate="approve_deploy",
            title="Deploy shop 2.1.0 to production",
            last="deploy",
            chosen_options=["Approve"],
            result="deployed shop 2.1.0, approved by alice",
        ),
        Pair(
            name="hitl",
            gate="choose_action",
            title="Model 2.1.0 missed its accuracy target",
            last="act",
            chosen_options=["Ship anyway"],
            values={"note": "the product team accepts 0.931"},
            result="Ship anyway (the product team accepts 0.931)",
        ),
        Pair(
            name="branch",
            gate="choose_rollout",
            title="Roll out ranking model 2.3?",
            last="roll_out",
            chosen_options=["Roll out"],
            result="rolled out ranking model 2.3",
        ),
        Pair(
            name="entry",
            gate="enter_rollout",
            title="Rollout of ranking model 2.3",
            last="roll_out",
            chosen_options=["OK"],
            values={"rollout_percent": 25, "ticket": "CHG-42"},
            result="rolling out to 25% under CHG-42",
        ),
    )
}
#: ``hitl_ours.py`` asks for Airflow's option as the input ``action``: the same choice, as a value.
OPTION_INPUT = {"hitl": "action"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """One Airflow whose dags folder is the migration examples (and the warm-up DAG the harness runs first)."""
    root = tmp_path_factory.mktemp("airflow-migration")
    dags = tmp_path_factory.mktemp("migration-dags")
    for path in sorted(EXAMPLES.glob("*.py")):
        shutil.copy2(path, dags / path.name)
    shutil.copy2(TEST_DAGS / "e2e_warmup.py", dags / "e2e_warmup.py")
    harness = AirflowHarness(root=root)
    harness.dag_dirs = [dags]
    print(f"\nstarting Airflow for the migration examples in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def runs(stack: AirflowHarness) -> dict[str, str]:
    """One run of every example, all triggered at once: dag_id -> run_id."""
    dag_ids = [dag_id for pair in PAIRS.values() for dag_id in (pair.native_dag, pair.ours_dag)]
    return {dag_id: stack.trigger(dag_id) for dag_id in dag_ids}


def xcom(stack: AirflowHarness, dag_id: str, run_id: str, task_id: str) -> Any:
    """A task's return value through Airflow's REST API."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = stack.api("GET", path, params={"deserialize": True}).json()["value"]
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def answer_ours(stack: AirflowHarness, pair: Pair, run_id: str) -> dict[str, Any]:
    """Approve the gate of ``<name>_ours.py`` over our REST API, as the page says; the request as answered."""
    dag_id = pair.ours_dag

    def pending() -> dict[str, Any] | None:
        body = stack.api("GET", f"{API}/pending", user=pair.user, params={"dag_id": dag_id, "run_id": run_id}).json()
        return body["approvals"][0] if body["total_entries"] else None

    stack.wait_in_triggerer(dag_id, run_id, pair.gate, timeout=240)
    item = wait_until(pending, timeout=60, what=f"pending request of {dag_id}/{run_id}", on_timeout=stack.dump_logs)
    assert (item["task_id"], item["title"]) == (pair.gate, pair.title)
    inputs = dict(pair.values)
    if pair.name in OPTION_INPUT:
        [option] = pair.chosen_options
        inputs[OPTION_INPUT[pair.name]] = option
    body = {"inputs": inputs} if inputs else {}
    decided = stack.api("POST", f"{API}/{item['id']}/approve", user=pair.user, json_body=body).json()
    assert decided["state"] == "approved"
    return dict(decided)


def parking_reported(stack: AirflowHarness, dag_id: str, run_id: str, task_id: str) -> bool:
    """Whether the scheduler has taken in the executor's report that the worker which parked the task exited."""
    try:
        text = (stack.logs_folder / "scheduler.log").read_text("utf-8", "replace")
    except OSError:
        return False
    return f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id}," in text


def answer_native(stack: AirflowHarness, pair: Pair, run_id: str) -> dict[str, Any]:
    """Answer the gate of ``<name>_native.py`` with Airflow's ``PATCH .../hitlDetails``; Airflow's answer.

    Answered once the scheduler has heard that the worker which parked the task has exited.
    Answered sooner, Airflow 3.3 resumes the task (``scheduled``, then ``queued``, the same try)
    and the scheduler then reads that exit ("finished with state success") as a queued task's,
    marks it failed and the run with it ("task state changed externally"): seen here on a loaded
    machine with the answer 1.4 s after the task parked. Our gates are ended in place by the
    api-server and never pass through ``queued``, so our side is answered as soon as it waits.
    """
    dag_id = pair.native_dag
    stack.wait_for_ti_state(dag_id, run_id, pair.gate, NATIVE_WAITING, timeout=240)
    wait_until(
        lambda: parking_reported(stack, dag_id, run_id, pair.gate),
        timeout=120,
        what=f"the scheduler to hear the exit of the worker that parked {dag_id}/{run_id}/{pair.gate}",
    )
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{pair.gate}/-1/hitlDetails"
    detail = stack.api("GET", path, user=pair.user).json()
    assert (detail["subject"], detail["response_received"]) == (pair.title, False)
    assert set(pair.chosen_options) <= set(detail["options"])
    body = {"chosen_options": pair.chosen_options, "params_input": pair.values}
    return dict(stack.api("PATCH", path, user=pair.user, json_body=body).json())


def test_every_example_is_a_pair_of_this_module() -> None:
    expected = {f"{name}_{side}.py" for name in PAIRS for side in ("native", "ours")}
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(expected)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_ours_ends_as_the_native_gate_did(stack: AirflowHarness, runs: dict[str, str], name: str) -> None:
    pair = PAIRS[name]
    native_run, ours_run = runs[pair.native_dag], runs[pair.ours_dag]

    decided = answer_ours(stack, pair, ours_run)
    assert decided["decided_by"] == pair.user
    answered = answer_native(stack, pair, native_run)
    assert (answered["chosen_options"], answered["responded_by"]["name"]) == (pair.chosen_options, pair.user)

    stack.wait_for_run_state(pair.ours_dag, ours_run, "success", timeout=240)
    stack.wait_for_run_state(pair.native_dag, native_run, "success", timeout=240)
    ours_states = stack.task_states(pair.ours_dag, ours_run)
    assert ours_states == stack.task_states(pair.native_dag, native_run)
    assert ours_states[pair.gate] == "success"
    assert xcom(stack, pair.ours_dag, ours_run, pair.last) == pair.result
    assert xcom(stack, pair.native_dag, native_run, pair.last) == pair.result
    if name == "branch":
        assert ours_states == {"choose_rollout": "success", "roll_out": "success", "keep_current": "skipped"}


def test_each_api_sees_only_its_own_gates(stack: AirflowHarness, runs: dict[str, str]) -> None:
    """Side by side: Airflow's hitlDetails list none of our gates, our approvals none of Airflow's."""
    native_dags = {pair.native_dag for pair in PAIRS.values()}
    ours_dags = {pair.ours_dag for pair in PAIRS.values()}

    def both() -> tuple[set[str], set[str]] | None:
        native = stack.api("GET", "/api/v2/dags/~/dagRuns/~/hitlDetails", params={"limit": 100}).json()
        ours = stack.api("GET", API, params={"limit": 100}).json()
        seen = (
            {detail["task_instance"]["dag_id"] for detail in native["hitl_details"]},
            {item["dag_id"] for item in ours["approvals"]},
        )
        # Until every gate of the runs has opened, each list may still grow.
        return seen if seen[0] >= native_dags and seen[1] >= ours_dags else None

    seen_native, seen_ours = wait_until(both, timeout=300, what="every gate to open", on_timeout=stack.dump_logs)
    assert (seen_native, seen_ours) == (native_dags, ours_dags)

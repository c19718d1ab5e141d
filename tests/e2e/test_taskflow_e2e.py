"""TaskFlow gates and Airflow notifiers on a real Airflow (issue 27, items 2 and 3).

One stack for the module, whose dags folder holds ``tests/e2e/dags_taskflow/`` and the warm-up
DAG. Each gate's function runs on a LocalExecutor worker with its upstream XComs, the request
opens with the content it returned, people decide over the REST API, and the run goes on with
the decision as the gate's XCom: a plain gate, a mapped one (one request per region), a branch
gate. Its notifiers are real: Airflow's own ``SlackNotifier`` posts to a Slack Web API stand-in
served by this process on loopback, after a notifier that raises (logged, the gate opens all the
same). A function returning a key that is no part of a request's content fails its task at once.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import TEST_DAGS, AirflowHarness, wait_until
from tests.standins import SlackApi, serve_slack_api

pytestmark = pytest.mark.e2e

TASKFLOW_DAGS = Path(__file__).resolve().parent / "dags_taskflow"
API = "/hitl/api/v1/approvals"


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackApi]:
    """The Slack Web API stand-in the release gate's ``SlackNotifier`` posts to."""
    yield from serve_slack_api()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, slack: SlackApi) -> Iterator[AirflowHarness]:
    """One Airflow whose dags folder is the TaskFlow gates and the warm-up DAG."""
    root = tmp_path_factory.mktemp("airflow-taskflow")
    dags = tmp_path_factory.mktemp("taskflow-dags")
    for path in TASKFLOW_DAGS.glob("*.py"):
        shutil.copy2(path, dags / path.name)
    shutil.copy2(TEST_DAGS / "e2e_warmup.py", dags / "e2e_warmup.py")
    connection = {"conn_type": "slack", "password": "xoxb-test-token", "extra": {"base_url": slack.base_url}}
    harness = AirflowHarness(root=root, env={"AIRFLOW_CONN_SLACK_API_DEFAULT": json.dumps(connection)})
    # Only these files: the repository's demo DAGs and the other e2e DAGs would only cost parsing.
    harness.dag_dirs = [dags]
    print(f"\nstarting Airflow for the TaskFlow gates in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def pending(stack: AirflowHarness, dag_id: str, run_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The run's ``count`` open requests as ``GET /approvals/pending`` shows them, by map index."""

    def check() -> list[dict[str, Any]] | None:
        body = stack.api("GET", f"{API}/pending", user="alice", params={"dag_id": dag_id, "run_id": run_id}).json()
        found = sorted(body["approvals"], key=lambda item: item["map_index"])
        return found if len(found) == count else None

    return wait_until(
        check, timeout=240, what=f"{count} pending requests of {dag_id}/{run_id}", on_timeout=stack.dump_logs
    )


def decide(stack: AirflowHarness, approval_id: str, action: str, *, user: str, **body: Any) -> dict[str, Any]:
    """``POST /approvals/{id}/{action}`` as ``user``; the response body."""
    return dict(stack.api("POST", f"{API}/{approval_id}/{action}", user=user, json_body=body).json())


def xcom(stack: AirflowHarness, dag_id: str, run_id: str, task_id: str) -> Any:
    """A task's return value through Airflow's REST API."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = stack.api("GET", path, params={"deserialize": True}).json()["value"]
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def test_a_gate_opens_with_what_its_function_returned_and_its_decision_flows_on(
    stack: AirflowHarness, slack: SlackApi
) -> None:
    dag_id, task_id = "taskflow_release", "approve_release"
    run_id = stack.trigger(dag_id, user="admin")
    [item] = pending(stack, dag_id, run_id)
    assert (item["task_id"], item["title"], item["reason"]) == (
        task_id,
        "Release model at 96.2% accuracy",
        "accuracy above 95%",
    )
    # The upstream XCom reached the function; the function's metadata merged over the decorator's.
    assert item["context"] == {"metrics": {"accuracy": 0.962, "loss": 0.087}}
    assert item["metadata"] == {"environment": "production", "model_version": "2.1.0"}
    assert item["allowed_roles"] == ["op"]

    # Airflow's own SlackNotifier, called when the request opened, after a notifier that raised.
    def posted() -> list[Any] | None:
        calls = [c for c in slack.of("chat.postMessage") if item["id"] in str(c.params.get("text"))]
        return calls or None

    [call] = wait_until(posted, timeout=120, what="the SlackNotifier's message")
    assert call.params["channel"] == "#releases"
    assert call.params["text"] == f"Approval needed: Release model at 96.2% accuracy ({item['id']}) in {dag_id}"
    log = wait_until(
        lambda: (text := stack.task_logs(dag_id, run_id, task_id, lines=400)) and "(ChatDown) failed" in text and text,
        timeout=120,
        what="the failing notifier's log line",
    )
    assert f"gate '{task_id}' of DAG '{dag_id}' (approval request {item['id']}): notifiers[0] (ChatDown) failed" in log

    assert decide(stack, item["id"], "approve", user="alice", comment="ship it")["state"] == "approved"
    stack.wait_for_run_state(dag_id, run_id, "success")
    decision = xcom(stack, dag_id, run_id, task_id)
    assert (decision["request_id"], decision["approved"], decision["decided_by"]) == (item["id"], True, "alice")
    assert xcom(stack, dag_id, run_id, "release") == "alice"


def test_a_mapped_gate_asks_once_per_index(stack: AirflowHarness) -> None:
    dag_id = "taskflow_mapped"
    run_id = stack.trigger(dag_id, user="admin")
    first, second = pending(stack, dag_id, run_id, count=2)
    assert [(first["map_index"], first["title"]), (second["map_index"], second["title"])] == [
        (0, "Roll out to eu-west-1"),
        (1, "Roll out to us-east-1"),
    ]
    assert second["context"] == {"region": "us-east-1"}
    decide(stack, first["id"], "approve", user="alice")
    decide(stack, second["id"], "approve", user="bob")
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert xcom(stack, dag_id, run_id, "rolled_out") == ["alice", "bob"]


def test_a_branch_gate_follows_the_rejection(stack: AirflowHarness) -> None:
    dag_id, task_id = "taskflow_branch", "approve_ship"
    run_id = stack.trigger(dag_id, user="admin")
    [item] = pending(stack, dag_id, run_id)
    # The decorator's templated title, the function's context.
    assert (item["title"], item["context"]) == (f"Ship build {run_id}", {"build": 42})
    decide(stack, item["id"], "reject", user="alice", reason="build 42 is flaky")
    stack.wait_for_run_state(dag_id, run_id, "success")
    states = stack.task_states(dag_id, run_id)
    assert (states[task_id], states["ship"], states["roll_back"]) == ("success", "skipped", "success")
    assert xcom(stack, dag_id, run_id, task_id)["decision"] == "rejected"


def test_a_function_returning_a_wrong_key_fails_its_task_at_once(stack: AirflowHarness) -> None:
    dag_id, task_id = "taskflow_bad_return", "approve_release"
    run_id = stack.trigger(dag_id, user="admin")
    stack.wait_for_run_state(dag_id, run_id, "failed")
    ti = stack.task_instance(dag_id, run_id, task_id)
    # retries=2, but the same function would return the same thing: no retry.
    assert (ti["state"], ti["try_number"]) == ("failed", 1)
    log = stack.task_logs(dag_id, run_id, task_id, lines=400)
    assert f"invalid `titel` returned by approve_release() of task '{task_id}' in DAG '{dag_id}'" in log
    assert stack.approvals(dag_id, run_id) == []

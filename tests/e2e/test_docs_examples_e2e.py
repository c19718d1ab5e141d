"""The DAG examples of the README and the docs site, run as copied on a real Airflow (issue 25).

One stack for the module, whose dags folder holds the files of ``docs/examples/`` (except
``migration_before.py``, a gate of Airflow's own HITL) and nothing else but the warm-up DAG.
Every example is triggered at once; each gate must open a pending request with the title,
reason, approvers and form its example defines. Then each is decided over the REST API, as a
reader would, and the run must go on with what the example's downstream task promises: the
decision read by ``read_decision``, the form's values, the branch taken, the bound artifact
verified. ``notified_release``
names connections this stack lacks: its emails, Slack messages and webhook calls fail, but
its gate opens and its in-app notice arrives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_hitl.canonical import content_digest
from airflow_hitl.records import SHOWN_FIELDS
from tests.e2e.harness import REPO_ROOT, TEST_DAGS, AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "docs" / "examples"
#: Airflow's own HITL operator (the migration page's "before"): not a gate of ours to open.
NOT_RUN = {"migration_before.py"}
API = "/hitl/api/v1/approvals"
#: The artifact bound_release.py's train task builds, as its gate binds it.
MODEL_SHA = hashlib.sha256(b"model weights 2.1.0").hexdigest()


@dataclass(frozen=True)
class Gate:
    """What an example's gate asks, as its file writes it, and who triggers its run."""

    dag_id: str
    task_id: str
    title: str
    requested_by: str = "admin"
    #: Fields of the request as the REST API shows it (a subset).
    fields: dict[str, Any] = field(default_factory=dict)
    #: Form inputs: name -> (default value, required).
    inputs: dict[str, tuple[Any, bool]] = field(default_factory=dict)
    timeout: dt.timedelta | None = None


GATES: dict[str, Gate] = {
    "bound_release.py": Gate(
        dag_id="bound_release",
        task_id="approve_model",
        title="Deploy the model trained in this run",
        fields={"bound": {"model": MODEL_SHA}, "allowed_roles": ["op"], "timeout_action": "reject"},
        timeout=dt.timedelta(hours=4),
    ),
    "model_release.py": Gate(
        dag_id="release",
        task_id="approve_release",
        title="Release model 2.1.0",
        requested_by="bob",  # as the README says: bob triggers, two other ops approve
        fields={
            "reason": "Accuracy above 95%",
            "context": {"metrics": {"accuracy": 0.962, "loss": 0.087}},
            "metadata": {"environment": "production", "risk": "high"},
            "allowed_roles": ["op"],
            "allowed_approvers": [],
            "required_approvals": 2,
            "timeout_action": "escalate",
            "escalation_final_action": "reject",
            "on_reject": "fail",
        },
        timeout=dt.timedelta(hours=4),
    ),
    "rollout_form.py": Gate(
        dag_id="rollout_form",
        task_id="approve_rollout",
        title="Roll out ranking model 2.3",
        inputs={"rollout_percent": (10, False), "ticket": (None, True)},
        fields={"timeout_action": "reject"},
        timeout=dt.timedelta(hours=8),
    ),
    "branch_rollout.py": Gate(
        dag_id="branch_rollout",
        task_id="approve_rollout",
        title="Roll out ranking model 2.3",
        fields={"timeout_action": "reject"},
        timeout=dt.timedelta(hours=8),
    ),
    "notified_release.py": Gate(
        dag_id="notified_release",
        task_id="approve_release",
        title="Release model 2.1.0",
        fields={"allowed_roles": ["op"], "timeout_action": "reject"},
        timeout=dt.timedelta(hours=4),
    ),
    "migration_after.py": Gate(
        dag_id="release_hitl",
        task_id="approve_release",
        title="Release model 2.1.0",
        inputs={"ticket": ("CHG-0", False)},
        fields={
            "context": {"metrics": {"accuracy": 0.962, "loss": 0.087}},
            "allowed_approvers": ["alice", "bob"],
            "timeout_action": "reject",
            "on_reject": "fail",
        },
        timeout=dt.timedelta(hours=4),
    ),
}
BY_DAG = {gate.dag_id: gate for gate in GATES.values()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """One Airflow whose dags folder is the examples (and the warm-up DAG the harness runs first)."""
    root = tmp_path_factory.mktemp("airflow-docs-examples")
    dags = tmp_path_factory.mktemp("docs-example-dags")
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.name not in NOT_RUN:
            shutil.copy2(path, dags / path.name)
    shutil.copy2(TEST_DAGS / "e2e_warmup.py", dags / "e2e_warmup.py")
    harness = AirflowHarness(root=root)
    # Only these files: the repository's demo DAGs and the other e2e DAGs would only cost parsing.
    harness.dag_dirs = [dags]
    print(f"\nstarting Airflow for the docs examples in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def runs(stack: AirflowHarness) -> dict[str, str]:
    """One run of every example, all triggered at once: dag_id -> run_id."""
    return {gate.dag_id: stack.trigger(gate.dag_id, user=gate.requested_by) for gate in GATES.values()}


def open_request(stack: AirflowHarness, dag_id: str, run_id: str) -> dict[str, Any]:
    """The run's pending request as ``GET /approvals/pending`` shows it (waiting for the gate to open)."""

    def check() -> dict[str, Any] | None:
        body = stack.api("GET", f"{API}/pending", user="alice", params={"dag_id": dag_id, "run_id": run_id}).json()
        return body["approvals"][0] if body["total_entries"] else None

    stack.wait_in_triggerer(dag_id, run_id, BY_DAG[dag_id].task_id, timeout=240)
    return wait_until(check, timeout=60, what=f"pending request of {dag_id}/{run_id}", on_timeout=stack.dump_logs)


def decide(stack: AirflowHarness, approval_id: str, action: str, *, user: str, **body: Any) -> dict[str, Any]:
    """``POST /approvals/{id}/{action}`` as ``user``; the response body."""
    return dict(stack.api("POST", f"{API}/{approval_id}/{action}", user=user, json_body=body).json())


def xcom(stack: AirflowHarness, dag_id: str, run_id: str, task_id: str) -> Any:
    """A task's return value through Airflow's REST API."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = stack.api("GET", path, params={"deserialize": True}).json()["value"]
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def test_every_example_of_ours_is_run() -> None:
    assert sorted(GATES) == sorted(path.name for path in EXAMPLES.glob("*.py") if path.name not in NOT_RUN)


@pytest.mark.parametrize("example", sorted(GATES))
def test_gate_opens_as_written(stack: AirflowHarness, runs: dict[str, str], example: str) -> None:
    gate = GATES[example]
    run_id = runs[gate.dag_id]
    item = open_request(stack, gate.dag_id, run_id)
    assert (item["task_id"], item["state"], item["title"]) == (gate.task_id, "pending", gate.title)
    assert item["requested_by"] == gate.requested_by
    assert {name: item[name] for name in gate.fields} == gate.fields
    assert {name: (spec["value"], spec["required"]) for name, spec in item["inputs"].items()} == gate.inputs
    if gate.timeout is not None:
        opened = dt.datetime.fromisoformat(item["requested_at"])
        assert dt.datetime.fromisoformat(item["expires_at"]) - opened == gate.timeout
    # The store agrees with the API: the request is open there too.
    [stored] = stack.approvals(gate.dag_id, run_id, gate.task_id)
    assert (stored.id, stored.state) == (item["id"], "pending")


def test_model_release_runs_on_after_two_approvals(stack: AirflowHarness, runs: dict[str, str]) -> None:
    dag_id = "release"
    run_id = runs[dag_id]
    item = open_request(stack, dag_id, run_id)
    # bob triggered the run: without allow_self_approval his vote is refused.
    refused = stack.api("POST", f"{API}/{item['id']}/approve", user="bob", json_body={}, expect=(403,))
    assert "cannot approve it yourself" in refused.json()["detail"]
    assert decide(stack, item["id"], "approve", user="alice")["state"] == "pending"
    assert decide(stack, item["id"], "approve", user="carol", comment="metrics look good")["state"] == "approved"
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert stack.task_states(dag_id, run_id) == {
        "evaluate": "success",
        "approve_release": "success",
        "deploy": "success",
    }
    assert xcom(stack, dag_id, run_id, "deploy") == "deployed, approved by alice, carol"


def test_rollout_form_hands_the_form_to_the_task(stack: AirflowHarness, runs: dict[str, str]) -> None:
    dag_id = "rollout_form"
    run_id = runs[dag_id]
    item = open_request(stack, dag_id, run_id)
    inputs = {"rollout_percent": 25, "ticket": "CHG-1234"}
    assert decide(stack, item["id"], "approve", user="alice", inputs=inputs)["state"] == "approved"
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert xcom(stack, dag_id, run_id, "roll_out") == "rolling out to 25% under CHG-1234"


def test_branch_rollout_follows_the_reject_branch(stack: AirflowHarness, runs: dict[str, str]) -> None:
    dag_id = "branch_rollout"
    run_id = runs[dag_id]
    item = open_request(stack, dag_id, run_id)
    assert decide(stack, item["id"], "reject", user="alice", reason="error rate too high")["state"] == "rejected"
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert stack.task_states(dag_id, run_id) == {
        "approve_rollout": "success",
        "roll_out": "skipped",
        "keep_current": "success",
        "notify_team": "success",
    }


def test_migration_after_deploys_under_the_ticket(stack: AirflowHarness, runs: dict[str, str]) -> None:
    dag_id = "release_hitl"
    run_id = runs[dag_id]
    item = open_request(stack, dag_id, run_id)
    assert decide(stack, item["id"], "approve", user="alice", inputs={"ticket": "CHG-42"})["state"] == "approved"
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert xcom(stack, dag_id, run_id, "deploy") == "deployed under CHG-42, approved by alice"


def test_notified_release_notifies_in_app_without_the_other_connections(
    stack: AirflowHarness, runs: dict[str, str]
) -> None:
    dag_id = "notified_release"
    item = open_request(stack, dag_id, runs[dag_id])

    def notice() -> dict[str, Any] | None:
        body = stack.api("GET", "/hitl/api/v1/notifications", user="alice").json()
        return next((n for n in body["notifications"] if n["request_id"] == item["id"]), None)

    found = wait_until(notice, timeout=120, what="alice's in-app notice", on_timeout=stack.hitl_logs)
    assert found["event_type"] == "required"
    assert found["subject"] == "Please release Release model 2.1.0"  # the example's own template


def test_bound_release_deploys_exactly_the_approved_model(stack: AirflowHarness, runs: dict[str, str]) -> None:
    dag_id = "bound_release"
    run_id = runs[dag_id]
    item = open_request(stack, dag_id, run_id)
    assert item["bound"] == {"model": MODEL_SHA}
    # A client that digested what it showed without the bound values approved something else: 409.
    unbound = content_digest({name: item[name] for name in SHOWN_FIELDS})
    assert unbound != item["content_digest"]
    stale = stack.api(
        "POST", f"{API}/{item['id']}/approve", user="alice", json_body={"content_digest": unbound}, expect=(409,)
    )
    assert "changed since you opened it" in stale.json()["detail"]
    [stored] = stack.approvals(dag_id, run_id, "approve_model")
    assert stored.state == "pending"  # the refused decision wrote nothing
    approved = decide(stack, item["id"], "approve", user="alice", content_digest=item["content_digest"])
    assert approved["state"] == "approved"
    stack.wait_for_run_state(dag_id, run_id, "success")
    assert stack.task_states(dag_id, run_id) == {"train": "success", "approve_model": "success", "deploy": "success"}
    decision = xcom(stack, dag_id, run_id, "approve_model")
    assert decision["bound"] == {"model": hashlib.sha256(MODEL_SHA.encode()).hexdigest()}
    assert xcom(stack, dag_id, run_id, "deploy") == f"deployed model {MODEL_SHA}"

"""The command line deciding on a real Airflow as the caller's own Airflow user (issue 23, item 1).

On the shared ``notifying_airflow`` stack (PostgreSQL metadata DB and approval store,
``[hitl] base_url`` pointing at its api-server), ``airflow hitl approvals ...`` runs as a
subprocess with the stack's environment, as an operator's shell would: a decision goes to
the api-server with the token in ``AIRFLOW_HITL_TOKEN`` and is recorded with source ``cli``;
a viewer's token and a typed ``--user`` decide nothing; ``cancel --break-glass`` writes the
store directly, ends the gate (the task fails) and is audited as ``<os user>@<host>``.
"""

from __future__ import annotations

import getpass
import json
import socket
import subprocess

import pytest

from tests.e2e.harness import AirflowHarness

pytestmark = pytest.mark.e2e

DAG_ID, TASK_ID = "e2e_gate", "gate"


def hitl(airflow: AirflowHarness, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """``airflow hitl <args>`` with the stack's environment (and ``AIRFLOW_HITL_TOKEN`` when given)."""
    env = {k: v for k, v in airflow.env.items() if k != "AIRFLOW_HITL_TOKEN"}
    if token is not None:
        env["AIRFLOW_HITL_TOKEN"] = token
    return subprocess.run(
        [airflow.airflow_bin, "hitl", *args],
        env=env,
        capture_output=True,
        text=True,
        input="",
        timeout=300,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command's one ``error:`` line (exit status 1, no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


class TestCliOnAirflow:
    def test_approve_with_the_users_token_and_the_run_goes_on(self, notifying_airflow: AirflowHarness) -> None:
        airflow = notifying_airflow
        run_id = airflow.trigger(DAG_ID, user="op")
        approval = airflow.wait_for_approval(DAG_ID, run_id, TASK_ID, states=["pending"])

        refused = error_line(hitl(airflow, "approvals", "approve", approval.id, token=airflow.token("viewer")))
        assert refused.startswith("error: 403 Forbidden from ") and "edit access" in refused
        named = error_line(
            hitl(airflow, "approvals", "approve", approval.id, "--user", "mallory", token=airflow.token("alice"))
        )
        assert "decisions act as the Airflow user of your token" in named
        assert "401" in error_line(hitl(airflow, "approvals", "approve", approval.id, token="not-a-token"))
        assert airflow.manager.queries.get(approval.id).votes == ()

        # Read through the api-server named by [hitl] base_url, as the token's user.
        listed = hitl(airflow, "approvals", "list", "--dag-id", DAG_ID, "-o", "json", token=airflow.token("viewer"))
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert approval.id in {row["id"] for row in json.loads(listed.stdout)}

        done = hitl(
            airflow, "approvals", "approve", approval.id, "--comment", "from a shell", token=airflow.token("alice")
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"approval request {approval.id} ({DAG_ID}): approved" in done.stdout
        airflow.wait_for_run_state(DAG_ID, run_id, "success")

        decided = airflow.manager.queries.get(approval.id)
        assert (decided.decided_by, decided.decision_source) == ("alice", "cli")
        assert [(v.user, v.source, v.comment) for v in decided.votes] == [("alice", "cli", "from a shell")]
        vote = next(e for e in airflow.manager.audit.events(approval.id) if e.event_type == "vote")
        assert (vote.actor, vote.source) == ("alice", "cli")
        assert (vote.details["os_user"], vote.details["hostname"]) == (getpass.getuser(), socket.gethostname())
        assert airflow.manager.audit.verify_audit_chain().ok

    def test_break_glass_cancel_ends_the_gate_and_is_audited(self, notifying_airflow: AirflowHarness) -> None:
        airflow = notifying_airflow
        run_id = airflow.trigger(DAG_ID, user="op")
        approval = airflow.wait_for_approval(DAG_ID, run_id, TASK_ID, states=["pending"])
        airflow.wait_in_triggerer(DAG_ID, run_id, TASK_ID)

        # Without --break-glass a cancel needs a token like any decision.
        assert "needs your own Airflow token" in error_line(
            hitl(airflow, "approvals", "cancel", approval.id, "--reason", "x")
        )
        result = hitl(airflow, "approvals", "cancel", approval.id, "--break-glass", "--reason", "api-server down")
        assert result.returncode == 0, result.stderr[-2000:]
        actor = f"{getpass.getuser()}@{socket.gethostname()}"
        assert f"cancelled by {actor} (break-glass)" in result.stdout

        airflow.wait_for_ti_state(DAG_ID, run_id, TASK_ID, "failed")
        cancelled = airflow.manager.queries.get(approval.id)
        assert (cancelled.state, cancelled.decided_by, cancelled.decision_source) == ("cancelled", actor, "break-glass")
        event = airflow.manager.audit.events(approval.id)[-1]
        assert (event.event_type, event.actor, event.source) == ("cancelled", actor, "break-glass")
        assert airflow.manager.audit.verify_audit_chain().ok
        # The api-server shows the ending like any other.
        item = airflow.api("GET", f"/hitl/api/v1/approvals/{approval.id}", user="viewer").json()
        assert (item["state"], item["decided_by"], item["decision_source"]) == ("cancelled", actor, "break-glass")

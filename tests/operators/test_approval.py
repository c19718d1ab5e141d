"""ApprovalOperator: parse-time validation, and real runs through `airflow dags test`.

`airflow dags test` runs the DAG in one process exactly as Airflow would (the gate defers,
its trigger runs, the task resumes), against a temporary AIRFLOW_HOME. The test decides
from its own process through ApprovalManager on the same store, as an approver would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.manager import ApprovalFilter, ApprovalManager
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalRequestRow
from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval

DAGS = Path(__file__).parent / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            pytest.param({"approval_type": "maybe"}, "approval_type", id="approval-type"),
            pytest.param({"approval_type": "conditional"}, "condition", id="conditional-without-condition"),
            pytest.param({"condition": lambda c: True}, "condition", id="condition-without-conditional"),
            pytest.param({"timeout": 30}, "timeout", id="timeout-not-timedelta"),
            pytest.param({"timeout": dt.timedelta(0)}, "timeout", id="timeout-zero"),
            pytest.param({"timeout_action": "approve"}, "timeout", id="action-without-timeout"),
            pytest.param({"timeout": dt.timedelta(1), "timeout_action": "nap"}, "timeout_action", id="unknown-action"),
            pytest.param(
                {"timeout": dt.timedelta(1), "timeout_action": "escalate", "escalation_final_action": "reject"},
                "escalate_to",
                id="escalate-without-levels",
            ),
            pytest.param(
                {"timeout": dt.timedelta(1), "timeout_action": "escalate", "escalate_to": ["boss"]},
                "escalation_final_action",
                id="escalate-without-final-action",
            ),
            pytest.param(
                {"timeout": dt.timedelta(1), "timeout_action": "reject", "escalate_to": ["boss"]},
                "escalate_to",
                id="levels-without-escalate",
            ),
            pytest.param(
                {
                    "timeout": dt.timedelta(1),
                    "timeout_action": "escalate",
                    "escalate_to": [{"approvers": ["b"]}],
                    "escalation_final_action": "reject",
                },
                "escalate_to[0].timeout",
                id="level-without-timeout",
            ),
            pytest.param({"required_approvals": 0}, "required_approvals", id="zero-approvals"),
            pytest.param({"required_approvals": "2"}, "required_approvals", id="approvals-not-int"),
            pytest.param(
                {"allowed_approvers": ["a", "b"], "required_approvals": 3}, "required_approvals", id="quorum-too-big"
            ),
            pytest.param({"allowed_approvers": "alice,bob"}, None, id="single-string-is-one-user"),
            pytest.param({"allowed_approvers": [1, 2]}, "allowed_approvers", id="approvers-not-strings"),
            pytest.param({"allowed_roles": [""]}, "allowed_roles", id="empty-role"),
            pytest.param({"require_all": True}, "require_all", id="require-all-without-list"),
            pytest.param({"allow_self_approval": "yes"}, "allow_self_approval", id="self-approval-not-bool"),
            pytest.param({"on_reject": "retry"}, "on_reject", id="on-reject"),
            pytest.param({"context": ["a"]}, "context", id="context-not-dict"),
            pytest.param({"metadata": "risky"}, "metadata", id="metadata-not-dict"),
            pytest.param({"context_from": "evaluate"}, "context_from", id="context-from-string"),
            pytest.param({"context_from": {"m": 3}}, "context_from['m']", id="context-from-bad-source"),
            pytest.param({"execution_timeout": dt.timedelta(1)}, "execution_timeout", id="execution-timeout"),
            pytest.param({"title": ""}, "title", id="empty-title"),
            pytest.param({"poll_interval": -1}, "poll_interval", id="poll-interval"),
            pytest.param({"sla": dt.timedelta(0)}, "sla", id="sla-zero"),
            pytest.param({"sla": 60}, "sla", id="sla-not-timedelta"),
            pytest.param(
                {"sla": dt.timedelta(hours=2), "timeout": dt.timedelta(hours=1)}, "sla", id="sla-past-timeout"
            ),
            pytest.param({"sla": dt.timedelta(minutes=30), "timeout": dt.timedelta(hours=1)}, None, id="sla-ok"),
        ],
    )
    def test_field_is_named(self, kwargs: dict, field: str | None) -> None:
        kwargs = {"task_id": "gate", "title": "Release", **kwargs}
        if field is None:
            ApprovalOperator(**kwargs)
            return
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(**kwargs)
        assert err.value.field == field
        assert f"`{field}`" in str(err.value)

    def test_full_configuration_is_accepted(self) -> None:
        op = ApprovalOperator(
            task_id="gate",
            title="Release {{ params.v }}",
            context_from={"metrics": "evaluate", "loss": ("train", "loss")},
            timeout=dt.timedelta(hours=1),
            timeout_action="escalate",
            escalate_to=[
                {"approvers": ["lead"], "timeout": dt.timedelta(hours=1)},
                EscalationLevel(roles=("admin",), timeout=dt.timedelta(hours=2), required_approvals=1),
            ],
            escalation_final_action="reject",
            required_approvals=2,
            allowed_roles=["ml"],
            metadata={"risk": "high"},
        )
        assert op.context_from == {"metrics": ("evaluate", "return_value"), "loss": ("train", "loss")}
        assert [lvl.approvers for lvl in op.escalate_to] == [("lead",), ()]

    def test_timeout_defaults_to_reject(self) -> None:
        op = ApprovalOperator(task_id="gate", title="t", timeout=dt.timedelta(minutes=5))
        assert op.timeout_action == "reject"

    def test_invalid_dag_file_fails_at_parse_time(self, tmp_path: Path) -> None:
        (tmp_path / "bad_gate.py").write_text(
            "import datetime as dt\n"
            "from airflow.sdk import DAG\n"
            "from airflow_hitl.operators.approval import ApprovalOperator\n"
            "with DAG('bad_gate', schedule=None, start_date=dt.datetime(2026, 1, 1)):\n"
            "    ApprovalOperator(task_id='gate', title='t', required_approvals=0)\n"
        )
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(tmp_path))
        assert "bad_gate" not in bag.dags
        errors = "\n".join(bag.import_errors.values())
        assert "invalid `required_approvals` of task 'gate' in DAG 'bad_gate'" in errors

    def test_every_problem_is_reported_at_once(self) -> None:
        from airflow.sdk import DAG

        with DAG("release", schedule=None), pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(
                task_id="approve_release",
                title="Release",
                required_approvals=0,
                timeout_action="nap",
                on_reject="retry",
                escalate_to=[{"approvers": ["boss"]}, {"roles": 3, "timeout": dt.timedelta(hours=1)}],
                notify_channels=["pager"],
                execution_timeout=dt.timedelta(hours=1),
            )
        fields = [field for field, _ in err.value.problems]
        assert sorted(fields) == sorted(
            [
                "execution_timeout",
                "escalate_to[0].timeout",
                "escalate_to[1].roles",
                "notify_channels",
                "timeout_action",
                "timeout",
                "required_approvals",
                "on_reject",
            ]
        )
        message = str(err.value)
        assert message.startswith(
            "ApprovalOperator: invalid options of task 'approve_release' in DAG 'release' at " + __file__
        )
        assert "(8 problems)" in message
        for field in fields:
            assert f"\n  - `{field}`: " in message
        assert err.value.field == fields[0]

    def test_a_field_left_empty_by_its_own_error_is_not_reported_twice(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(
                task_id="gate",
                title="t",
                timeout=dt.timedelta(hours=1),
                timeout_action="escalate",
                escalation_final_action="reject",
                escalate_to=[{"approvers": ["boss"], "timeout": dt.timedelta(0)}],
            )
        assert err.value.problems == [("escalate_to[0].timeout", "must be positive")]

    def test_import_error_traceback_ends_at_the_dag_files_line(self, tmp_path: Path) -> None:
        """Airflow keeps the innermost two traceback entries of an import error: one must be the author's line."""
        (tmp_path / "two_mistakes.py").write_text(
            "import datetime as dt\n"
            "from airflow.sdk import DAG\n"
            "from airflow_hitl.operators.approval import ApprovalOperator\n"
            "with DAG('two_mistakes', schedule=None, start_date=dt.datetime(2026, 1, 1)):\n"
            "    ApprovalOperator(task_id='ok', title='fine')\n"
            "    ApprovalOperator(task_id='gate', title='', on_reject='retry')  # line 6\n"
        )
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(tmp_path))
        assert "two_mistakes" not in bag.dags
        [error] = bag.import_errors.values()
        assert f'File "{tmp_path / "two_mistakes.py"}", line 6, in <module>' in error
        assert "ApprovalOperator(task_id='gate', title='', on_reject='retry')  # line 6" in error
        assert "invalid options of task 'gate' in DAG 'two_mistakes'" in error
        assert "two_mistakes.py:6 (2 problems):" in error
        assert "- `title`: is required" in error
        assert "- `on_reject`: must be one of" in error


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated Airflow home whose DAG folder holds tests/operators/dags."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    shutil.copytree(DAGS, dags)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        # Its own metadata DB, whatever an earlier test of the session put in the environment.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW_HITL_STORE_URL": f"sqlite:///{home / 'hitl.db'}",
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    yield env


@pytest.fixture
def store(airflow_home: dict[str, str]) -> ApprovalStore:
    """The store the `airflow dags test` process uses (overrides the backend-parametrised one)."""
    store = ApprovalStore(url=airflow_home["AIRFLOW_HITL_STORE_URL"])
    migrate(store)
    return store


def _run_dag(env: dict[str, str], dag_id: str, decide: Callable[[Approval], None] | None = None) -> dict[str, str]:
    """Run `airflow dags test`, deciding the gate from a thread; return its output and the request id."""
    manager = ApprovalManager(store=ApprovalStore(url=env["AIRFLOW_HITL_STORE_URL"]))
    migrate(manager.store)
    stop = threading.Event()
    decided: list[str] = []

    def approver() -> None:
        while not stop.is_set():
            items, _ = manager.queries.pending(ApprovalFilter(dag_id=dag_id))
            if items and decide is not None:
                decide(items[0])
                decided.append(items[0].id)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    # Generous: `airflow dags test` took 240-390 s while three Airflow stacks shared the two cores.
    proc = subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=800)
    stop.set()
    thread.join(5)
    runs, _ = manager.queries.list(ApprovalFilter(dag_id=dag_id), limit=1)
    assert runs, f"no approval request was created:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {"returncode": str(proc.returncode), "output": proc.stdout + proc.stderr, "request_id": runs[0].id}


def _ti_states(env: dict[str, str], dag_id: str) -> dict[str, str]:
    out = subprocess.run(
        [AIRFLOW, "tasks", "states-for-dag-run", dag_id, _last_run_id(env, dag_id), "-o", "plain"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == dag_id:
            states[parts[2]] = parts[3]
    return states


def _ti_id(env: dict[str, str], dag_id: str, task_id: str) -> str:
    """The id of the task instance of the last run, read from the metadata DB (SQLite, in AIRFLOW_HOME)."""
    with contextlib.closing(sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")) as conn:
        [(found,)] = conn.execute(
            "SELECT id FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = ?",
            (dag_id, task_id, _last_run_id(env, dag_id)),
        ).fetchall()
    return str(uuid.UUID(str(found)))


def _last_run_id(env: dict[str, str], dag_id: str) -> str:
    out = subprocess.run(
        [AIRFLOW, "dags", "list-runs", dag_id, "-o", "plain"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    lines = [ln.split() for ln in out.splitlines() if ln.startswith(dag_id)]
    return lines[0][1]


@pytest.mark.slow
class TestRuns:
    def test_approved_gate_runs_downstream(self, airflow_home: dict[str, str], store: ApprovalStore) -> None:
        result = _run_dag(
            airflow_home, "op_manual", lambda a: ApprovalManager(store=store).approve(a.id, user=Principal.of("alice"))
        )
        approval = ApprovalManager(store=store).queries.get(result["request_id"])
        assert approval.state == "approved"
        assert approval.context["metrics"] == {"accuracy": 0.97, "loss": 0.08}
        assert approval.context["build"].startswith("manual__")
        assert approval.title == "Gate of op_manual"
        assert _ti_states(airflow_home, "op_manual") == {"evaluate": "success", "gate": "success", "after": "success"}
        # The request records the task instance try that opened it: Airflow's id of the gate's task instance.
        with store.session() as session:
            row = session.get(ApprovalRequestRow, approval.id)
            assert row is not None and row.task_instance_id == _ti_id(airflow_home, "op_manual", "gate")

    @pytest.mark.parametrize(
        ("dag_id", "gate_state", "downstream_state"),
        [
            pytest.param("op_reject_fail", "failed", "upstream_failed", id="on_reject-fail"),
            pytest.param("op_reject_skip", "skipped", "skipped", id="on_reject-skip"),
        ],
    )
    def test_rejected_gate(
        self, airflow_home: dict[str, str], store: ApprovalStore, dag_id: str, gate_state: str, downstream_state: str
    ) -> None:
        result = _run_dag(
            airflow_home,
            dag_id,
            lambda a: ApprovalManager(store=store).reject(a.id, user=Principal.of("alice"), reason="bad metrics"),
        )
        states = _ti_states(airflow_home, dag_id)
        assert states["gate"] == gate_state
        assert states["after"] == downstream_state
        assert ApprovalManager(store=store).queries.get(result["request_id"]).comment == "bad metrics"

    @pytest.mark.parametrize(("dag_id", "source"), [("op_auto", "auto"), ("op_conditional_true", "condition")])
    def test_automatic_approval(
        self, airflow_home: dict[str, str], store: ApprovalStore, dag_id: str, source: str
    ) -> None:
        result = _run_dag(airflow_home, dag_id)
        approval = ApprovalManager(store=store).queries.get(result["request_id"])
        assert approval.state == "approved"
        assert approval.decision_source == source
        assert _ti_states(airflow_home, dag_id)["after"] == "success"

    def test_timeout_approves(self, airflow_home: dict[str, str], store: ApprovalStore) -> None:
        result = _run_dag(airflow_home, "op_timeout_approve")
        approval = ApprovalManager(store=store).queries.get(result["request_id"])
        assert approval.state == "timeout"
        assert approval.decision == "approved"
        assert _ti_states(airflow_home, "op_timeout_approve")["after"] == "success"

"""TaskFlow gates (operators/decorators.py): ``@task.approval`` and ``@task.approval_branch``.

How Airflow finds them (the provider info's ``task-decorators``), the task a decorated function
becomes (plain, branching, mapped), the options checked when the decorator is applied (DAG
files parsed by Airflow's DagBag in a child process, as the dag-processor does), and what the
function may return. The gate's run on a real Airflow (approved over REST, mapped, branching,
notifiers) is ``tests/e2e/test_taskflow_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import importlib
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, Param, task

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.get_provider_info import get_provider_info
from airflow_hitl.operators.approval import ApprovalOperator, is_approval_gate
from airflow_hitl.operators.decorators import (
    CONTENT_FIELDS,
    ApprovalBranchDecoratedOperator,
    ApprovalDecoratedOperator,
    approval_branch_task,
    approval_task,
    content_of,
)
from airflow_hitl.version_compat import AirflowFailException
from tests.helpers import parse_in_child

START = dt.datetime(2026, 1, 1)
HOUR = dt.timedelta(hours=1)

HEADER = """\
import datetime as dt
from airflow.sdk import DAG, dag, task
"""


def _fields(err: pytest.ExceptionInfo[InvalidApprovalConfig]) -> list[str]:
    return [field for field, _ in err.value.problems]


class TestAirflowFindsThem:
    def test_the_provider_info_declares_both_names(self) -> None:
        declared = {entry["name"]: entry["class-name"] for entry in get_provider_info()["task-decorators"]}
        assert declared == {
            "approval": "airflow_hitl.operators.decorators.approval_task",
            "approval_branch": "airflow_hitl.operators.decorators.approval_branch_task",
        }
        for path in declared.values():
            module, _, name = path.rpartition(".")
            assert callable(getattr(importlib.import_module(module), name))

    def test_task_dot_approval_is_ours(self) -> None:
        # Through Airflow's own lookup of provider decorators, as a DAG file reaches them.
        assert task.approval is approval_task
        assert task.approval_branch is approval_branch_task


class TestTheTask:
    def test_a_decorated_function_becomes_a_gate_downstream_of_its_arguments(self) -> None:
        with DAG("taskflow", schedule=None, start_date=START) as dag:

            @task
            def evaluate() -> dict[str, float]:
                return {"accuracy": 0.96}

            @task.approval(allowed_roles=["ml-leads"], timeout=HOUR, metadata={"environment": "production"})
            def approve(metrics: dict[str, float]) -> dict[str, Any]:
                return {"title": "Release"}

            approve(evaluate())
        gate = dag.get_task("approve")
        assert isinstance(gate, ApprovalDecoratedOperator)
        assert is_approval_gate(gate)
        assert gate.custom_operator_name == "@task.approval"
        assert gate.upstream_task_ids == {"evaluate"}
        assert (gate.allowed_roles, gate.timeout, gate.timeout_action) == (["ml-leads"], HOUR, "reject")
        # Left to the function; the decorator's metadata is what the function's is merged over.
        assert gate.title is None
        assert gate.metadata == {"environment": "production"}
        # The gate's one XCom is its decision, whatever the function's annotation says.
        assert gate.multiple_outputs is False
        assert {"op_args", "op_kwargs", "title", "context", "metadata", "bind"} <= set(gate.template_fields)

    def test_without_options_and_as_a_branch(self) -> None:
        with DAG("taskflow_branch", schedule=None, start_date=START) as dag:

            @task.approval
            def plain() -> dict[str, Any]:
                return {"title": "Plain"}

            @task.approval_branch(branches={"approve": "ship", "reject": "roll_back"}, title="Ship?")
            def route() -> dict[str, Any]:
                return {}

            @task
            def ship() -> None: ...

            @task
            def roll_back() -> None: ...

            plain() >> route() >> [ship(), roll_back()]
        branch = dag.get_task("route")
        assert isinstance(branch, ApprovalBranchDecoratedOperator)
        assert branch.custom_operator_name == "@task.approval_branch"
        assert branch.inherits_from_skipmixin is True
        assert branch.branches == {"approve": ["ship"], "reject": ["roll_back"]}
        assert branch.title == "Ship?"
        assert branch._followed_tasks() == {"approve": ["ship"], "reject": ["roll_back"]}
        assert isinstance(dag.get_task("plain"), ApprovalDecoratedOperator)

    def test_a_mapped_gate_is_a_gate_too_and_survives_serialization(self) -> None:
        from airflow.sdk import BaseNotifier
        from airflow.serialization.serialized_objects import DagSerialization

        class Quiet(BaseNotifier):
            def notify(self, context: Any) -> None:
                pass

        with DAG("taskflow_mapped", schedule=None, start_date=START) as dag:

            @task.approval(
                timeout=HOUR,
                timeout_action="escalate",
                escalate_to=[{"roles": ["leads"], "timeout": HOUR}],
                escalation_final_action="reject",
                inputs={"ticket": Param("CHG-0", type="string")},
                notifiers=[Quiet()],
            )
            def approve_region(region: str) -> dict[str, Any]:
                return {"title": f"Roll out to {region}"}

            approve_region.expand(region=["eu", "us"])
        mapped = dag.get_task("approve_region")
        assert mapped.operator_class is ApprovalDecoratedOperator  # type: ignore[attr-defined]
        assert is_approval_gate(mapped)
        loaded = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert loaded.get_task("approve_region").task_type == "ApprovalDecoratedOperator"

    def test_multiple_outputs_is_refused(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:

            @task.approval(title="t", multiple_outputs=True)
            def gate() -> dict[str, Any]:
                return {}

        assert _fields(err) == ["multiple_outputs"]


# DAG files parsed by DagBag: the decorator's options checked as it is applied, mapped or not.
DAG_FILES = {
    "good.py": """
@task.approval(timeout=dt.timedelta(hours=1))
def shared_gate(what: str) -> dict:
    return {"title": f"Approve {what}"}

@dag(dag_id="first", schedule=None, start_date=dt.datetime(2026, 1, 1))
def first():
    shared_gate("one")

@dag(dag_id="second", schedule=None, start_date=dt.datetime(2026, 1, 1))
def second():
    @task.approval(title="Review")
    def review() -> dict:
        return {}

    deploy = shared_gate.override(task_id="deploy", distinct_from=["review", "per_region"])
    review() >> deploy("two")
    shared_gate.override(task_id="per_region").expand(what=["eu", "us"])

first()
second()
""",
    "bad_options.py": """
@dag(dag_id="bad_options", schedule=None, start_date=dt.datetime(2026, 1, 1))
def bad_options():
    @task.approval(timeout="4h", required_approvals=0, notifiers=[print])  # line 6
    def approve(metrics: dict) -> dict:
        return {"title": "Release"}

    approve({})

bad_options()
""",
    "bad_mapped.py": """
with DAG(dag_id="bad_mapped", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    @task.approval_branch(branches={"maybe": "x"}, on_reject="skip")  # line 5
    def approve(region: str) -> dict:
        return {"title": region}

    approve.expand(region=["eu", "us"])
""",
    "bad_override.py": """
@task.approval(title="Release")
def approve() -> dict:
    return {}

with DAG(dag_id="bad_override", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    approve.override(allowed_approvers=["alice"], required_approvals=2)()  # line 9
""",
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DagBag's view of the DAG files above, parsed in a fresh AIRFLOW_HOME."""
    files = {name: HEADER + text for name, text in DAG_FILES.items()}
    return parse_in_child(tmp_path_factory.mktemp("taskflow-home"), files)


def error_of(dagbag: dict[str, Any], file: str) -> str:
    return next(text for path, text in dagbag["import_errors"].items() if path.endswith(file))


class TestParseTime:
    def test_checking_the_options_adds_no_task_and_no_dag(self, dagbag: dict[str, Any]) -> None:
        assert not any(path.endswith("good.py") for path in dagbag["import_errors"])
        assert sorted(dagbag["dags"]) == ["first", "second"]
        assert sorted(dagbag["dags"]["first"]["tasks"]) == ["shared_gate"]
        assert sorted(dagbag["dags"]["second"]["tasks"]) == ["deploy", "per_region", "review"]
        deploy = dagbag["dags"]["second"]["tasks"]["deploy"]
        assert deploy["class"] == "airflow_hitl.operators.decorators.ApprovalDecoratedOperator"
        assert deploy["upstream"] == ["review"]

    def test_every_wrong_option_is_named_at_the_decorators_line(self, dagbag: dict[str, Any]) -> None:
        error = error_of(dagbag, "bad_options.py")
        # The @dag function is running as the decorator is applied: its DAG is named.
        assert "invalid options of task 'approve' in DAG 'bad_options' at " in error
        assert "bad_options.py:6 (3 problems):" in error
        for field in ("timeout", "required_approvals", "notifiers[0]"):
            assert f"- `{field}`: " in error
        assert '@task.approval(timeout="4h"' in error  # the author's own line is in the traceback

    def test_a_mapped_gates_options_are_checked_before_it_runs(self, dagbag: dict[str, Any]) -> None:
        assert "bad_mapped" not in dagbag["dags"]
        error = error_of(dagbag, "bad_mapped.py")
        assert "invalid options of task 'approve' in DAG 'bad_mapped' at " in error
        assert "- `branches`: unknown outcome 'maybe'" in error
        assert "- `on_reject`: does not apply to a branch gate" in error

    def test_options_given_when_the_gate_is_used_name_the_dag(self, dagbag: dict[str, Any]) -> None:
        error = error_of(dagbag, "bad_override.py")
        assert "invalid `required_approvals` of task 'approve' in DAG 'bad_override'" in error
        assert "bad_override.py:9" in error


class TestContent:
    @pytest.mark.parametrize("returned", [None, "Release", ["title"], 3])
    def test_anything_but_a_dict_is_refused(self, returned: Any) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            content_of(returned)
        assert _fields(err) == ["return value"]
        assert f"got {type(returned).__name__}" in str(err.value)

    def test_every_wrong_key_is_named(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            content_of({"titel": "x", "title": "", "reason": 3, "context": ["a"], "metadata": {}, "description": None})
        assert _fields(err) == ["titel", "title", "reason", "context"]
        assert str(list(CONTENT_FIELDS)) in str(err.value)

    def test_the_five_fields_are_taken(self) -> None:
        returned = {"title": "T", "description": "D", "reason": None, "context": {"a": 1}, "metadata": {}}
        assert content_of(returned) == returned


def _gate(**options: Any) -> ApprovalDecoratedOperator:
    """A TaskFlow gate of DAG ``release`` whose function returns what ``returns`` holds."""
    returns = options.pop("returns")
    with DAG("release", schedule=None, start_date=START) as dag:

        @task.approval(**options)
        def approve(version: str) -> Any:
            return returns(version) if callable(returns) else returns

        approve("2.1.0")
    gate = dag.get_task("approve")
    assert isinstance(gate, ApprovalDecoratedOperator)
    return gate


class TestTakingTheContent:
    def test_texts_replace_and_dicts_merge_over_the_decorators(self) -> None:
        gate = _gate(
            title="Release",
            reason="scheduled",
            context={"build": 7, "metrics": None},
            metadata={"environment": "production"},
            returns=lambda version: {
                "title": f"Release {version}",
                "context": {"metrics": {"accuracy": 0.96}},
                "metadata": {"model_version": version},
            },
        )
        gate._take_content(gate.python_callable("2.1.0"))
        assert gate.title == "Release 2.1.0"
        assert gate.reason == "scheduled"  # not returned: the decorator's stays
        assert gate.context == {"build": 7, "metrics": {"accuracy": 0.96}}
        assert gate.metadata == {"environment": "production", "model_version": "2.1.0"}

    def test_a_title_from_neither_is_named(self) -> None:
        gate = _gate(returns={"reason": "because"})
        with pytest.raises(InvalidApprovalConfig) as err:
            gate._take_content({"reason": "because"})
        assert _fields(err) == ["title"]
        assert "returned by approve() of task 'approve' in DAG 'release'" in str(err.value)

    @pytest.mark.parametrize(
        ("returned", "field"),
        [
            pytest.param({"title": "x" * 501}, "title", id="too-long-title"),
            pytest.param({"title": "ok", "description": "nul\x00"}, "description", id="nul-in-text"),
            pytest.param({"title": "ok", "context": {"when": object()}}, "context", id="not-json"),
        ],
    )
    def test_what_the_operator_refuses_is_refused(self, returned: dict[str, Any], field: str) -> None:
        gate = _gate(returns=returned)
        with pytest.raises(InvalidApprovalConfig) as err:
            gate._take_content(returned)
        assert _fields(err) == [field]

    def test_a_wrong_return_fails_the_task_without_retry_before_any_request(self) -> None:
        gate = _gate(title="Release", retries=3, returns=lambda version: {"title": f"Release {version}", "ticket": 1})
        # The function runs with its TaskFlow arguments; a context key it does not name is not passed.
        with pytest.raises(AirflowFailException) as err:
            gate.execute({"run_id": "manual__1"})  # type: ignore[typeddict-item]
        assert str(err.value).startswith(
            "ApprovalOperator: invalid `ticket` returned by approve() of task 'approve' in DAG 'release': "
        )
        assert gate.title == "Release"  # nothing of a wrong return is taken, and no request was opened

    def test_a_plain_operator_still_needs_its_title(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(task_id="gate", title=None)  # type: ignore[arg-type]
        assert _fields(err) == ["title"]


@pytest.mark.parametrize("decorate", [approval_task, approval_branch_task])
def test_the_functions_are_the_decorators(decorate: Any, tmp_path: Path) -> None:
    # Importable without Airflow's lookup too, for a DAG file that prefers a plain import.
    options: dict[str, Any] = {"title": "t"}
    if decorate is approval_branch_task:
        options["branches"] = {"approve": "ship"}
    with DAG("direct", schedule=None, start_date=START) as dag:

        @decorate(**options)
        def gate() -> dict[str, Any]:
            return {}

        gate()
    assert is_approval_gate(dag.get_task("gate"))

"""``distinct_from`` checked once the DAG is complete: DagBag's import errors name the DAG, the task and the name.

Each DAG file is parsed by Airflow's DagBag in a child process with a temporary ``AIRFLOW_HOME``
(``tests/docs/dagbag_report.py``), as the dag processor would. The forward reference (a gate
naming one declared after it) parsing cleanly is the contract the check relies on: DagBag calls
each task's ``resolve_template_files`` after the whole DAG is built and before keeping it.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator, is_approval_gate
from tests.helpers import parse_in_child

HEADER = """\
import datetime as dt
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator
"""

DAG_FILES = {
    # The named gates come after the gate naming them: only the complete DAG knows them.
    "good.py": """
with DAG("good", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    deploy = ApprovalOperator(task_id="deploy", title="Deploy", distinct_from=["review", "route", "per_region"])
    review = ApprovalOperator(task_id="review", title="Review")
    route = ApprovalBranchOperator(task_id="route", title="Route", branches={"approve": "ship"})
    ship = EmptyOperator(task_id="ship")
    per_region = ApprovalOperator.partial(task_id="per_region", title="Region").expand(
        context=[{"region": "eu"}, {"region": "us"}]
    )
    review >> route >> ship
    review >> deploy
""",
    "unknown.py": """
with DAG("unknown_name", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    ApprovalOperator(task_id="review", title="Review")
    ApprovalOperator(task_id="deploy", title="Deploy", distinct_from=["review", "reveiw"])
""",
    "not_a_gate.py": """
with DAG("not_a_gate", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    EmptyOperator(task_id="build")
    ApprovalBranchOperator(task_id="deploy", title="Deploy", branches={"approve": "build"}, distinct_from="build")
""",
    "itself.py": """
with DAG("itself", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    ApprovalOperator(task_id="deploy", title="Deploy", distinct_from=["deploy"])
""",
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DagBag's view of the DAG files above, parsed in a fresh AIRFLOW_HOME."""
    files = {name: HEADER + text for name, text in DAG_FILES.items()}
    return parse_in_child(tmp_path_factory.mktemp("distinct-from-home"), files)


def error_of(dagbag: dict[str, Any], file: str) -> str:
    return next(text for path, text in dagbag["import_errors"].items() if path.endswith(file))


def test_gates_named_before_or_after_mapped_or_branching_parse(dagbag: dict[str, Any]) -> None:
    assert "good" in dagbag["dags"]
    assert not any(path.endswith("good.py") for path in dagbag["import_errors"])


def test_an_unknown_name_is_the_dags_import_error(dagbag: dict[str, Any]) -> None:
    assert "unknown_name" not in dagbag["dags"]
    error = error_of(dagbag, "unknown.py")
    assert "invalid `distinct_from` of task 'deploy' in DAG 'unknown_name'" in error
    assert "'reveiw' is no task of this DAG" in error
    assert "'review'" not in error.replace("'reveiw'", "")


def test_a_task_that_is_no_gate_is_the_dags_import_error(dagbag: dict[str, Any]) -> None:
    assert "not_a_gate" not in dagbag["dags"]
    error = error_of(dagbag, "not_a_gate.py")
    assert "invalid `distinct_from` of task 'deploy' in DAG 'not_a_gate'" in error
    assert "'build' is a EmptyOperator, not an approval gate" in error


def test_the_gate_itself_is_refused_as_it_is_built(dagbag: dict[str, Any]) -> None:
    error = error_of(dagbag, "itself.py")
    assert "invalid `distinct_from` of task 'deploy' in DAG 'itself'" in error
    assert "names the gate itself ('deploy')" in error


class TestInProcess:
    def test_the_option_reaches_the_spec(self) -> None:
        gate = ApprovalOperator(task_id="deploy", title="t", distinct_from=["review", "review", "audit"])
        assert gate.distinct_from == ["review", "audit"]
        assert tuple(gate._spec(dag_id="d").distinct_from) == ("review", "audit")

    @pytest.mark.parametrize("value", [3, [""], ["ok", None], {"review": 1}])
    def test_a_wrong_value_names_the_field(self, value: Any) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(task_id="deploy", title="t", distinct_from=value)
        assert [field for field, _ in err.value.problems] == ["distinct_from"]

    def test_what_counts_as_a_gate(self) -> None:
        from airflow.providers.standard.operators.empty import EmptyOperator
        from airflow.sdk import DAG

        with DAG("kinds", schedule=None):
            plain = ApprovalOperator(task_id="plain", title="t")
            branch = ApprovalBranchOperator(task_id="branch", title="t", branches={"approve": "plain"})
            mapped = ApprovalOperator.partial(task_id="mapped", title="t").expand(context=[{}])
            empty = EmptyOperator(task_id="empty")
        assert [is_approval_gate(t) for t in (plain, branch, mapped, empty)] == [True, True, True, False]

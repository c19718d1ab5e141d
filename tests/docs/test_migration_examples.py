"""The migration page (docs/migration.md) and its before-and-after DAGs of ``docs/examples/migration/``.

For each of Airflow's four HITL operators there is ``<name>_native.py`` (Airflow's operator) and
``<name>_ours.py`` (airflow-hitl's): both parse with Airflow's DagBag with no import error, the
first uses Airflow's operator and no gate of ours, the second a gate of ours and none of
Airflow's, and both have the same tasks. The page shows every pair, names every parameter the
installed provider's operators take, and every HITL route of Airflow's REST API; each route of
ours it names exists. ``tests/e2e/test_migration_e2e.py`` runs the pairs on a real Airflow.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from tests.docs.test_examples import code_blocks, includes
from tests.helpers import parse_in_child

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "migration.md"
EXAMPLES = REPO / "docs" / "examples" / "migration"
#: Where Airflow's HITL operators live.
NATIVE_MODULE = "airflow.providers.standard.operators.hitl"
#: File prefix -> the operator of Airflow's that the pair migrates.
PAIRS = {
    "approval": "ApprovalOperator",
    "branch": "HITLBranchOperator",
    "entry": "HITLEntryOperator",
    "hitl": "HITLOperator",
}
SIDES = ("native", "ours")
#: Airflow's REST API is mounted here in the api-server; ours at /hitl.
AIRFLOW_API_PREFIX = "/api/v2"
HITL_PREFIX = "/hitl"
#: `METHOD /path` as the page writes a route, in backticks.
_ROUTE = re.compile(r"`(GET|POST|PATCH|PUT|DELETE) (/[^`\s?]*)")


def dag_id(name: str, side: str) -> str:
    """The DAG id of ``<name>_<side>.py``."""
    return f"migrate_{name}_{side}"


def shape(path: str) -> str:
    """A route's path with every ``{parameter}`` unnamed: the page may name them more plainly."""
    return re.sub(r"\{[^}]*\}", "{}", path.rstrip("/"))


def table_rows(text: str) -> list[list[str]]:
    """Every Markdown table row of ``text`` as its cells (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line[:1] == "|"
    ]


def parameter_rows(text: str) -> dict[str, list[str]]:
    """Table rows of ``text`` by the parameter their first cell names first (`` `name` ...``)."""
    rows = {}
    for cells in table_rows(text):
        found = re.match(r"`(\w+)`", cells[0])
        if found:
            rows.setdefault(found.group(1), cells)
    return rows


def native_parameters() -> dict[str, set[str]]:
    """Parameter name -> Airflow's operators (and ``request_input``, where installed) taking it.

    Read from the installed provider, so a parameter a new release adds fails the page's test
    until the page maps it. ``**kwargs`` go to ``BaseOperator``; of those, ``execution_timeout``
    is the one Airflow's HITL operators give a meaning of their own.
    """
    import airflow.providers.standard.operators.hitl as native

    found: dict[str, set[str]] = {"execution_timeout": set(PAIRS.values())}
    callables: dict[str, Any] = {name: getattr(native, name).__init__ for name in PAIRS.values()}
    if hasattr(native, "request_input"):  # provider 1.22 and later
        callables["request_input"] = native.request_input
    for owner, function in callables.items():
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
                found.setdefault(parameter.name, set()).add(owner)
    return found


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DagBag's view of a dags folder holding the eight files, parsed in a fresh AIRFLOW_HOME."""
    files = {path.name: path.read_text() for path in sorted(EXAMPLES.glob("*.py"))}
    return parse_in_child(tmp_path_factory.mktemp("migration-home"), files)


class TestPairs:
    """Each of Airflow's operators has its pair of files, and both parse as described."""

    def test_one_pair_per_native_operator(self) -> None:
        expected = sorted(f"{name}_{side}.py" for name in PAIRS for side in SIDES)
        assert sorted(path.name for path in EXAMPLES.glob("*.py")) == expected

    def test_no_import_errors(self, dagbag: dict[str, Any]) -> None:
        assert dagbag["import_errors"] == {}

    def test_each_file_defines_its_dag(self, dagbag: dict[str, Any]) -> None:
        files = {dag: Path(found["file"]).name for dag, found in dagbag["dags"].items()}
        assert files == {dag_id(name, side): f"{name}_{side}.py" for name in PAIRS for side in SIDES}

    @pytest.mark.parametrize("name", sorted(PAIRS))
    def test_native_uses_airflows_operator_and_ours_a_gate(self, dagbag: dict[str, Any], name: str) -> None:
        native = dagbag["dags"][dag_id(name, "native")]["tasks"].values()
        ours = dagbag["dags"][dag_id(name, "ours")]["tasks"].values()
        assert [task["class"] for task in native if task["class"].startswith(NATIVE_MODULE)] == [
            f"{NATIVE_MODULE}.{PAIRS[name]}"
        ]
        assert not any(task["ours"] for task in native)
        assert len([task for task in ours if task["ours"]]) == 1
        assert not any(task["class"].startswith(NATIVE_MODULE) for task in ours)

    @pytest.mark.parametrize("name", sorted(PAIRS))
    def test_both_files_have_the_same_tasks(self, dagbag: dict[str, Any], name: str) -> None:
        """Same ids and dependencies: a migrated DAG keeps its history, and the e2e test compares runs."""

        def graph(side: str) -> dict[str, list[str]]:
            tasks = dagbag["dags"][dag_id(name, side)]["tasks"]
            return {task_id: task["downstream"] for task_id, task in tasks.items()}

        assert graph("ours") == graph("native")


class TestPage:
    """docs/migration.md shows every pair and maps every parameter and route."""

    def test_shows_every_pair_as_a_block_include(self) -> None:
        shown = [
            inc.target
            for block in code_blocks(PAGE)
            if block.only_includes() and block.language == "python"
            for inc in block.included()
        ]
        expected = [f"docs/examples/migration/{name}_{side}.py" for name in PAIRS for side in SIDES]
        assert sorted(t for t in shown if t.startswith("docs/examples/migration/")) == sorted(expected)
        # Block form only (mkdocs' snippets, as the rest of the site): no one-line includes.
        assert {inc.target for inc in includes(PAGE)} >= set(expected)
        assert '--8<-- "' not in PAGE.read_text()

    def test_names_every_parameter_of_airflows_operators(self) -> None:
        missing = sorted(set(native_parameters()) - set(parameter_rows(PAGE.read_text())))
        assert not missing, f"docs/migration.md maps no row to Airflow's parameters {missing}"

    def test_every_parameter_row_says_what_it_becomes(self) -> None:
        rows = parameter_rows(PAGE.read_text())
        for parameter in native_parameters():
            ours = rows[parameter][2]
            assert ours, parameter
            if "no equivalent" in ours:
                assert "because" in ours, f"{parameter}: 'no equivalent' must say why"

    def test_names_both_approval_operators(self) -> None:
        text = PAGE.read_text()
        assert f"`{NATIVE_MODULE}.ApprovalOperator`" in text
        assert "`airflow_hitl.operators.approval.ApprovalOperator`" in text

    def test_names_every_hitl_route_of_airflow(self) -> None:
        from airflow.api_fastapi.core_api.routes.public.hitl import task_instances_hitl_router

        named = {(method, shape(path)) for method, path in _ROUTE.findall(PAGE.read_text())}
        routes = {
            (method, shape(AIRFLOW_API_PREFIX + route.path))
            for route in task_instances_hitl_router.routes
            for method in getattr(route, "methods", ())
        }
        assert routes, "Airflow's HITL router has no routes: the import names the wrong module"
        assert sorted(routes - named) == []

    def test_every_route_of_ours_it_names_exists(self) -> None:
        from airflow_hitl.api.app import create_app

        paths = create_app().openapi()["paths"]
        served = {(method.upper(), shape(HITL_PREFIX + path)) for path, ops in paths.items() for method in ops}
        named = {
            (method, shape(path)) for method, path in _ROUTE.findall(PAGE.read_text()) if path.startswith(HITL_PREFIX)
        }
        assert len(named) >= 5, named
        assert sorted(named - served) == []

"""Every DAG example of the README and the docs site is a file of ``docs/examples/`` that Airflow parses.

A page shows a DAG only by including one of those files (pymdownx.snippets) or by repeating one
byte for byte (the README, which GitHub shows without the include), so no example can exist
that is not checked here and run by ``tests/e2e/test_docs_examples_e2e.py``. Each file is
parsed with Airflow's DagBag in a fresh ``AIRFLOW_HOME``: an ``ApprovalOperator`` checks every
option when it is built, so a wrong one is an import error here.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import parse_in_child

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"
#: The migration page's before-and-after pairs: parsed by tests/docs/test_migration_examples.py,
#: run by tests/e2e/test_migration_e2e.py.
MIGRATION_EXAMPLES = EXAMPLES / "migration"
README = REPO / "README.md"
#: Repository files the site publishes as pages (docs/gen_pages.py's ROOT_PAGES), besides README.md.
ROOT_PAGES = ("SECURITY.md", "CHANGELOG.md", "CONTRIBUTING.md")
#: Example file -> the DAG id it defines; a new example is added here and in the e2e test's table.
EXAMPLE_DAG_IDS = {
    "bound_release.py": "bound_release",
    "branch_rollout.py": "branch_rollout",
    "migration_after.py": "release_hitl",
    "migration_before.py": "release_native",
    "model_release.py": "release",
    "notified_release.py": "notified_release",
    "rollout_form.py": "rollout_form",
}
#: Examples of Airflow's own HITL operator (the "before" of the migration page): no gate of ours.
NOT_OURS = {"migration_before.py"}

# pymdownx.snippets: `--8<-- "file"` on one line, or a block of file names between two `--8<--`
# lines. A leading `;` escapes either. A name may end in `:section` or `:start:end` lines.
_INLINE_INCLUDE = re.compile(r"""^\s*--8<--\s+(["'])(?P<spec>[^"']+)\1\s*$""")
_BLOCK_MARK = re.compile(r"^\s*--8<--\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_DEFINES_DAG = re.compile(r"\bDAG\(|@dag\b")


def pages() -> list[Path]:
    """Every Markdown file whose code blocks the site or the repository shows."""
    return [README, *sorted((REPO / "docs").glob("*.md")), *(REPO / name for name in ROOT_PAGES)]


def rel(path: Path) -> str:
    """``path`` relative to the repository, as a failure names it."""
    return str(path.relative_to(REPO))


@dataclass(frozen=True)
class Include:
    """One file a page includes: where the include is, the file and the section (if any) it names."""

    page: Path
    line: int
    target: str
    section: str | None

    @property
    def path(self) -> Path:
        """The included file (snippets' base path is the repository root, mkdocs.yml)."""
        return REPO / self.target


def parse_spec(spec: str, *, page: Path, line: int) -> Include:
    """An include's ``file``, ``file:section`` or ``file:start:end`` (line numbers are not a section)."""
    target, _, rest = spec.strip().partition(":")
    section = rest if rest and not re.fullmatch(r"[\d:-]*", rest) else None
    return Include(page=page, line=line, target=target, section=section)


def includes_of(lines: list[str], *, page: Path, first_line: int = 1) -> Iterator[Include]:
    """Every snippet include of ``lines`` (of ``page``, the first being line ``first_line``)."""
    in_block = False
    for number, text in enumerate(lines, start=first_line):
        if _BLOCK_MARK.match(text):
            in_block = not in_block
            continue
        if in_block:
            name = text.strip()
            if name and not name.startswith(";"):
                yield parse_spec(name, page=page, line=number)
            continue
        found = _INLINE_INCLUDE.match(text)
        if found:
            yield parse_spec(found.group("spec"), page=page, line=number)


def includes(page: Path) -> Iterator[Include]:
    """Every snippet include of ``page``, in code blocks or not, with its 1-based line."""
    return includes_of(page.read_text().splitlines(), page=page)


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block of a page: its first line (the fence), language and text as shown."""

    page: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        """``file:line`` of the opening fence."""
        return f"{rel(self.page)}:{self.line}"

    def included(self) -> list[Include]:
        """The files the block includes."""
        return list(includes_of(self.text.splitlines(), page=self.page, first_line=self.line + 1))

    def only_includes(self) -> bool:
        """True when the block holds nothing but includes (no code of its own around them)."""
        in_block = False
        for text in self.text.splitlines():
            if _BLOCK_MARK.match(text):
                in_block = not in_block
            elif text.strip() and not in_block and not _INLINE_INCLUDE.match(text):
                return False
        return True


def code_blocks(page: Path) -> Iterator[CodeBlock]:
    """Every fenced code block of ``page`` (inside tabs and admonitions too), dedented to its fence."""
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        language = (opening.group("info").strip().split() or [""])[0].lstrip("{.").rstrip("}")
        end = index + 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [text[len(indent) :] if text.startswith(indent) else text.lstrip() for text in lines[index + 1 : end]]
        yield CodeBlock(page=page, line=index + 1, language=language, text="\n".join(body) + "\n")
        index = end + 1


def example_files() -> dict[str, str]:
    """``docs/examples`` file name -> its text."""
    return {path.name: path.read_text() for path in sorted(EXAMPLES.glob("*.py"))}


def dag_blocks() -> list[CodeBlock]:
    """Every code block of every page that defines a DAG, written out or included."""
    found = []
    for page in pages():
        for block in code_blocks(page):
            shown = block.text + "".join(inc.path.read_text() for inc in block.included() if inc.path.is_file())
            if _DEFINES_DAG.search(shown):
                found.append(block)
    return found


class TestPagesShowOnlyExamples:
    """No page shows a DAG that is not one of the tested example files."""

    def test_every_dag_block_is_an_example(self) -> None:
        examples = example_files()
        blocks = dag_blocks()
        problems = []
        shown: dict[str, list[str]] = {}
        for block in blocks:
            included = block.included()
            if included:
                for inc in included:
                    if inc.path.parent not in (EXAMPLES, MIGRATION_EXAMPLES) or inc.section is not None:
                        problems.append(f"{block.where}: includes {inc.target}, not a whole file of docs/examples/")
                    shown.setdefault(inc.path.name, []).append(f"{block.where} (include)")
                if not block.only_includes():
                    # Anything besides the include would be untested code shown around the example.
                    problems.append(f"{block.where}: a DAG block holds more than its include of docs/examples/")
                continue
            same = [name for name, text in examples.items() if text == block.text]
            if not same:
                problems.append(
                    f"{block.where}: a DAG that is not a file of docs/examples/ (include one, or copy it exactly)"
                )
            for name in same:
                shown.setdefault(name, []).append(f"{block.where} (copy)")
        # Listed so that a run with -s (or a failure) shows what was checked.
        print("DAG blocks:\n" + "\n".join(f"  {name}: {', '.join(where)}" for name, where in sorted(shown.items())))
        assert not problems, "\n".join(problems)
        # The pages as written today; a new DAG block is fine, one that vanished must be noticed.
        assert len(blocks) >= 7, [block.where for block in blocks]

    def test_every_example_is_shown_on_a_page(self) -> None:
        shown = set()
        for block in dag_blocks():
            shown |= {inc.path.name for inc in block.included()}
            shown |= {name for name, text in example_files().items() if text == block.text}
        assert sorted(set(example_files()) - shown) == []

    def test_readme_gate_example_is_model_release(self) -> None:
        blocks = [block for block in code_blocks(README) if _DEFINES_DAG.search(block.text)]
        assert [block.language for block in blocks] == ["python"], [block.where for block in blocks]
        [block] = blocks
        expected = (EXAMPLES / "model_release.py").read_text()
        assert block.text == expected, f"{block.where} differs from docs/examples/model_release.py"

    def test_finds_every_dag_block(self, tmp_path: Path) -> None:
        """The checks above are only as good as this parser: fences of both kinds, in tabs, any language."""
        dag = 'from airflow.sdk import DAG\n\nwith DAG(dag_id="x"):\n    pass\n'
        page = tmp_path / "page.md"
        page.write_text(
            f"# A page\n\n```python\n{dag}```\n\n"  # lines 3-8
            f'=== "Tab"\n\n    ```py\n{textwrap.indent(dag, "    ")}    ```\n\n'  # lines 10-17
            "~~~~\nfrom airflow.sdk import dag\n\n@dag\ndef x(): ...\n~~~~\n\n"  # lines 19-24
            "```bash\nairflow dags trigger x\n```\n"
        )
        blocks = [b for b in code_blocks(page) if _DEFINES_DAG.search(b.text)]
        assert [(b.line, b.language) for b in blocks] == [(3, "python"), (12, "py"), (19, "")]
        assert [b.text == dag for b in blocks] == [True, True, False]

    def test_a_block_with_code_around_an_include_is_not_an_include(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text("```python\n--8<--\ndocs/examples/model_release.py\n--8<--\n```\n\n")
        page.write_text(page.read_text() + '```python\n--8<-- "docs/examples/model_release.py"\ngate.doc = "x"\n```\n')
        first, second = code_blocks(page)
        assert (first.only_includes(), second.only_includes()) == (True, False)
        assert [i.target for i in first.included() + second.included()] == ["docs/examples/model_release.py"] * 2


class TestIncludes:
    """Every include names a file (and section) that exists; mkdocs --strict would fail later."""

    def test_every_include_names_an_existing_file(self) -> None:
        found = [inc for page in pages() for inc in includes(page)]
        missing = [
            f"{rel(inc.page)}:{inc.line}: {inc.target} does not exist" for inc in found if not inc.path.is_file()
        ]
        assert not missing, "\n".join(missing)
        targets = {inc.target for inc in found}
        assert {f"docs/examples/{name}" for name in EXAMPLE_DAG_IDS} <= targets

    def test_every_included_section_exists(self) -> None:
        problems = []
        for page in pages():
            for inc in includes(page):
                if inc.section is None or not inc.path.is_file():
                    continue
                text = inc.path.read_text()
                for edge in ("start", "end"):
                    if f"--8<-- [{edge}:{inc.section}]" not in text:
                        problems.append(f"{rel(inc.page)}:{inc.line}: {inc.target} has no [{edge}:{inc.section}]")
        assert not problems, "\n".join(problems)

    def test_parses_both_include_forms(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text(
            '--8<-- "README.md:why"\n;--8<-- "escaped.md"\n```python\n--8<--\ndocs/examples/a.py\n\n'
            ";docs/examples/b.py\ndocs/examples/c.py:3:9\n--8<--\n```\n"
        )
        assert [(i.line, i.target, i.section) for i in includes(page)] == [
            (1, "README.md", "why"),
            (5, "docs/examples/a.py", None),
            (8, "docs/examples/c.py", None),
        ]


# --------------------------------------------------------------------------- parsing with Airflow


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DagBag's view of a dags folder holding every example, parsed in a fresh AIRFLOW_HOME."""
    return parse_in_child(tmp_path_factory.mktemp("examples-home"), example_files())


class TestExamplesParse:
    """Each example parses in Airflow as copied, its gates' options valid."""

    def test_the_table_lists_every_example(self) -> None:
        assert sorted(example_files()) == sorted(EXAMPLE_DAG_IDS)

    def test_no_import_errors(self, dagbag: dict[str, Any]) -> None:
        assert dagbag["import_errors"] == {}

    def test_each_file_defines_its_dag(self, dagbag: dict[str, Any]) -> None:
        files = {dag_id: Path(dag["file"]).name for dag_id, dag in dagbag["dags"].items()}
        assert files == {dag_id: name for name, dag_id in EXAMPLE_DAG_IDS.items()}

    def test_each_example_of_ours_has_a_gate(self, dagbag: dict[str, Any]) -> None:
        for name, dag_id in EXAMPLE_DAG_IDS.items():
            gates = [task for task in dagbag["dags"][dag_id]["tasks"].values() if task["ours"]]
            assert bool(gates) is (name not in NOT_OURS), name

    def test_context_from_names_upstream_tasks(self, dagbag: dict[str, Any]) -> None:
        """A gate reads another task's XCom only when that task exists and runs before it."""
        for dag_id, dag in dagbag["dags"].items():
            for task_id, task in dag["tasks"].items():
                for name, source in task.get("context_from", {}).items():
                    assert source in task["all_upstream"], f"{dag_id}.{task_id}: context_from[{name!r}] = {source!r}"

    def test_templates_read_only_params_the_dag_defines(self, dagbag: dict[str, Any]) -> None:
        """``{{ params.x }}`` in a gate's text fails when it renders unless the DAG declares ``x``."""
        for dag_id, dag in dagbag["dags"].items():
            for task_id, task in dag["tasks"].items():
                for field, text in task.get("templated", {}).items():
                    for name in re.findall(r"params(?:\.(\w+)|\[[\"'](\w+)[\"']\])", text):
                        used = name[0] or name[1]
                        assert used in dag["params"], f"{dag_id}.{task_id}.{field} reads params.{used}"

    def test_branches_are_direct_downstream_tasks(self, dagbag: dict[str, Any]) -> None:
        branch_gates = 0
        for dag_id, dag in dagbag["dags"].items():
            for task_id, task in dag["tasks"].items():
                for outcome, ids in task.get("branches", {}).items():
                    branch_gates += 1
                    assert set(ids) <= set(task["downstream"]), f"{dag_id}.{task_id}: branches[{outcome!r}]"
        assert branch_gates == 2  # branch_rollout's approve and reject

"""The package's layers: an import only ever points down, there are no import circles, and no
module uses another module's private names. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "airflow_hitl"

#: Bottom up. A module may import from its own layer or any layer below it, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vocabulary", "exceptions", "settings", "version_compat", "limits", "metrics", "canonical", "seam", "retry"),
    ("models", "policy", "migrations", "forms"),
    ("records", "spec", "audit"),
    (
        "transaction",
        "notices",
        "queries",
        "analytics",
        "delegation",
        "standing",
        "sla",
        "manager",
        "outbox",
        "gate_ends",
    ),
    ("identity", "notifications", "triggers", "cli", "evidence"),
    ("api", "operators", "ui"),
    ("plugins", "get_provider_info"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations/versions" not in p.as_posix()}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # airflow_hitl/__init__.py: the version, nothing else
        return 0
    top = parts[1]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add airflow_hitl.{top} to LAYERS in {__file__}")


def _imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import of ``airflow_hitl`` in a file."""
    found: list[tuple[int, str, list[str]]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("airflow_hitl")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("airflow_hitl"):
                found.append((node.lineno, target, [a.name for a in node.names]))
    return found


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import statement loads: ``from pkg import mod`` names the submodule."""
    resolved = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return resolved or [target]


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_only_point_down():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        for line, target, names in _imports(path, module):
            for imported in _resolve(target, names, modules):
                if _layer(imported) > _layer(module):
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported} (a layer above)")
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for _line, target, names in _imports(path, module):
            for imported in _resolve(target, names, modules):
                if imported in modules and imported != module and not module.startswith(f"{imported}."):
                    graph[module].add(imported)
    # A package __init__ re-exporting its children is not a circle of concepts.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(modules):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    modules = _modules()
    used = []
    for module, path in modules.items():
        for line, target, names in _imports(path, module):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    used.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
    assert not used, "\n".join(used)


@pytest.mark.parametrize("module", sorted(_modules()), ids=str)
def test_module_size(module):
    # A module that grows past this is two concepts: split it by what each is.
    lines = _modules()[module].read_text().count("\n")
    assert lines <= 700, f"{module} has {lines} lines"


def test_the_seam_imports_nothing_of_ours():
    # The seam wraps Airflow's internals in our own names and types; it stays below everything
    # (layer 0) by depending on nothing else of the package.
    modules = _modules()
    inward = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in modules.items()
        if module.startswith("airflow_hitl.seam")
        for line, target, _names in _imports(path, module)
        if not target.startswith("airflow_hitl.seam")
    ]
    assert not inward, "\n".join(inward)

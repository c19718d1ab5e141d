"""Build-time parts of the docs site, generated from the code so that they cannot drift from it.

Run by ``mkdocs-gen-files`` (``mkdocs.yml``) on every ``mkdocs build``. Each page that carries a
``<!-- hitl:NAME -->`` marker gets the generated part in its place:

* ``writing-gates.md``: every option of ``ApprovalOperator`` and ``ApprovalBranchOperator``, from
  their signatures and ``:param`` docstrings;
* ``configuration.md``: every ``[hitl]`` option, from ``airflow_hitl.settings.OPTIONS``;
* ``cli.md``: every command's usage, from the parser the ``airflow-hitl`` script builds;
* ``rest-api.md``: every operation and schema of the OpenAPI document the app serves, which is
  also published as ``openapi.json``.

``security.md``, ``changelog.md`` and ``contributing.md`` are the repository's own files with
their links pointed at the site's pages. A missing marker or a link left pointing outside the
site fails the build (``mkdocs build --strict``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
#: Where the app is mounted in Airflow's api-server: its OpenAPI paths are relative to it.
HITL_PREFIX = "/hitl"
#: Repository files that are pages of the site, and where a link to them points there.
ROOT_PAGES = {"SECURITY.md": "security.md", "CHANGELOG.md": "changelog.md", "CONTRIBUTING.md": "contributing.md"}


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


# --- operator options -------------------------------------------------------------------------


def param_docs(doc: str) -> dict[str, str]:
    """``:param name: text`` entries of a Sphinx-style docstring, continuation lines joined."""
    found: dict[str, str] = {}
    for match in re.finditer(
        r"^\s*:param (\w+):(.*?)(?=^\s*:(?:param|type|returns?|raises)\b|\Z)", doc, flags=re.S | re.M
    ):
        found[match.group(1)] = " ".join(match.group(2).split())
    return found


def rst_to_md(text: str) -> str:
    """The docstring markup these texts use, in Markdown: ``literal`` and :class:`~a.b.Name`."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def operator_options_table() -> str:
    """One row per constructor option of the gate operators, with its default and meaning."""
    from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator

    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for operator in (ApprovalOperator, ApprovalBranchOperator):
        docs = param_docs(inspect.getdoc(operator) or "")
        parameters = inspect.signature(operator.__init__).parameters.values()
        for parameter in parameters:
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if operator is ApprovalBranchOperator and parameter.name in param_docs(ApprovalOperator.__doc__ or ""):
                continue  # inherited, already listed
            if parameter.name not in docs:
                raise ValueError(f"{operator.__name__}: option {parameter.name!r} has no :param: in the docstring")
            default = "required" if parameter.default is inspect.Parameter.empty else f"`{parameter.default!r}`"
            meaning = rst_to_md(docs[parameter.name])
            if operator is ApprovalBranchOperator:
                meaning = f"`ApprovalBranchOperator` only. {meaning}"
            rows.append(f"| `{parameter.name}` | {default} | {cell(meaning)} |")
    return "\n".join(rows)


# --- [hitl] options ---------------------------------------------------------------------------


def config_options_table() -> str:
    """One row per ``[hitl]`` option: name, type, default, meaning (secrets marked)."""
    from airflow_hitl.settings import OPTIONS

    rows = ["| option | type | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = f"`{option.default}`" if option.default else "empty"
        meaning = option.description
        if option.sensitive:
            meaning = f"**Secret** (also read from `AIRFLOW__HITL__{option.name.upper()}_CMD` or `_SECRET`). {meaning}"
        if option.example:
            meaning = f"{meaning} Example: `{option.example}`."
        rows.append(f"| `{option.name}` | {option.type} | {default} | {cell(meaning)} |")
    return "\n".join(rows)


# --- command line -----------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Every ``airflow hitl`` command with the usage its own ``--help`` prints."""
    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal width
    from airflow_hitl.cli.__main__ import build_parser

    parts: list[str] = []
    for group, group_parser in _subparsers(build_parser()).items():
        for command, command_parser in _subparsers(group_parser).items():
            help_text = command_parser.format_help().replace("airflow-hitl ", "airflow hitl ", 1)
            parts += [f"### `airflow hitl {group} {command}`", "", "```text", help_text.rstrip(), "```", ""]
    return "\n".join(parts)


# --- REST API ---------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the ``/hitl`` app serves at ``/hitl/openapi.json``."""
    from airflow_hitl.api.app import create_app

    return create_app().openapi()


def schema_type(schema: dict[str, Any]) -> str:
    """A short Markdown rendering of a JSON Schema's type, linking named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if "anyOf" in schema:
        kinds = [schema_type(s) for s in schema["anyOf"]]
        return " or ".join(dict.fromkeys(kinds))
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {schema_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {schema_type(schema['additionalProperties'])}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), HITL_PREFIX + path, operation


def rest_reference(document: dict[str, Any]) -> str:
    """Every operation (parameters, body, answers) and every schema of ``document``."""
    out: list[str] = [f"Generated from the app's OpenAPI {document['openapi']} document "]
    out[-1] += "([openapi.json](openapi.json), served live at `/hitl/openapi.json`)."
    out.append("")
    for method, path, operation in _operations(document):
        out += [f"### {method} `{path}`", "", f"**{operation.get('summary', '')}**", ""]
        if operation.get("description"):
            out += [rst_to_md(operation["description"]), ""]
        parameters = operation.get("parameters", [])
        if parameters:
            out += ["| parameter | in | type | required | meaning |", "| --- | --- | --- | --- | --- |"]
            for p in parameters:
                required = "yes" if p.get("required") else "no"
                meaning = cell(rst_to_md(p.get("description", "") or p.get("schema", {}).get("description", "")))
                out.append(
                    f"| `{p['name']}` | {p['in']} | {schema_type(p.get('schema', {}))} | {required} | {meaning} |"
                )
            out.append("")
        body = operation.get("requestBody", {}).get("content", {})
        for media, content in body.items():
            out += [f"Body (`{media}`): {schema_type(content.get('schema', {}))}", ""]
        out += ["| status | meaning | body |", "| --- | --- | --- |"]
        for status, answer in sorted(operation.get("responses", {}).items()):
            schemas = [schema_type(c.get("schema", {})) for c in answer.get("content", {}).values() if c.get("schema")]
            out.append(f"| {status} | {cell(answer.get('description', ''))} | {', '.join(schemas) or '-'} |")
        out.append("")
    out += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        out += [f"### {name} {{#schema-{name.lower()}}}", ""]
        if schema.get("description"):
            out += [cell(rst_to_md(schema["description"])), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            out += ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
            for field, spec in properties.items():
                meaning = cell(rst_to_md(spec.get("description", "")))
                flag = "yes" if field in required else "no"
                out.append(f"| `{field}` | {schema_type(spec)} | {flag} | {meaning} |")
            out.append("")
    return "\n".join(out)


# --- pages ------------------------------------------------------------------------------------


def fill(page: str, parts: dict[str, Callable[[], str]]) -> str:
    """The text of ``docs/<page>`` with each ``<!-- hitl:NAME -->`` marker replaced by its part."""
    text = (DOCS / page).read_text()
    for name, make in parts.items():
        marker = f"<!-- hitl:{name} -->"
        if marker not in text:
            raise ValueError(f"docs/{page} has no {marker}")
        text = text.replace(marker, make())
    return text


def root_page(name: str) -> str:
    """A repository file as a page: its links to other repository files pointed at their pages."""
    text = (REPO / name).read_text()
    for source, page in ROOT_PAGES.items():
        text = text.replace(f"]({source}", f"]({page}")
    return re.sub(r"\]\(docs/([\w./-]+\.md)", r"](\1", text)


def configuration_page() -> str:
    """``configuration.md`` as the site shows it (tests read the option table from here)."""
    return fill("configuration.md", {"config-options": config_options_table})


def pages() -> dict[str, str]:
    """Every generated page or file of the site, by its path in the site's sources."""
    document = openapi_document()
    generated = {
        "writing-gates.md": fill("writing-gates.md", {"operator-options": operator_options_table}),
        "configuration.md": configuration_page(),
        "cli.md": fill("cli.md", {"cli-reference": cli_reference}),
        "rest-api.md": fill("rest-api.md", {"openapi": lambda: rest_reference(document)}),
        "openapi.json": json.dumps(document, indent=2) + "\n",
    }
    for source, page in ROOT_PAGES.items():
        generated[page] = root_page(source)
    return generated


def main() -> None:
    """Write the generated pages into the build (mkdocs-gen-files' virtual docs folder)."""
    import mkdocs_gen_files

    for path, text in pages().items():
        with mkdocs_gen_files.open(path, "w") as handle:
            handle.write(text)


if __name__ in {"__main__", "<run_path>"}:
    main()

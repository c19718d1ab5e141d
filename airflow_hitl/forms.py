"""Form inputs of a gate: what approvers fill in with their decision, as JSON Schema.

A DAG author describes each input with Airflow's ``Param`` (``Param(10, type="integer",
minimum=1, maximum=100)``); the request keeps each one's dump (``value``, ``schema``,
``description``, and whether it is ``required``) so every process can validate a decision's
values without importing the DAG. Values are checked with ``jsonschema``, as ``Param`` does.

An input is *required* when it has no default, or its default is ``None`` and the schema does
not accept null. On approve, a required input must be given; the others take their default
when left out. On reject, inputs are never required: the ones given are validated and kept
with the vote (a rejecting approver may still record, say, the ticket that explains why), and
defaults are not filled in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.policy import ConfigProblems

#: Longest input name; names are Python identifiers so they work as form fields and template keys.
MAX_NAME_LENGTH = 100

_UNSET = object()


def _schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or None."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        return "schema must be a dict (JSON Schema)"
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as err:
        return f"schema must be JSON-serialisable: {err}"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        return f"schema is not valid JSON Schema: {err.message}"
    return None


def value_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (one line), or None when it does."""
    from jsonschema import FormatChecker
    from jsonschema.exceptions import ValidationError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema)(schema, format_checker=FormatChecker()).validate(value)
    except ValidationError as err:
        return err.message
    return None


def accepts_null(schema: Mapping[str, Any]) -> bool:
    """True when ``None`` satisfies ``schema``."""
    return value_problem(None, schema) is None


def _one_input(name: str, spec: Any) -> dict[str, Any]:
    """The stored form of one input: a ``Param``, an already-dumped form, or a plain default."""
    field = f"inputs[{name!r}]"
    if not isinstance(name, str) or not name.isidentifier() or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"inputs[{name!r}]", f"input names must be Python identifiers of at most {MAX_NAME_LENGTH} characters"
        )
    default: Any = _UNSET
    if hasattr(spec, "schema") and hasattr(spec, "dump") and hasattr(spec, "resolve"):
        # Airflow's Param (SDK or core). Its ``has_value`` is False for a None default too, so
        # tell "no default" (Airflow's NOTSET sentinel) from None by the sentinel's type.
        schema = dict(spec.schema or {})
        description = spec.description
        if type(spec.value).__name__ != "ArgNotSet":
            default = spec.value
    elif isinstance(spec, Mapping) and "schema" in spec:
        # The stored form (from a request read back, or the REST API).
        schema = spec["schema"]
        description = spec.get("description")
        # A required input's stored ``value`` is a placeholder None, not a default.
        if "value" in spec and not (spec.get("required") and spec["value"] is None):
            default = spec["value"]
    else:
        # A plain value: a Param with that default and an empty (accept anything) schema.
        schema, description, default = {}, None, spec
    problem = _schema_problem(schema)
    if problem:
        raise InvalidInput(field, problem)
    if description is not None and not isinstance(description, str):
        raise InvalidInput(field, "description must be a string")
    if default is not _UNSET:
        try:
            json.dumps(default)
        except (TypeError, ValueError) as err:
            raise InvalidInput(field, f"default must be JSON-serialisable: {err}") from None
    if default is not _UNSET and default is not None:
        problem = value_problem(default, schema)
        if problem:
            raise InvalidInput(field, f"default {default!r} does not satisfy the schema: {problem}")
    required = default is _UNSET or (default is None and not accepts_null(schema))
    return {
        "value": None if default is _UNSET else default,
        "schema": dict(schema),
        "description": description,
        "required": required,
    }


def parse_inputs(value: Any) -> dict[str, dict[str, Any]]:
    """Every input of a gate in its stored form; one :class:`InvalidInput` names every bad one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("inputs", "must be a dict of input name -> Param")
    problems = ConfigProblems()
    parsed: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        form = problems.parse(_one_input, name, spec, default=None)
        if form is not None:
            parsed[name] = form
    problems.raise_if_any(InvalidInput)
    return parsed


def required_names(form: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The inputs an approval must give."""
    return [name for name, spec in form.items() if spec.get("required")]


def resolve_inputs(
    form: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any] | None, *, approving: bool
) -> dict[str, Any]:
    """The values a vote records: ``given`` checked against ``form``, defaults filled when approving.

    Raises :class:`InvalidInput` naming every bad field (``inputs.<name>``): an unknown name, a
    value the schema refuses, or (approving only) a required input left out.
    """
    given = dict(given or {})
    problems = ConfigProblems()
    for name in given:
        if name not in form:
            known = ", ".join(sorted(form)) or "none"
            problems.add(f"inputs.{name}", f"is not an input of this request (inputs: {known})")
    values: dict[str, Any] = {}
    for name, spec in form.items():
        if name in given:
            value = given[name]
            problem = value_problem(value, spec.get("schema") or {})
            if problem:
                problems.add(f"inputs.{name}", problem)
                continue
            values[name] = value
        elif approving:
            if spec.get("required"):
                problems.add(f"inputs.{name}", "is required")
            else:
                values[name] = spec.get("value")
    problems.raise_if_any(InvalidInput)
    return values

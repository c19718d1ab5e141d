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

The values come from approvers and, for a request opened over the REST API, the form itself
from an API client, so a schema may run nothing that one crafted value can make slow: its
regular expressions (``pattern``, ``format: regex``) run on RE2, which matches in linear time,
instead of Python's backtracking engine (where ``^(a+)+$`` takes 0.4 s on 24 characters and
twice as long for each one more: half a minute at 30), and ``patternProperties``, which
jsonschema matches with Python's engine in several keywords, is refused. A ``$ref`` must point
inside the schema: nothing is fetched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.limits import json_problem
from airflow_hitl.policy import ConfigProblems

#: Longest input name; names are Python identifiers so they work as form fields and template keys.
MAX_NAME_LENGTH = 100
#: Keywords a form's schema may not use (see the module docstring).
REFUSED_KEYWORDS = ("patternProperties",)

_UNSET = object()
_REF_KEYWORDS = ("$ref", "$dynamicRef")
#: Why a schema whose references loop without end cannot check a value.
ENDLESS = "schema refers to itself without end"
# One value of each JSON type, to find reference loops that any value would run into.
_PROBES: tuple[Any, ...] = (None, True, 0, 0.5, "", [], {})


@functools.cache
def _re2_options() -> Any:
    import re2

    options = re2.Options()
    # A refused pattern is reported to whoever wrote it; RE2 would also log it to stderr.
    options.log_errors = False
    return options


# A pattern near RE2's memory budget (8 MiB) compiles to a few MiB: few are kept.
@functools.lru_cache(maxsize=32)
def _compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (cached: a form's few patterns run on every decision)."""
    import re2

    return re2.compile(pattern, _re2_options())


def _pattern_problem(pattern: str) -> str | None:
    """Why RE2 cannot run ``pattern``, or None."""
    import re2

    try:
        _compiled(pattern)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        return f"pattern {pattern!r} is not supported ({reason}); lookarounds and backreferences are not"
    return None


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    """jsonschema's ``pattern`` keyword, matched by RE2."""
    import re2
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    try:
        matched = _compiled(pattern).search(instance) is not None
    except UnicodeEncodeError:
        yield ValidationError(f"{instance!r} is not valid text")
        return
    except re2.error:
        # Refused when the form is parsed; a form stored before that check answers 422.
        yield ValidationError(f"{_pattern_problem(pattern)}")
        return
    if not matched:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _validator_class(base: type) -> Any:
    from jsonschema import validators

    return validators.extend(base, {"pattern": _re2_pattern})


@functools.cache
def _format_checker() -> Any:
    """jsonschema's format checks, with ``regex`` checked by RE2 (which also runs the values)."""
    import re2
    from jsonschema import FormatChecker

    checker = FormatChecker()

    @checker.checks("regex", raises=re2.error)
    def _is_regex(value: object) -> bool:
        return not isinstance(value, str) or _compiled(value) is not None

    return checker


def _subschemas(schema: Any) -> Iterator[Mapping[str, Any]]:
    """``schema`` and every object nested in it (a keyword's name is only ever a key)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _unsafe_problem(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` may not be a form's, though it is valid JSON Schema, or None."""
    from referencing import Registry, Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = "urn:airflow-hitl:form"
    resolver = None
    for node in _subschemas(schema):
        for keyword in REFUSED_KEYWORDS:
            if keyword in node:
                return f"schema may not use {keyword!r} (its expressions would not run on RE2)"
        pattern = node.get("pattern")
        if isinstance(pattern, str) and (problem := _pattern_problem(pattern)):
            return problem
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            if not ref.startswith("#"):
                return f"{keyword} {ref!r} must point inside the schema ('#...'): nothing is fetched"
            if resolver is None:
                resource = Resource.from_contents(dict(schema), default_specification=DRAFT202012)
                resolver = Registry().with_resource(root, resource).resolver(base_uri=root)
            try:
                resolver.lookup(ref)
            except Unresolvable:
                return f"{keyword} {ref!r} points at nothing in the schema"
    if resolver is not None and any(value_problem(probe, schema) == ENDLESS for probe in _PROBES):
        # A loop that does not walk down the value never ends, whatever the value; one that
        # does ends with it (a value's depth is bounded), and one only some values reach is
        # a 422 when they come.
        return ENDLESS
    return None


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
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        # jsonschema would take it for a URI and fail deep in urllib.
        return "schema's $schema must be a string (a JSON Schema dialect's URI)"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        return f"schema is not valid JSON Schema: {err.message}"
    return _unsafe_problem(schema)


def value_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (one line), or None when it does."""
    from jsonschema.exceptions import ValidationError
    from jsonschema.validators import validator_for
    from referencing.exceptions import Unresolvable

    try:
        _validator_class(validator_for(schema))(schema, format_checker=_format_checker()).validate(value)
    except ValidationError as err:
        return err.message
    except Unresolvable as err:
        # Refused when the form is parsed; a form stored before that check still answers 422.
        return f"the input's schema cannot be used: {err}"
    except RecursionError:
        # {"$ref": "#"} applies itself for ever, whatever the value.
        return ENDLESS
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
    said_required: Any = None  # what a stored form says of itself, checked against its default
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
        said_required = spec.get("required")
        if said_required and spec.get("value") is not None:
            raise InvalidInput(field, "a required input has no default: leave out `value` or set `required` to false")
        # A required input's stored ``value`` is a placeholder None, not a default; an optional
        # one without a ``value`` defaults to None.
        if not said_required and ("value" in spec or said_required is False):
            default = spec.get("value")
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
    if said_required is False and required:
        raise InvalidInput(
            field, "an optional input needs a `value` (its default) when its schema does not accept null"
        )
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
            # The REST API refuses these in its bodies; an emailed link's form, a Slack modal
            # and the CLI read values as JSON, where NaN and NUL parse but cannot be stored.
            problem = json_problem(value) or value_problem(value, spec.get("schema") or {})
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

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
inside the schema: nothing is fetched. Only the root may name a dialect (``$schema``): a
subschema that names one would be checked by jsonschema's own classes, without RE2.

Nor may a schema and a value together cost more than a bounded amount of work: every check
of a form (its schemas, their defaults) and of a decision's values spends from one budget of
:data:`MAX_CHECK_STEPS` steps, a step being one keyword applied to one value, or one of the
comparisons ``uniqueItems`` and ``enum`` make (``uniqueItems`` over objects compares every
pair: 4,000 of them took 27 s). What would cost more is refused as too costly to check,
naming the input, before the work is done where it can be counted in advance. Structural,
never a timer: the same form and values are refused or accepted on any machine, at any load.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.limits import json_problem
from airflow_hitl.policy import ConfigProblems

#: Longest input name; names are Python identifiers so they work as form fields and template keys.
MAX_NAME_LENGTH = 100
#: Keywords a form's schema may not use (see the module docstring).
REFUSED_KEYWORDS = ("patternProperties",)
#: The work one form, or one decision's values, may cost to check (see the module docstring).
#: A step costs about 2 µs: the whole budget is well under a second of CPU.
MAX_CHECK_STEPS = 200_000
#: Longest message of a refused value or schema (jsonschema's quote the whole value).
MAX_MESSAGE_LENGTH = 500

_UNSET = object()
_REF_KEYWORDS = ("$ref", "$dynamicRef")
#: Why a schema whose references loop without end cannot check a value.
ENDLESS = "schema refers to itself without end"
#: Why a value (or a schema) is refused without being checked to the end.
TOO_COSTLY = f"is too costly to check against its schema (more than {MAX_CHECK_STEPS} steps)"
# One value of each JSON type, to find reference loops that any value would run into.
_PROBES: tuple[Any, ...] = (None, True, 0, 0.5, "", [], {})


class _TooCostly(Exception):
    """The check at hand would spend more than what is left of its budget; ``why`` may say what."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


class _Budget:
    """What is left of one check's :data:`MAX_CHECK_STEPS`, and the sizes of the values seen so far."""

    __slots__ = ("left", "sizes")

    def __init__(self, steps: int) -> None:
        self.left = steps
        # By id: the values checked are held by the caller for as long as the budget lives.
        self.sizes: dict[int, int] = {}


_BUDGET: ContextVar[_Budget | None] = ContextVar("hitl_form_budget", default=None)


@contextmanager
def check_budget() -> Iterator[None]:
    """One budget of :data:`MAX_CHECK_STEPS` for every check inside (a whole form, a decision's values).

    Nested, the outer budget goes on: a form and its defaults share one.
    """
    if _BUDGET.get() is not None:
        yield
        return
    token = _BUDGET.set(_Budget(MAX_CHECK_STEPS))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _spend(steps: int, why: str = "") -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.left -= steps
    if budget.left < 0:
        raise _TooCostly(why)


def _spent() -> bool:
    """True once the current budget is exhausted."""
    budget = _BUDGET.get()
    return budget is not None and budget.left < 0


def _nodes(value: Any) -> int:
    """How many values ``value`` holds, itself included (a scalar is 1)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def uniqueness_cost(items: list[Any]) -> int:
    """The comparisons jsonschema makes to tell ``items`` are unique (``uniqueItems``).

    Strings, or numbers, it sorts. Anything else (objects, arrays, booleans, null, a mix) it
    compares pair by pair, each comparison walking the two values.
    """
    n = len(items)
    if all(isinstance(i, str) for i in items) or all(
        isinstance(i, (int, float)) and not isinstance(i, bool) for i in items
    ):
        return n + 1
    per_item = max(1, sum(_nodes(i) for i in items) // max(n, 1))
    return 1 + n * (n - 1) // 2 * per_item


#: Keywords that walk every member of the value they apply to (and of their own value).
_PER_MEMBER = frozenset(
    {
        "items",
        "prefixItems",
        "additionalItems",
        "contains",
        "properties",
        "additionalProperties",
        "propertyNames",
        "dependencies",
        "dependentSchemas",
        "dependentRequired",
        "required",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)


#: Keywords that apply each of their subschemas (a list) to the value, or their one subschema.
_PER_SUBSCHEMA = frozenset({"allOf", "anyOf", "oneOf"})
_ONE_SUBSCHEMA = frozenset({"not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef"})
#: What applying a subschema costs besides its own keywords (jsonschema builds a validator for it).
_DESCEND = 4


def _cost(keyword: str, value: Any, instance: Any) -> tuple[int, str]:
    """Steps applying ``keyword`` (set to ``value``) to ``instance`` costs, and what to say if too many."""
    if keyword == "uniqueItems" and value is True and isinstance(instance, list):
        return uniqueness_cost(instance), f"uniqueItems compares every pair of its {len(instance)} items"
    if keyword in ("enum", "const"):
        members = len(value) if keyword == "enum" and isinstance(value, list) else 1
        size = _nodes(instance) if isinstance(instance, (dict, list)) else 1
        return members * size, f"{keyword} compares it with each of its {members} values of up to {size} parts"
    if keyword in _PER_MEMBER:
        own = len(value) if isinstance(value, (dict, list)) else 0
        return 1 + own + _DESCEND * (len(instance) if isinstance(instance, (dict, list)) else 0), ""
    if keyword in _PER_SUBSCHEMA:
        return 1 + _DESCEND * (len(value) if isinstance(value, list) else 1), ""
    if keyword in _ONE_SUBSCHEMA:
        return 1 + _DESCEND, ""
    return 1, ""


#: Values of a container that cost one more step to every keyword applied to it: a refusal quotes
#: the whole value (jsonschema's messages are built as it is refused, anyOf builds one per branch).
_NODES_PER_STEP = 16


def _quoting_cost(instance: Any) -> int:
    """Steps a keyword's message quoting ``instance`` may cost, besides the keyword's own."""
    if isinstance(instance, str):
        return len(instance) // (_NODES_PER_STEP * 256)
    if not isinstance(instance, (dict, list)):
        return 0
    budget = _BUDGET.get()
    if budget is None:
        return _nodes(instance) // _NODES_PER_STEP
    size = budget.sizes.get(id(instance))
    if size is None:
        size = budget.sizes[id(instance)] = _nodes(instance)
    return size // _NODES_PER_STEP


def _metered(keyword: str, check: Any) -> Any:
    """jsonschema's ``keyword``, spending its cost from the current budget before it runs."""

    def run(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
        steps, why = _cost(keyword, value, instance)
        _spend(steps + _quoting_cost(instance), why)
        return check(validator, value, instance, schema)

    return run


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
    """``base`` with every keyword metered (:func:`_metered`) and ``pattern`` on RE2."""
    from jsonschema import validators

    keywords = {keyword: _metered(keyword, check) for keyword, check in base.VALIDATORS.items()}  # type: ignore[attr-defined]
    keywords["pattern"] = _metered("pattern", _re2_pattern)
    return validators.extend(base, keywords)


def _without_dialects(node: Any) -> Any:
    """``node`` with no ``$schema`` naming a dialect anywhere (json's own hook: no recursion of ours)."""

    def hook(pairs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pairs.items() if not (k == "$schema" and isinstance(v, str))}

    return json.loads(json.dumps(node), object_hook=hook)


@functools.lru_cache(maxsize=64)
def _validator_of(schema_text: str) -> Any:
    """The validator of a schema (as canonical JSON text): its dialect's class, metered and on RE2.

    jsonschema picks a class again for every subschema that names a dialect (``$schema``),
    ``$ref: "#"`` to the root included, and that class would be its own, with Python's
    regular expressions and no budget: the schema it checks names none but at the root.
    """
    from jsonschema.validators import validator_for

    schema = json.loads(schema_text)
    return _validator_class(validator_for(schema))(_without_dialects(schema), format_checker=_format_checker())


def _clip(message: str) -> str:
    # The middle goes: jsonschema quotes the value first and says what is wrong with it last.
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    half = MAX_MESSAGE_LENGTH // 2
    return f"{message[:half]} … {message[-half:]}"


@functools.cache
def _format_checker() -> Any:
    """jsonschema's format checks, with ``regex`` checked by RE2 (which also runs the values)."""
    import re2
    from jsonschema import FormatChecker

    checker = FormatChecker()

    def _is_regex(value: object) -> bool:
        return not isinstance(value, str) or _compiled(value) is not None

    # Registered by a call rather than as a decorator: jsonschema's decorator is untyped.
    checker.checks("regex", raises=re2.error)(_is_regex)
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


def _costly_schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why checking ``schema`` itself would cost too much (its lists' uniqueness), or None; spends it.

    Airflow's and jsonschema's check of a schema compare the members of ``enum`` (draft 4),
    ``type`` and ``required`` pair by pair when they are not all strings or numbers: priced
    for every list of the schema before it is checked, together.
    """
    total = 0
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, key = stack.pop()
        if isinstance(node, dict):
            stack.extend((child, name) for name, child in node.items())
        elif isinstance(node, list):
            cost = uniqueness_cost(node)
            total += cost
            if cost > MAX_CHECK_STEPS or total > MAX_CHECK_STEPS:
                return (
                    f"schema is too costly to check: `{key}` has {len(node)} members that are not all strings "
                    "or numbers (each pair is compared)"
                )
            stack.extend((child, key) for child in node)
    _spend(total)
    return None


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
        if node is not schema and isinstance(node.get("$schema"), str):
            return "only the schema's root may name a dialect ($schema)"
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
    if resolver is not None:
        verdicts = {value_problem(probe, schema) for probe in _PROBES}
        if ENDLESS in verdicts:
            # A loop that does not walk down the value never ends, whatever the value; one that
            # does ends with it (a value's depth is bounded), and one only some values reach is
            # a 422 when they come.
            return ENDLESS
        if any(v is not None and v.startswith(TOO_COSTLY) for v in verdicts):
            # References that multiply the work (each level applying the next twice) cost it
            # for any value: refused now rather than on every decision.
            return "schema is too costly to check: its references multiply the work, whatever the value"
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
        # Its lists priced first: checking the schema compares their members.
        problem = _costly_schema_problem(schema)
        if problem:
            return problem
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        return _clip(f"schema is not valid JSON Schema: {err.message}")
    except _TooCostly:
        return "schema is too costly to check, with the rest of its form"
    return _unsafe_problem(schema)


def value_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (one line), or None when it does.

    Within the current budget (:func:`check_budget`; a budget of its own outside one): what
    would cost more is :data:`TOO_COSTLY`, saying what made it so where that is known.
    """
    from jsonschema.exceptions import ValidationError
    from referencing.exceptions import Unresolvable

    try:
        validator = _validator_of(json.dumps(schema, sort_keys=True))
    except (TypeError, ValueError) as err:
        # Refused when the form is parsed (its schema must be JSON); never a crash here.
        return _clip(f"the input's schema cannot be used: {err}")
    except RecursionError:
        return "the input's schema is nested too deeply to be used"
    with check_budget():
        try:
            validator.validate(value)
        except ValidationError as err:
            return _clip(err.message)
        except Unresolvable as err:
            # Refused when the form is parsed; a form stored before that check still answers 422.
            return _clip(f"the input's schema cannot be used: {err}")
        except RecursionError:
            # {"$ref": "#"} applies itself for ever, whatever the value.
            return ENDLESS
        except _TooCostly as err:
            return f"{TOO_COSTLY}: {err.why}" if err.why else TOO_COSTLY
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
            raise InvalidInput(field, f"default {_clip(repr(default))} does not satisfy the schema: {problem}")
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
    with check_budget():  # one budget for the whole form
        for name, spec in value.items():
            form = problems.parse(_one_input, name, spec, default=None)
            if form is not None:
                parsed[name] = form
            if _spent():
                break  # the inputs after the one that spent it would only echo its refusal
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
    with check_budget():  # one budget for all the values of a decision
        for name, spec in form.items():
            if name not in given:
                continue
            value = given[name]
            # The REST API refuses these in its bodies; an emailed link's form, a Slack modal
            # and the CLI read values as JSON, where NaN and NUL parse but cannot be stored.
            problem = json_problem(value) or value_problem(value, spec.get("schema") or {})
            if problem:
                problems.add(f"inputs.{name}", problem)
            else:
                values[name] = value
            if _spent():
                break  # the inputs after the one that spent it would only echo its refusal
    for name, spec in form.items():
        if name in given or not approving:
            continue
        if spec.get("required"):
            problems.add(f"inputs.{name}", "is required")
        else:
            values[name] = spec.get("value")
    problems.raise_if_any(InvalidInput)
    return {name: values[name] for name in form if name in values}

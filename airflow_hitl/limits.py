"""What the approval store can keep: one check for text, JSON, numbers and times.

Every way in (the REST API's bodies and query strings, the operator's ``ApprovalSpec``)
validates with these functions before any work is done, so a value PostgreSQL or SQLite
would refuse (NUL or lone surrogates in text, NaN, an integer wider than its column, a
time past year 9999, JSON nested past the recursion limit) is bad input naming its field,
never a server error. The walks are iterative: a deeply nested value cannot exhaust
Python's stack while being checked, and JSON text from outside is read with
:func:`json_loads`, which turns Python's parser running out of stack into bad input too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

# PostgreSQL ``integer`` (map_index, required_approvals, counts).
INT32_MAX = 2**31 - 1
# Longest gate: ten years. ``now + timeout`` must stay a representable time.
MAX_TIMEOUT_SECONDS = 10 * 366 * 24 * 3600
# Times a filter may name (PostgreSQL and Python both represent this range).
MIN_TIME = dt.datetime(1, 1, 2, tzinfo=dt.timezone.utc)
MAX_TIME = dt.datetime(9999, 12, 30, tzinfo=dt.timezone.utc)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if "\x00" in value:
        return "text must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (no lone surrogates)"
    return None


def json_problem(value: Any, *, max_depth: int | None = None, max_bytes: int | None = None) -> str | None:
    """Why ``value`` cannot be stored as JSON (or is over the limits), or None.

    ``max_depth`` counts nested objects and arrays (a flat object is depth 1); ``max_bytes``
    bounds the UTF-8 size of its compact JSON text.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return problem
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "numbers must be finite (no NaN or Infinity)"
        elif isinstance(item, (dict, list, tuple)):
            if max_depth is not None and depth + 1 > max_depth:
                return f"is nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return "object keys must be strings"
                    stack.append((key, depth + 1))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            # Left to the caller's own serialisation rules (datetimes, UUIDs in DAG code).
            continue
    return None if max_bytes is None else _json_size_problem(value, max_bytes)


def json_loads(text: str | bytes, *, max_depth: int | None = None) -> Any:
    """JSON text from outside (a form field, a Slack payload) as a value; ``ValueError`` says why not.

    Python's parser recurses: a few thousand ``[`` raise ``RecursionError``, which no caller
    expects from ``json.loads`` (an emailed link's form answered 500). Here it is a
    ``ValueError`` like any other unreadable text, and with ``max_depth`` the value is held
    to :func:`json_problem`'s limits too (nesting, NaN, NUL).
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("JSON is nested too deeply to be read") from None
    if max_depth is not None:
        problem = json_problem(value, max_depth=max_depth)
        if problem:
            raise ValueError(problem)
    return value


def _json_size_problem(value: Any, max_bytes: int) -> str | None:
    # The size of the compact JSON text, as the store will keep it.
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as err:
        return f"must be JSON-serialisable: {err}"
    if size > max_bytes:
        return f"is {size} bytes of JSON, more than the limit of {max_bytes} (`[hitl] max_json_bytes`)"
    return None


def time_problem(value: dt.datetime) -> str | None:
    """Why ``value`` is outside the times the store represents, or None."""
    try:
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        utc = aware.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        return "is outside the representable range of times"
    if not MIN_TIME <= utc <= MAX_TIME:
        return f"must be between {MIN_TIME.date()} and {MAX_TIME.date()}"
    return None

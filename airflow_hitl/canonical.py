"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and the SHA-256 digest of it.

A request's ``content_digest`` (see :attr:`airflow_hitl.records.Approval.content_digest`) is
the SHA-256 of what approvers are shown, written as RFC 8785 canonical JSON: object keys
sorted by their UTF-16 code units, numbers as ECMAScript writes them, no white space. Anyone
holding an item's JSON can recompute it with any RFC 8785 implementation; the serialisation
itself is the maintained ``rfc8785`` package's, never ours.

What this module adds is the mapping of the values a store can hold but RFC 8785 (whose
numbers are IEEE 754 doubles) cannot: an integer past 2**53 becomes the double a JSON parser
would read it as (what a JavaScript client computing the digest sees), an integer or float
no double can hold becomes its decimal text. A digest is therefore computed for every stored
request, never an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import rfc8785

from airflow_hitl.exceptions import ApprovalMismatch

#: Integers RFC 8785 writes as they are: those a double holds exactly (I-JSON, RFC 7493).
_SAFE_INTEGER = 2**53 - 1
#: A SHA-256 digest as this package writes it (lowercase hex); upper case is accepted on input.
DIGEST_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


def _number(value: int | float) -> int | float | str:
    if isinstance(value, int):
        if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            return value
        try:
            value = float(value)
        except OverflowError:
            return str(value)
    return value if math.isfinite(value) else str(value)


def _ready(value: Any) -> Any:
    """``value`` as RFC 8785 can write it: tuples as lists, times as ISO text, numbers as doubles."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, dict):
        return {str(key): _ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_ready(item) for item in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def canonical_json(value: Any) -> bytes:
    """``value`` as RFC 8785 canonical JSON (UTF-8 bytes)."""
    return rfc8785.dumps(_ready(value))


def content_digest(value: Any) -> str:
    """SHA-256 (lowercase hex) of ``value``'s RFC 8785 canonical JSON."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def digest_problem(value: Any) -> str | None:
    """Why ``value`` is not a SHA-256 digest in hex, or None."""
    if not isinstance(value, str) or not DIGEST_PATTERN.fullmatch(value):
        return "must be a SHA-256 digest: 64 hexadecimal characters"
    return None


def bound_digest(value: str) -> str:
    """SHA-256 (lowercase hex) of a bound value's UTF-8 text: what a gate's decision carries under ``bound``."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def verify_bound(decision: Mapping[str, Any] | str, name: str, value: str) -> None:
    """Raise :class:`ApprovalMismatch` unless ``value`` is what the gate's ``bind[name]`` was when it was approved.

    ``decision`` is the gate's decision XCom (a dict, or the JSON text Airflow may hand a task
    pulling a trigger-ended gate's XCom). A decision that was not an approval, binds no ``name``
    or bound another value is refused, naming ``name``: deploy nothing but what was approved.
    """
    if isinstance(decision, str):
        decision = json.loads(decision)
    if not isinstance(decision, Mapping):
        raise ApprovalMismatch(name, f"cannot be checked: not an approval decision ({type(decision).__name__})")
    if decision.get("approved") is not True:
        raise ApprovalMismatch(name, f"was not approved: the request is {decision.get('state')!r}")
    bound = decision.get("bound")
    expected = bound.get(name) if isinstance(bound, Mapping) else None
    if expected is None:
        raise ApprovalMismatch(name, "was not bound by the gate's `bind`")
    if not isinstance(value, str) or bound_digest(value) != expected:
        raise ApprovalMismatch(name, "differs from the value that was approved")

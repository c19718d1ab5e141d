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
import math
import re
from typing import Any

import rfc8785

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

"""limits: what the approval store can keep; every way in asks these before doing any work."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_hitl.limits import MAX_TIME, MIN_TIME, json_problem, text_problem, time_problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("plain text, ünïcode and emoji \N{ROCKET}", None),
        ("nul\x00inside", "text must not contain NUL characters"),
        ("lone \ud800 surrogate", "text must be valid Unicode (no lone surrogates)"),
    ],
    ids=["fine", "nul", "surrogate"],
)
def test_text(value: str, problem: str | None) -> None:
    assert text_problem(value) == problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1, 2.5, True, None, "x"]}, None),
        ({"a": float("nan")}, "numbers must be finite (no NaN or Infinity)"),
        ([1, [float("-inf")]], "numbers must be finite (no NaN or Infinity)"),
        ({"deep": {"text": "a\x00b"}}, "text must not contain NUL characters"),
        ({1: "x"}, "object keys must be strings"),
        ({"when": dt.datetime(2026, 1, 1)}, None),  # left to the caller's serialiser
    ],
    ids=["fine", "nan", "nested-inf", "nested-nul", "int-key", "datetime"],
)
def test_json_values(value: object, problem: str | None) -> None:
    assert json_problem(value) == problem


def test_json_depth_counts_objects_and_arrays() -> None:
    assert json_problem({"a": 1}, max_depth=1) is None
    assert json_problem({"a": [1]}, max_depth=1) == "is nested deeper than 1 levels"
    assert json_problem({"a": [1]}, max_depth=2) is None


def test_json_nested_past_the_recursion_limit_is_a_problem_not_a_crash() -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    assert json_problem(value) is None  # no limits asked: the walk itself never recurses
    assert json_problem(value, max_depth=64) == "is nested deeper than 64 levels"
    assert json_problem(value, max_bytes=10**9).startswith("must be JSON-serialisable")


def test_json_size_is_the_utf8_size_of_compact_json() -> None:
    # {"k":"éé"} is 12 bytes in UTF-8: two of them are the second bytes of é.
    assert json_problem({"k": "éé"}, max_bytes=12) is None
    problem = json_problem({"k": "éé"}, max_bytes=11)
    assert problem == "is 12 bytes of JSON, more than the limit of 11 (`[hitl] max_json_bytes`)"


def test_times_within_what_the_store_represents() -> None:
    assert time_problem(dt.datetime(2026, 11, 30, 6, 43, tzinfo=dt.timezone.utc)) is None
    assert time_problem(dt.datetime(2026, 11, 30, 6, 43)) is None  # naive: taken as UTC
    assert time_problem(MIN_TIME) is None and time_problem(MAX_TIME) is None
    assert time_problem(dt.datetime(9999, 12, 31, 12)) == "must be between 0001-01-02 and 9999-12-30"
    # Converting to UTC overflows: a problem, not an exception.
    east = dt.timezone(dt.timedelta(hours=14))
    west = dt.timezone(dt.timedelta(hours=-14))
    assert time_problem(dt.datetime(1, 1, 1, 1, tzinfo=east)) == "is outside the representable range of times"
    assert time_problem(dt.datetime(9999, 12, 31, 23, tzinfo=west)) == "is outside the representable range of times"

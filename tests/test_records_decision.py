"""read_decision: the gate's XCom as a dict, whether a worker or a trigger end event pushed it."""

from __future__ import annotations

import json

import pytest

from airflow_hitl.records import read_decision

SUMMARY = {"state": "approved", "approvers": ["alice"], "decision_source": "api"}


@pytest.mark.parametrize("value", [SUMMARY, json.dumps(SUMMARY)], ids=["pushed-by-worker", "pushed-by-trigger"])
def test_both_forms_read_the_same(value):
    assert read_decision(value) == SUMMARY


@pytest.mark.parametrize("value", [None, 3, "[1, 2]"], ids=["none", "number", "list"])
def test_anything_else_is_refused(value):
    with pytest.raises(TypeError, match="not an approval decision"):
        read_decision(value)

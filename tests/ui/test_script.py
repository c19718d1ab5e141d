"""Static checks of the pages' script, ``airflow_hitl/ui/static/hitl.js`` (no browser needed)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "airflow_hitl" / "ui" / "static" / "hitl.js"


def test_each_top_level_function_is_declared_once() -> None:
    # Two declarations of one name in a scope do not fail in the browser: the later one silently
    # replaces the earlier everywhere (two merged features once broke the history's date filters so).
    # The script is one closure; its helpers sit two spaces in (each page's own are deeper).
    declared = collections.Counter(re.findall(r"^ {2}(?:async )?function (\w+)\(", SCRIPT.read_text(), re.M))
    assert len(declared) > 20
    assert [name for name, count in declared.items() if count > 1] == []

"""The vocabulary is declared once: the pages and templates use the server's words, not copies."""

from __future__ import annotations

import json
import re
from pathlib import Path

from airflow_hitl import vocabulary

UI = Path(__file__).resolve().parents[1] / "airflow_hitl" / "ui"
SCRIPT = (UI / "static" / "hitl.js").read_text()


def test_pages_receive_the_vocabulary_as_json():
    words = json.loads(json.dumps(vocabulary.for_pages()))
    assert words["waiting_states"] == list(vocabulary.WAITING_STATES)
    assert words["states"] == list(vocabulary.STATES)
    assert words["events"] == list(vocabulary.EVENTS)


def test_the_script_reads_states_from_the_server():
    assert "document.body.dataset.vocabulary" in SCRIPT
    # No list of states of its own: a new state must not need a JavaScript change.
    assert not re.search(r"new Set\(\[\s*\"(pending|escalated|approved)", SCRIPT)


def test_the_scripts_event_labels_cover_exactly_the_events():
    block = re.search(r"const EVENT_WORDS = \{(.*?)\};", SCRIPT, re.S)
    assert block, "EVENT_WORDS not found in hitl.js"
    labelled = re.findall(r"^\s*(\w+):", block.group(1), re.M)
    assert sorted(labelled) == sorted(vocabulary.EVENTS)


def test_template_state_filters_offer_only_known_states():
    for template in ("inbox.html", "history.html"):
        html = (UI / "templates" / template).read_text()
        select = re.search(r'<select[^>]*name="state"[^>]*>(.*?)</select>', html, re.S)
        assert select, f"no state filter in {template}"
        values = [v for v in re.findall(r'<option value="([^"]*)"', select.group(1)) if v]
        assert values and set(values) <= set(vocabulary.STATES), (template, values)


def test_final_event_of_every_terminal_state():
    assert {vocabulary.final_event(s) for s in vocabulary.TERMINAL_STATES} <= set(vocabulary.FINAL_EVENTS)

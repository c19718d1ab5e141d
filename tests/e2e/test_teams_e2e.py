"""Microsoft Teams notices on real Airflow (issue 27, item 4).

A stack of its own (api-server, scheduler, triggerer, dag-processor; the approval store on
PostgreSQL) whose ``teams_default`` connection holds the URL of a Teams Workflows webhook
stand-in served by this process on loopback (:func:`tests.notifications.test_teams.serve_teams`:
it checks the URL's signature and answers as scripted). Its DAGs are those of
``tests/e2e/dags_teams`` and the warm-up DAG only.

The first card meets an outage (503, 503) and comes through on the outbox's retries; each
event (required, reminder, escalated, decided, cancelled) is a card valid against the Adaptive
Cards 1.5 schema, posted once per notice, its DAG text shown as text. A gate whose connection
holds no URL has its Teams notice failed with that reason, and waits on.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_hitl.records import Approval, Notification
from tests.e2e.harness import TEST_DAGS, AirflowHarness, wait_until
from tests.notifications.test_teams import (
    TeamsWebhook,
    assert_valid_card,
    markup_of,
    serve_teams,
    teams_connection,
    texts,
    visible,
)
from tests.standins import notify_environment

pytestmark = pytest.mark.e2e

TEAMS_DAGS = Path(__file__).resolve().parent / "dags_teams"
API = "/hitl/api/v1/approvals"
#: Cards a notice event starts its headline with (the subjects of the notice templates).
HEADLINES = {
    "required": "Approval required",
    "reminder": "Reminder",
    "escalated": "Escalated to you",
    "decided": "Approval approved",
    "cancelled": "Approval cancelled",
}


@pytest.fixture(scope="module")
def teams() -> Iterator[TeamsWebhook]:
    """The Teams webhook stand-in the stack posts to."""
    yield from serve_teams()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, teams: TeamsWebhook) -> Iterator[AirflowHarness]:
    """Airflow with the Teams DAGs, ``teams_default`` pointing at the stand-in (the full URL in its host)."""
    root = tmp_path_factory.mktemp("airflow-teams")
    dags = tmp_path_factory.mktemp("teams-dags")
    for path in [*sorted(TEAMS_DAGS.glob("*.py")), TEST_DAGS / "e2e_warmup.py"]:
        shutil.copy2(path, dags / path.name)
    harness = AirflowHarness(root=root, store="postgres")
    harness.dag_dirs = [dags]
    harness.env.update(notify_environment())
    harness.env.update(
        {
            "AIRFLOW__HITL__BASE_URL": harness.base_url,
            "AIRFLOW_CONN_TEAMS_DEFAULT": teams_connection(teams.url),
            "AIRFLOW_CONN_TEAMS_NO_URL": teams_connection(),
            # The backoff law of production, a short ceiling: an outage's end is noticed within seconds.
            "AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF": "1.0",
            "AIRFLOW__HITL__NOTIFY_RETRY_MAX_BACKOFF": "5.0",
        }
    )
    print(f"\nstarting Airflow for the Teams notices in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def notices(stack: AirflowHarness, gate: Approval, event: str) -> list[Notification]:
    """The gate's Teams notices of ``event`` that were delivered."""
    return stack.manager.notices.list_notifications(
        request_id=gate.id, channel="teams", event_type=event, status="sent"
    )


def cards_of(teams: TeamsWebhook, gate: Approval, event: str) -> list[dict[str, Any]]:
    """Cards Teams took for ``gate`` (its run, in the card's facts) and ``event`` (its headline)."""
    run = f"Run: {gate.run_id}"
    return [card for card in teams.cards(HEADLINES[event]) if run in texts(card)]


def assert_once_per_notice(stack: AirflowHarness, teams: TeamsWebhook, gate: Approval, event: str) -> None:
    """Every delivered notice of ``event`` is one card Teams took, and each card is a valid one."""

    def counts() -> tuple[int, int]:
        return len(cards_of(teams, gate, event)), len(notices(stack, gate, event))

    # A card is taken a moment before its notice is marked sent; a second post of one notice
    # would leave more cards than notices for good.
    wait_until(
        lambda: counts()[0] == counts()[1] >= 1,
        timeout=120,
        what=f"one {event} card per delivered notice",
        on_timeout=lambda: f"(cards, notices) = {counts()}",
    )
    for card in cards_of(teams, gate, event):
        assert_valid_card(card)
        assert card["actions"][0]["url"] == (
            f"{stack.base_url}/dags/{gate.dag_id}/runs/{quote(gate.run_id or '', safe='')}/tasks/gate"
        )


def test_a_card_survives_an_outage_and_the_decision_has_its_own(stack: AirflowHarness, teams: TeamsWebhook) -> None:
    teams.statuses[:] = [503, 503]
    run_id = stack.trigger("e2e_teams", user="admin")
    gate = stack.wait_for_approval("e2e_teams", run_id, "gate", states=["pending"])

    [row] = wait_until(lambda: notices(stack, gate, "required"), timeout=240, what="the required card")
    assert row.recipient == "teams_default" and row.retry_count == 2
    assert [d.status for d in teams.deliveries] == [503, 503, 202], "Teams was down twice, then took the card"
    [card] = cards_of(teams, gate, "required")
    assert_valid_card(card)
    shown = texts(card)
    assert shown[:3] == [
        f"Approval required: Ship **{run_id}** [now](https://evil.example)",
        f"Ship **{run_id}** [now](https://evil.example)",
        "Reason: checklist _done_",
    ]
    # The context in the store's order (PostgreSQL's JSONB orders keys its own way).
    assert sorted(shown[-3:]) == [f"build: {run_id}", "see: www.evil.example", "who: <at>Everyone</at>"]
    for element in card["body"]:
        for text in [element.get("text", "")] + [v for f in element.get("facts", []) for v in f.values()]:
            assert markup_of(text) == [], text

    stack.api("POST", f"{API}/{gate.id}/approve", user="alice", json_body={"comment": "ship it"})
    stack.wait_for_run_state("e2e_teams", run_id, "success")
    wait_until(lambda: notices(stack, gate, "decided"), timeout=240, what="the decided card")
    [decided] = cards_of(teams, gate, "decided")
    assert visible(decided["body"][-1]["text"]) == "Approved by alice"
    for event in ("required", "decided"):
        assert_once_per_notice(stack, teams, gate, event)


def test_reminders_escalation_and_cancel_each_have_their_card(stack: AirflowHarness, teams: TeamsWebhook) -> None:
    run_id = stack.trigger("e2e_teams_escalation", user="admin")
    gate = stack.wait_for_approval("e2e_teams_escalation", run_id, "gate", states=["pending", "escalated"])
    wait_until(lambda: notices(stack, gate, "escalated"), timeout=300, what="the escalated card")
    wait_until(lambda: notices(stack, gate, "reminder"), timeout=120, what="a reminder card")

    stack.api("POST", f"{API}/{gate.id}/cancel", user="admin", json_body={"reason": "rotated by hand"})
    wait_until(lambda: notices(stack, gate, "cancelled"), timeout=240, what="the cancelled card")
    [cancelled] = cards_of(teams, gate, "cancelled")
    assert visible(cancelled["body"][-1]["text"]) == "Cancelled: rotated by hand"
    [escalated] = cards_of(teams, gate, "escalated")
    assert "Approvals: 0 of 1" in texts(escalated)
    for event in ("required", "reminder", "escalated", "cancelled"):
        assert_once_per_notice(stack, teams, gate, event)


def test_a_connection_without_a_url_fails_the_notice_with_the_reason(
    stack: AirflowHarness, teams: TeamsWebhook
) -> None:
    run_id = stack.trigger("e2e_teams_no_url", user="admin")
    gate = stack.wait_for_approval("e2e_teams_no_url", run_id, "gate", states=["pending"])

    def failed() -> list[Notification]:
        rows = stack.manager.notices.list_notifications(request_id=gate.id, channel="teams", status="failed")
        return [r for r in rows if r.error]

    [row] = wait_until(failed, timeout=240, what="the failed Teams notice")
    assert row.recipient == "teams_no_url"
    assert "connection 'teams_no_url' holds no Teams webhook URL" in (row.error or ""), row.error
    wait_until(
        lambda: stack.manager.notices.list_notifications(request_id=gate.id, channel="in_app", status="sent"),
        timeout=120,
        what="the in-app notice beside it",
    )
    assert stack.manager.queries.get(gate.id).state == "pending", "a notice never decides the gate"
    assert not [d for d in teams.deliveries if "Nowhere to post" in json.dumps(d.body)]
    stack.api("POST", f"{API}/{gate.id}/cancel", user="admin", json_body={"reason": "done"})

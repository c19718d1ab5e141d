"""The Delegations page, and a delegated vote shown as "bob for carol" (issue 13).

Real Airflow, Debian Chromium. ``carol`` is the only approver of ``e2e_delegation``'s gate;
she delegates it to ``bob`` in the page, bob approves from his inbox, and the history shows
the vote as "bob for carol".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.harness import AirflowHarness
from tests.ui.test_approvals_tab import card, login, open_gate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]
DAG_ID = "e2e_delegation"


def test_create_in_the_page_then_a_delegated_vote_shows_bob_for_carol(
    airflow: AirflowHarness, new_page: PageFactory
) -> None:
    carol = new_page()
    login(carol, airflow, "carol", "/hitl/ui/delegations")
    expect(carol.locator("#nav-delegations")).to_have_class("tab active")
    carol.locator("#d-delegate").fill("bob")
    carol.locator("#d-dags").fill(DAG_ID)
    carol.locator("#d-create").click()
    row = carol.locator("#d-rows tr.delegation.active")
    expect(row).to_have_count(1)
    expect(row.locator(".d-who")).to_have_text("bob for carol")
    expect(row).to_contain_text(DAG_ID)
    made = airflow.manager.delegations.list_delegations(involving="carol", active_only=True)[0]
    assert [(d.delegator, d.delegate, d.dag_ids) for d in made] == [("carol", "bob", (DAG_ID,))]

    try:
        run_id, approval_id = open_gate(airflow, DAG_ID, "gate", user="admin")
        bob = new_page()
        login(bob, airflow, "bob", "/hitl/ui/")
        item = card(bob, approval_id)
        expect(item.locator(".badge.can")).to_have_text("you can decide for carol")
        item.get_by_role("button", name="Approve", exact=True).click()
        expect(item).to_have_count(0)
        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("approved", "carol", "ui")
        assert [(v.user, v.delegate) for v in decided.votes] == [("carol", "bob")]

        bob.goto("/hitl/ui/history")
        entry = bob.locator(f'#timeline li.event[data-id="{approval_id}"]')
        expect(entry.locator(".who")).to_have_text("bob for carol")
        expect(entry.locator(".votes .voter")).to_have_text("bob for carol")
        airflow.wait_for_run_state(DAG_ID, run_id, "success", timeout=240)
    finally:
        # Ending it in the page (after a confirmation) leaves it listed as ended.
        carol.once("dialog", lambda dialog: dialog.accept())
        carol.reload()
        carol.locator("#d-rows tr.delegation.active .d-end").click()
        expect(carol.locator(f'#d-rows tr[data-id="{made[0].id}"]')).to_have_class("delegation ended")
    assert airflow.manager.delegations.get_delegation(made[0].id).ended_by == "carol"

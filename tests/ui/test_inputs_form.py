"""The decision modal's form inputs in a real Airflow 3 UI through headless Debian Chromium:
the form is built from the gate's schema, the server's refusal shows next to the field, a valid
value approves, and the history shows what was submitted.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.harness import AirflowHarness
from tests.ui.test_approvals_tab import PageFactory, card, login, open_gate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAG_ID = "ui_inputs"


class TestInputsForm:
    def test_invalid_value_shows_the_error_then_a_valid_one_approves(
        self, airflow: AirflowHarness, new_page: PageFactory
    ) -> None:
        run_id, approval_id = open_gate(airflow, DAG_ID, "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        # The card's quick Approve cannot skip a required input: it opens the decision modal.
        card(page, approval_id).locator(".quick-approve").click()
        modal = page.locator("#modal")
        expect(modal).to_be_visible()
        assert not airflow.manager.queries.get(approval_id).votes

        # The form, from the schema: bounds, defaults, required marks, choices.
        expect(modal.locator("#m-inputs")).to_be_visible()
        percent = modal.locator("#m-input-rollout_percent")
        expect(percent).to_have_attribute("type", "number")
        expect(percent).to_have_attribute("min", "1")
        expect(percent).to_have_attribute("max", "100")
        expect(percent).to_have_value("10")
        ticket = modal.locator("#m-input-ticket")
        expect(ticket).to_have_attribute("required", "")
        expect(modal.locator('label[for="m-input-ticket"] .required')).to_be_visible()
        expect(modal.locator("#m-input-region option")).to_have_text(["(default)", "eu", "us"])
        expect(modal.locator("#m-input-region")).to_have_value("0")  # the default, "eu"
        expect(modal.locator("#m-input-dry_run")).not_to_be_checked()

        # Out of bounds: the server's 422 is shown next to the field, nothing is recorded.
        percent.fill("500")
        ticket.fill("CHG-2026")
        modal.locator("#m-approve").click()
        modal.locator("#m-confirm-ok").click()
        expect(modal.locator("#m-input-error-rollout_percent")).to_contain_text("greater than the maximum of 100")
        expect(modal.locator("#m-input-error-ticket")).to_be_hidden()
        expect(modal.locator("#m-error")).to_have_text("Some inputs are not valid.")
        unchanged = airflow.manager.queries.get(approval_id)
        assert unchanged.state == "pending" and not unchanged.votes

        percent.fill("25")
        modal.locator("#m-input-region").select_option(label="us")
        modal.locator("#m-input-dry_run").check()
        modal.locator("#m-approve").click()
        modal.locator("#m-confirm-ok").click()
        expect(modal).to_be_hidden()

        decided = airflow.manager.queries.get(approval_id)
        assert decided.state == "approved"
        assert decided.votes[0].inputs == {"rollout_percent": 25, "ticket": "CHG-2026", "region": "us", "dry_run": True}
        assert decided.votes[0].source == "ui"
        airflow.wait_for_run_state(DAG_ID, run_id, "success", timeout=240)

        # The history shows what the approver submitted.
        page.goto(f"/hitl/ui/history?dag_id={DAG_ID}")
        entry = page.locator(f'#timeline li[data-id="{approval_id}"]')
        expect(entry.locator(".vote-inputs")).to_contain_text("rollout_percent = 25")
        expect(entry.locator(".vote-inputs")).to_contain_text('ticket = "CHG-2026"')

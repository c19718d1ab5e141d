"""Quick decisions on the inbox cards, the notification bell, and the task instance tab.

Real Airflow, real gates, Debian Chromium; outcomes are checked in the approval store the
gates read.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.spec import utcnow
from tests.e2e.harness import AirflowHarness, wait_until
from tests.ui.conftest import PHONE
from tests.ui.test_approvals_tab import card, login, open_gate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]
MODAL_SIZES = [
    pytest.param({"width": 1400, "height": 900}, id="desktop-1400x900"),
    pytest.param({"width": 375, "height": 812}, id="phone-375x812"),
]


class TestQuickDecisions:
    def test_quick_approve_from_the_card(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        run_id, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        item = card(page, approval_id)
        expect(item).to_be_visible()
        # How many wait for alice's decision: in the page title and the header.
        pending = airflow.api("GET", "/hitl/api/v1/approvals/pending", user="alice").json()["approvals"]
        waiting = sum(1 for a in pending if a["can_approve"])
        expect(page).to_have_title(re.compile(rf"^\({waiting}\) Pending approvals"))
        expect(page.locator("#for-me-count")).to_have_text(f"{waiting} waiting for you")
        item.get_by_role("button", name="Approve", exact=True).click()
        expect(item).to_have_count(0)
        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("approved", "alice", "ui")
        airflow.wait_for_run_state("e2e_gate", run_id, "success", timeout=240)

    def test_quick_reject_asks_for_the_reason_inline(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        item = card(page, approval_id)
        form = item.locator("form.quick-reject")
        expect(form).to_be_hidden()
        item.get_by_role("button", name="Reject", exact=True).click()
        expect(form).to_be_visible()
        expect(form.locator(".quick-reason")).to_be_focused()

        form.get_by_role("button", name="Reject with this reason").click()
        expect(form.locator(".quick-error")).to_have_text("A reason is required to reject.")
        assert airflow.manager.queries.get(approval_id).state == "pending"

        # The inbox refreshes every few seconds: typing survives it.
        form.locator(".quick-reason").type("the numbers are from the wrong week")
        page.wait_for_function("() => document.querySelectorAll('li.card').length > 0")
        form.get_by_role("button", name="Reject with this reason").click()
        expect(item).to_have_count(0)
        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("rejected", "alice", "ui")
        assert decided.votes[0].reason == "the numbers are from the wrong week"

        # The history shows the reason once, with the vote (not again as the request's comment).
        page.goto("/hitl/ui/history")
        entry = page.locator(f'#timeline li.event[data-id="{approval_id}"]')
        expect(entry).to_contain_text("the numbers are from the wrong week")
        assert entry.inner_text().count("the numbers are from the wrong week") == 1

    def test_quick_buttons_are_off_when_you_may_not_decide(
        self, airflow: AirflowHarness, new_page: PageFactory
    ) -> None:
        _, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "viewer", "/hitl/ui/")
        item = card(page, approval_id)
        expect(item.get_by_role("button", name="Approve", exact=True)).to_be_disabled()
        expect(item.get_by_role("button", name="Reject", exact=True)).to_be_disabled()
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")

    @pytest.mark.parametrize("viewport", MODAL_SIZES)
    def test_modal_buttons_visible_without_scrolling(
        self, airflow: AirflowHarness, new_page: PageFactory, viewport: dict[str, int]
    ) -> None:
        _, approval_id = open_gate(airflow, "hitl_model_release", "approve_release", user="bob")
        page = new_page(viewport)
        login(page, airflow, "alice", "/hitl/ui/")
        card(page, approval_id).get_by_role("button", name="Review").click()
        expect(page.locator("#m-context")).to_contain_text("Accuracy")
        for button in ("#m-approve", "#m-reject"):
            expect(page.locator(button)).to_be_in_viewport()
            box = page.locator(button).bounding_box()
            assert box is not None and box["y"] + box["height"] <= viewport["height"], (button, box)
        # The confirmation step that replaces them is on screen too.
        page.locator("#m-reason-input").fill("not now")
        page.locator("#m-reject").click()
        expect(page.locator("#m-confirm-ok")).to_be_in_viewport()
        page.locator("#m-confirm-cancel").click()
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


class TestNotificationBell:
    def test_bell_counts_up_when_a_gate_opens_and_down_when_read(
        self, airflow: AirflowHarness, new_page: PageFactory
    ) -> None:
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        before = airflow.manager.notices.unread_count("alice")
        badge = page.locator("#bell-count")
        if before:
            expect(badge).to_have_text(str(before))
        else:
            expect(badge).to_be_hidden()

        run_id, approval_id = open_gate(airflow, "ui_notify", "gate", user="admin")
        wait_until(
            lambda: airflow.manager.notices.unread_count("alice") == before + 1,
            timeout=120,
            what="alice's in-app notice of the opened gate",
        )
        # The open page picks it up on its own.
        expect(badge).to_have_text(str(before + 1))
        expect(page.locator("#bell")).to_have_attribute("aria-label", f"Notifications: {before + 1} unread")

        page.locator("#bell").click()
        note = page.locator(f'#bell-list li.note.unread[data-request-id="{approval_id}"]')
        expect(note).to_contain_text("Rotate the signing keys")
        note.get_by_role("button", name="Mark read").click()
        expect(page.locator(f'#bell-list li.note.read[data-request-id="{approval_id}"]')).to_have_count(1)
        if before:
            expect(badge).to_have_text(str(before))
        else:
            expect(badge).to_be_hidden()
        assert airflow.manager.notices.unread_count("alice") == before

        # Opening a notice from the history page lands on the inbox with that request open.
        page.goto("/hitl/ui/history")
        page.locator("#bell").click()
        page.locator(f'#bell-list li.note[data-request-id="{approval_id}"] .note-open').click()
        expect(page).to_have_url(re.compile(r"/hitl/ui/\?open="))
        expect(page.locator("#modal")).to_be_visible()
        expect(page.locator("#m-title")).to_have_text("Rotate the signing keys")
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")
        airflow.wait_for_run_state("ui_notify", run_id, "failed", timeout=240)


class TestTaskTab:
    def test_task_tab_shows_only_that_tasks_approval(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        first_run, first = open_gate(airflow, "e2e_gate", "gate", user="admin")
        _, second = open_gate(airflow, "e2e_gate", "gate", user="admin")
        for viewport in (None, PHONE):
            page = new_page(viewport)
            login(page, airflow, "alice")
            page.goto(f"/dags/e2e_gate/runs/{quote(first_run, safe='')}/tasks/gate/plugin/hitl-approval")
            frame = page.frame_locator('iframe[title="Approval"]')
            # The task page renders its tabs and the iframe slowly on a busy machine.
            expect(frame.locator("#m-run")).to_have_text(first_run, timeout=120_000)
            expect(frame.locator("#m-state")).to_have_text("pending")
            # No inbox inside the tab: no tabs, no cards, no bell, no other request.
            for absent in ("#nav-inbox", "#nav-history", "#cards", "#bell", "li.card"):
                expect(frame.locator(absent)).to_have_count(0)
            width = frame.locator("html").evaluate("h => [h.scrollWidth, h.clientWidth]")
            assert width[0] <= width[1], width
        for approval_id in (first, second):
            airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


class TestChangedSinceShown:
    """The pages send the digest of the request they showed: a request changed since is not decided."""

    def test_a_request_escalated_while_confirming_is_not_approved_and_is_shown_anew(
        self, airflow: AirflowHarness, new_page: PageFactory
    ) -> None:
        # Opened over the API (no task): it escalates to carol when its hour is up.
        body = {
            "dag_id": "e2e_gate",
            "title": "Rotate the signing keys",
            "allowed_approvers": ["alice"],
            "timeout_seconds": 3600,
            "timeout_action": "escalate",
            "escalate_to": [{"approvers": ["carol"], "roles": [], "timeout_seconds": 36000}],
            "escalation_final_action": "reject",
        }
        approval_id = airflow.api("POST", "/hitl/api/v1/approvals", json_body=body, expect=(201,)).json()["id"]
        seen = airflow.manager.queries.get(approval_id).content_digest
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        card(page, approval_id).get_by_role("button", name="Review").click()
        modal = page.locator("#modal")
        modal.locator("#m-approve").click()
        expect(modal.locator("#m-confirm")).to_be_visible()
        # While alice confirms, the hour passes for the gate (a manager whose clock is later).
        later = ApprovalManager(store=airflow.manager.store, clock=lambda: utcnow() + dt.timedelta(hours=1, minutes=1))
        assert later.apply_timeout(approval_id).escalated
        modal.locator("#m-confirm-ok").click()
        expect(page.locator("#toast")).to_contain_text("the request changed since you opened it")
        expect(modal.locator("#m-error")).to_contain_text("Not recorded")
        assert airflow.manager.queries.get(approval_id).votes == ()
        # The view shows the request as it is now (escalated); confirming that decides it.
        expect(modal.locator("#m-state")).to_have_text("escalated")
        assert airflow.manager.queries.get(approval_id).content_digest != seen
        modal.locator("#m-approve").click()
        modal.locator("#m-confirm-ok").click()
        expect(modal).to_be_hidden()
        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("approved", "alice", "ui")

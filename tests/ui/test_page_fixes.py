"""What a first-time user found wrong with the Approvals pages (issue 25), checked on the real pages.

Real Airflow 3, headless Debian Chromium, requests opened over the REST API or by real gates.
Each check measures what the user saw: the text a quorum's approvers read before and after
voting, the toast after the first of two votes, who decides an escalated request, the
buttons' boxes on one line, the badge's distance from its text, the computed colours of the
outcome banner and of number inputs, the layer that dims the Airflow UI around an open
dialog, and every control inside a 375 px screen.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.spec import utcnow
from tests.e2e.harness import AirflowHarness
from tests.ui.conftest import DESKTOP, PHONE
from tests.ui.test_approvals_tab import API, card, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]

#: The layer airflow-theme.js lays over the Airflow UI while a dialog is open.
BACKDROP = "#hitl-modal-backdrop"

#: (top, left, right, width) of each visible control under ``root``, and the page's width.
CONTROL_BOXES = """root => {
  const boxes = [...root.querySelectorAll("select, input, textarea, button, .btn")]
    .filter((node) => node.getClientRects().length)
    .map((node) => {
      const r = node.getBoundingClientRect();
      return { id: node.id || node.className || node.tagName, left: r.left, right: r.right, width: r.width };
    })
    .filter((box) => box.width > 0);
  return { width: document.documentElement.clientWidth, boxes };
}"""

#: The filters' selects whose chosen option does not fit in the box (the text would be cut off).
CUT_SELECTS = """root => {
  const canvas = document.createElement("canvas").getContext("2d");
  return [...root.querySelectorAll(".filters select")].filter((select) => {
    const s = getComputedStyle(select);
    canvas.font = s.fontWeight + " " + s.fontSize + " " + s.fontFamily;
    const text = canvas.measureText(select.options[select.selectedIndex].text).width;
    const room = select.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight) - 20;  // 20: the arrow
    return text > room;
  }).map((select) => select.id);
}"""

#: The computed value of one of hitl.css's colour variables, as the browser writes a colour.
VARIABLE_COLOUR = """([name, property]) => {
  const probe = document.createElement("span");
  probe.style.setProperty(property, "var(" + name + ")");
  document.body.append(probe);
  const value = getComputedStyle(probe).getPropertyValue(property);
  probe.remove();
  return value;
}"""

#: What makes an input look like the others: border, radius, padding, colours, font.
INPUT_LOOK = """n => {
  const s = getComputedStyle(n);
  return [s.borderTopColor, s.borderTopWidth, s.borderRadius, s.paddingLeft, s.backgroundColor, s.color, s.fontFamily];
}"""

#: Pixels between a badge and the end of the text just before it.
GAP_BEFORE = """badge => {
  const range = document.createRange();
  range.selectNodeContents(badge.previousSibling);
  const rects = range.getClientRects();
  return badge.getBoundingClientRect().left - rects[rects.length - 1].right;
}"""


@pytest.fixture
def opened(airflow: AirflowHarness) -> Iterator[Callable[..., str]]:
    """Open requests over the REST API (no task); whatever is still waiting is cancelled after the test."""
    ids: list[str] = []

    def make(**fields: Any) -> str:
        body = {"dag_id": "e2e_gate", "title": "Reload the warehouse", "timeout_seconds": 3600, **fields}
        approval_id = str(airflow.api("POST", API, json_body=body, expect=(201,)).json()["id"])
        ids.append(approval_id)
        return approval_id

    yield make
    for approval_id in ids:
        if airflow.manager.queries.get(approval_id).state in {"pending", "escalated"}:
            airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


def same_top(page_or_locator: Any, selectors: list[str]) -> list[float]:
    """The tops of the boxes of ``selectors``; asserts they differ by at most 1 px."""
    tops = []
    for selector in selectors:
        box = page_or_locator.locator(selector).bounding_box()
        assert box is not None, selector
        tops.append(box["y"])
    assert max(tops) - min(tops) <= 1, dict(zip(selectors, tops, strict=True))
    return tops


def assert_inside(page: Any, root: str = "body") -> None:
    """Every visible control under ``root`` lies within the page's width (nothing cut off or scrolled to)."""
    measured = page.locator(root).evaluate(CONTROL_BOXES)
    outside = [b for b in measured["boxes"] if b["left"] < -0.5 or b["right"] > measured["width"] + 0.5]
    assert measured["boxes"], "no controls measured"
    assert outside == [], (measured["width"], outside)


class TestQuorumWithAForm:
    """Two approvals and a form: both approvers are told whose values count, and see each other's."""

    def test_approvers_are_told_which_values_are_used(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str]
    ) -> None:
        approval_id = opened(
            title="Backfill the orders table",
            required_approvals=2,
            allowed_approvers=["alice", "bob"],
            inputs={"batch_size": {"schema": {"type": "integer", "minimum": 1}, "value": 100, "description": "Rows"}},
        )
        page = new_page()
        login(page, airflow, "alice", f"/hitl/ui/?open={approval_id}")
        modal = page.locator("#modal")
        expect(modal.locator("#m-inputs-note")).to_have_text(
            "Yours will be approval 1 of 2: the values of the approval that completes the quorum are the ones used,"
            " not these."
        )
        expect(modal.locator("#m-votes-note")).to_contain_text(
            "The values sent with the approval that completes the quorum (approval 2 of 2) are the ones used"
        )
        expect(modal.locator("#m-earlier-inputs")).to_be_hidden()

        # A number input looks like the other inputs: same border, radius, padding, colours.
        number = modal.locator("#m-input-batch_size")
        assert number.evaluate(INPUT_LOOK) == modal.locator("#m-comment").evaluate(INPUT_LOOK)

        number.fill("250")
        modal.locator("#m-approve").click()
        modal.locator("#m-confirm-ok").click()
        expect(page.locator("#toast")).to_have_text("Your approval is recorded: 1 of 2; waiting for 1 more")
        assert airflow.manager.queries.get(approval_id).state == "pending"

        other = new_page()
        login(other, airflow, "bob", f"/hitl/ui/?open={approval_id}")
        form = other.locator("#modal")
        expect(form.locator("#m-inputs-note")).to_have_text(
            "Yours completes the quorum: the values below are the ones used."
        )
        earlier = form.locator('#m-earlier-inputs li[data-user="alice"]')
        expect(earlier).to_contain_text("alice: batch_size = 250")
        expect(form.locator("#m-input-batch_size")).to_have_value("100")
        earlier.get_by_role("button", name="Use these values").click()
        expect(form.locator("#m-input-batch_size")).to_have_value("250")
        form.locator("#m-input-batch_size").fill("300")
        form.locator("#m-approve").click()
        form.locator("#m-confirm-ok").click()
        expect(other.locator("#toast")).to_have_text("Approved: Backfill the orders table")

        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by) == ("approved", "bob")
        assert [(v.user, v.inputs) for v in decided.votes] == [
            ("alice", {"batch_size": 250}),
            ("bob", {"batch_size": 300}),
        ]

        # The decided request says whose values the gate used, and marks that vote.
        other.goto(f"/hitl/ui/?open={approval_id}")
        expect(other.locator("#m-votes-note")).to_have_text(
            "The gate used the values of bob's approval, the one that completed the quorum."
        )
        votes = other.locator("#m-votes li.vote")
        expect(votes.filter(has_text="bob").locator(".badge.used")).to_have_count(1)
        expect(votes.filter(has_text="alice").locator(".badge.used")).to_have_count(0)


class TestEscalated:
    """An escalated request says who may decide now, on its card and in its detail."""

    def test_escalated_request_names_who_decides(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str]
    ) -> None:
        approval_id = opened(
            title="Rotate the database password",
            allowed_approvers=["alice"],
            timeout_action="escalate",
            escalate_to=[{"approvers": ["carol"], "roles": ["admin"], "timeout_seconds": 36000}],
            escalation_final_action="reject",
        )
        later = ApprovalManager(store=airflow.manager.store, clock=lambda: utcnow() + dt.timedelta(hours=1, minutes=1))
        assert later.apply_timeout(approval_id).escalated

        page = new_page()
        login(page, airflow, "carol", "/hitl/ui/")
        item = card(page, approval_id)
        expect(item.locator(".meta.escalation")).to_have_text(
            "Who decides now: alice, carol; role admin (escalation level 1 of 1 added carol, role admin)"
        )
        # The badge keeps its distance from the text before it, and has room inside.
        badge = item.locator(".badge.escalated")
        expect(badge).to_have_text("escalated")
        assert badge.evaluate(GAP_BEFORE) >= 4
        assert float(badge.evaluate("b => parseFloat(getComputedStyle(b).paddingLeft)")) > 0

        item.get_by_role("button", name="Review").click()
        expect(page.locator("#m-deciders")).to_have_text(
            "alice, carol; role admin (escalation level 1 of 1 added carol, role admin)"
        )
        expect(page.locator("#m-approve")).to_be_enabled()


class TestButtonsAndBanner:
    """Buttons on one line, Approve before Reject everywhere; the outcome banner in the outcome's colour."""

    @pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
    def test_card_and_modal_buttons_share_one_line(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str], viewport: dict[str, int]
    ) -> None:
        approval_id = opened(title="Publish the quarterly report")
        page = new_page(viewport)
        login(page, airflow, "alice", "/hitl/ui/")
        item = card(page, approval_id)
        expect(item).to_be_visible()
        same_top(item, [".btn.review", "button.quick-approve", "button.quick-reject"])
        names = item.locator(".quick .btn").all_inner_texts()
        assert names == ["Review", "Approve", "Reject"]

        item.get_by_role("button", name="Review").click()
        expect(page.locator("#m-approve")).to_be_visible()
        same_top(page, ["#m-approve", "#m-reject"])
        approve, reject = page.locator("#m-approve").bounding_box(), page.locator("#m-reject").bounding_box()
        assert approve is not None and reject is not None and approve["x"] < reject["x"]

    def test_outcome_banner_uses_the_outcomes_colour(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str]
    ) -> None:
        approved = opened(title="Outcome approved")
        rejected = opened(title="Outcome rejected")
        cancelled = opened(title="Outcome cancelled")
        airflow.api("POST", f"{API}/{approved}/approve", user="carol", json_body={})
        airflow.api("POST", f"{API}/{rejected}/reject", user="carol", json_body={"reason": "no"})
        airflow.manager.cancel(cancelled, actor="admin", reason="not needed", source="api")

        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        expected = {approved: ("--ok", "--ok-bg"), rejected: ("--bad", "--bad-bg"), cancelled: ("--text", "--subtle")}
        for approval_id, (colour, background) in expected.items():
            page.goto(f"/hitl/ui/?open={approval_id}")
            banner = page.locator("#m-disabled-reason")
            expect(banner).to_contain_text("This request is")
            shown = banner.evaluate("b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]")
            want = [
                page.evaluate(VARIABLE_COLOUR, [colour, "color"]),
                page.evaluate(VARIABLE_COLOUR, [background, "background-color"]),
            ]
            assert shown == want, (approval_id, shown, want)
        warn = page.evaluate(VARIABLE_COLOUR, ["--warn", "color"])
        assert page.evaluate(VARIABLE_COLOUR, ["--ok", "color"]) != warn


class TestBackdropOverAirflow:
    """The dialog dims Airflow's own nav too, and leaves nothing behind when it closes."""

    def test_parent_layer_while_the_modal_is_open(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str]
    ) -> None:
        approval_id = opened(title="Dim the nav")
        page = new_page()
        login(page, airflow, "alice")
        page.goto("/plugin/approvals")
        frame = page.frame_locator('iframe[title="Approvals"]')
        item = card(frame, approval_id)
        expect(item).to_be_visible()
        expect(page.locator(BACKDROP)).to_have_count(0)
        iframe = page.locator('iframe[title="Approvals"]').bounding_box()
        assert iframe is not None and iframe["x"] > 20, iframe  # Airflow's nav is to its left

        item.get_by_role("button", name="Review").click()
        expect(frame.locator("#modal")).to_be_visible()
        expect(page.locator(BACKDROP)).to_have_count(1)
        nav_point = (iframe["x"] / 2, iframe["y"] + iframe["height"] / 2)
        inside_point = (iframe["x"] + iframe["width"] / 2, iframe["y"] + iframe["height"] / 2)
        on_top = "([x, y]) => { const n = document.elementFromPoint(x, y); return n && (n.id || n.tagName); }"
        assert page.evaluate(on_top, list(nav_point)) == "hitl-modal-backdrop"
        assert page.evaluate(on_top, list(inside_point)) == "IFRAME"  # the hole: the dialog stays usable
        shade = page.locator(BACKDROP).evaluate("n => getComputedStyle(n).backgroundColor")
        assert shade == frame.locator("#modal").evaluate("n => getComputedStyle(n).backgroundColor")

        frame.locator("#m-close").click()
        expect(frame.locator("#modal")).to_be_hidden()
        expect(page.locator(BACKDROP)).to_have_count(0)

        # A click on the dimmed nav closes the dialog, as a click on its own backdrop does.
        item.get_by_role("button", name="Review").click()
        expect(page.locator(BACKDROP)).to_have_count(1)
        page.mouse.click(*nav_point)
        expect(frame.locator("#modal")).to_be_hidden()
        expect(page.locator(BACKDROP)).to_have_count(0)

        # The bulk dialog dims it too.
        item.locator("input.select").check()
        frame.locator("#bulk-approve").click()
        expect(page.locator(BACKDROP)).to_have_count(1)
        frame.locator("#b-cancel").click()
        expect(page.locator(BACKDROP)).to_have_count(0)


class TestPhoneWidth:
    """At 375 px, on its own and inside the Airflow UI (whose nav leaves the frame less): every
    control fits, each filter shows its whole choice, and the bulk buttons sit side by side, equal."""

    def test_inbox_history_and_delegations_fit_375px(
        self, airflow: AirflowHarness, new_page: PageFactory, opened: Callable[..., str]
    ) -> None:
        approval_id = opened(
            title="A long title that has to wrap on a phone: rebuild every partition of the events table",
            required_approvals=2,
        )
        page = new_page(PHONE)
        login(page, airflow, "alice", "/hitl/ui/")
        expect(card(page, approval_id)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        embedded = new_page(PHONE)
        login(embedded, airflow, "alice")
        embedded.goto("/plugin/approvals")
        frame = embedded.frame_locator('iframe[title="Approvals"]')
        expect(card(frame, approval_id)).to_be_visible()
        for where in (page, frame):
            assert_inside(where)
            assert where.locator("body").evaluate(CUT_SELECTS) == []
            approve, reject = where.locator("#bulk-approve"), where.locator("#bulk-reject")
            expect(approve).to_have_accessible_name("Approve selected")
            boxes = [approve.bounding_box(), reject.bounding_box()]
            assert boxes[0] is not None and boxes[1] is not None
            for key in ("y", "width", "height"):
                assert abs(boxes[0][key] - boxes[1][key]) <= 1, (key, boxes)
            same_top(card(where, approval_id), [".btn.review", "button.quick-approve", "button.quick-reject"])

        page.goto("/hitl/ui/history")
        expect(page.locator("#history-count")).to_have_text(re.compile(r"^\d+$"))
        assert_inside(page)
        assert page.locator("body").evaluate(CUT_SELECTS) == []
        page.goto("/hitl/ui/delegations")
        expect(page.locator("#d-create")).to_be_visible()
        assert_inside(page)

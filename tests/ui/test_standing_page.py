"""The Standing approvals page, and a gate decided ahead shown as such (issue 26, item 1).

Real Airflow, Debian Chromium. ``alice`` approves ahead in the page, for one task id of
``e2e_gate`` that only these tests open requests for (over the REST API, as ``admin``), so no
other test's gate is ever voted on. The api-server casts her vote with source ``standing``;
the inbox card, the decision modal and the history then read "approved ahead by alice,
standing approval, 2 uses left". She revokes it in the page, after a confirmation. The page
is checked in light and dark, at 375 px, and by keyboard alone, with no script error.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import STANDING_STATES
from tests.e2e.harness import AirflowHarness, wait_until
from tests.ui.conftest import DESKTOP, PHONE
from tests.ui.test_airflow_look import page_colours
from tests.ui.test_approvals_tab import API, card, login
from tests.ui.test_page_fixes import assert_inside

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]
STANDING = "/hitl/api/v1/standing-approvals"
DAG_ID = "e2e_gate"


def watch_errors(page: Page) -> list[str]:
    """The page's uncaught script errors, collected as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture
def task_id(airflow: AirflowHarness) -> Iterator[str]:
    """A task id of ``e2e_gate`` only this test uses; its live standing approvals are revoked after."""
    name = f"standing_ui_{uuid.uuid4().hex[:8]}"
    yield name
    for standing in airflow.manager.standing.list(dag_id=DAG_ID, limit=1000)[0]:
        if standing.task_id == name and standing.revoked_at is None:
            airflow.api("DELETE", f"{STANDING}/{standing.id}", user="admin")


@pytest.fixture
def opened(airflow: AirflowHarness, task_id: str) -> Iterator[Callable[..., str]]:
    """Open requests of ``task_id`` over the REST API as admin; whatever still waits is cancelled after."""
    ids: list[str] = []

    def make(user: str = "admin", **fields: Any) -> str:
        body = {"dag_id": DAG_ID, "task_id": task_id, "title": "Load the nightly batch", "timeout_seconds": 3600}
        response = airflow.api("POST", API, user=user, json_body={**body, **fields}, expect=(201,))
        approval_id = str(response.json()["id"])
        ids.append(approval_id)
        return approval_id

    yield make
    for approval_id in ids:
        if airflow.manager.queries.get(approval_id).state in {"pending", "escalated"}:
            airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


def standing_vote(airflow: AirflowHarness, approval_id: str, user: str) -> Any:
    """Wait for the vote ``user``'s standing approval casts on ``approval_id``; return the request."""

    def voted() -> Any:
        item = airflow.manager.queries.get(approval_id)
        return item if any(v.user == user and v.source == "standing" for v in item.votes) else None

    return wait_until(voted, timeout=120, what=f"{user}'s standing vote on {approval_id}")


def owed(airflow: AirflowHarness, approval_id: str) -> list[dict[str, Any]]:
    """The votes standing approvals owed ``approval_id`` and how each was settled (the REST API's answer)."""
    return list(airflow.api("GET", f"{API}/{approval_id}/standing").json()["owed_votes"])


def standing_of(airflow: AirflowHarness, approver: str, task_id: str) -> list[Any]:
    """``approver``'s standing approvals for ``task_id`` of ``e2e_gate``, as stored."""
    items = airflow.manager.standing.list(approver=approver, dag_id=DAG_ID, limit=1000)[0]
    return [s for s in items if s.task_id == task_id]


def local(at: dt.datetime) -> str:
    """``at`` as a datetime-local value in UTC (the page reads it in Airflow's zone: hours off, never days)."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")


class TestPageWithoutBrowser:
    """Plain HTTP: the sign-in redirect, the admin's extra filter, the server's words and limit."""

    def test_without_a_session_the_page_sends_the_browser_to_airflows_login(self, airflow: AirflowHarness) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            response = client.get("/hitl/ui/standing", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/api/v2/auth/login?next=")

    @pytest.mark.parametrize(("user", "admin"), [("admin", True), ("alice", False)])
    def test_the_page_knows_an_admin_and_offers_the_servers_states(
        self, airflow: AirflowHarness, user: str, admin: bool
    ) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            response = client.get("/hitl/ui/standing", headers={"Cookie": f"_token={airflow.token(user)}"})
        assert response.status_code == 200
        assert f'data-admin="{str(admin).lower()}"' in response.text
        assert ('id="s-approver"' in response.text) is admin
        assert 'data-max-days="30"' in response.text
        for state in STANDING_STATES:
            assert f'<option value="{state}">' in response.text
        assert 'id="nav-standing"' in response.text


def test_create_list_use_and_revoke_in_the_page(
    airflow: AirflowHarness, new_page: PageFactory, task_id: str, opened: Callable[..., str], screenshot_dir: Path
) -> None:
    page = new_page(DESKTOP)
    errors = watch_errors(page)
    login(page, airflow, "alice", "/hitl/ui/standing")
    expect(page.locator("#nav-standing")).to_have_class("tab active")
    expect(page.locator("#s-zone")).not_to_have_text("")

    # A window longer than [hitl] standing_approval_max_days: refused, the field named, nothing stored.
    page.locator("#s-dag").fill(DAG_ID)
    page.locator("#s-task").fill(task_id)
    page.locator("#s-until").fill(local(utcnow() + dt.timedelta(days=400)))
    page.locator("#s-uses").fill("3")
    page.locator("#s-comment").fill("the nightly loads are reviewed on Fridays")
    page.locator("#s-create").click()
    expect(page.locator("#s-error")).to_contain_text("valid_until")
    expect(page.locator("#s-until")).to_have_attribute("aria-invalid", "true")
    assert standing_of(airflow, "alice", task_id) == []

    page.locator("#s-until").fill(local(utcnow() + dt.timedelta(days=5)))
    page.locator("#s-create").click()
    expect(page.locator("#s-error")).to_be_hidden()
    row = page.locator("#s-rows tr.standing-row.active")
    expect(row).to_have_count(1)
    expect(row.locator(".s-approver")).to_have_text("alice")
    expect(row.locator(".s-scope")).to_have_text(f"{DAG_ID} · {task_id}")
    expect(row.locator(".s-uses")).to_have_text("3 of 3")
    expect(row.locator(".s-comment")).to_have_text("the nightly loads are reviewed on Fridays")
    (made,) = standing_of(airflow, "alice", task_id)
    assert (made.max_uses, made.uses_left, made.revoked_at) == (3, 3, None)
    expect(row).to_have_attribute("data-id", made.id)
    row = page.locator(f'#s-rows tr[data-id="{made.id}"]')

    # A gate needing two approvals opens: alice's standing approval votes at once, the card says so.
    waiting = opened(required_approvals=2)
    standing_vote(airflow, waiting, "alice")
    inbox = new_page(DESKTOP)
    inbox_errors = watch_errors(inbox)
    login(inbox, airflow, "bob", "/hitl/ui/")
    item = card(inbox, waiting)
    ahead = "approved ahead by alice, standing approval, 2 uses left"
    expect(item.locator(".meta.standing .standing-note")).to_have_text(ahead)
    expect(item).to_contain_text("1 of 2 approvals")
    inbox.screenshot(path=str(screenshot_dir / "standing-card-desktop.png"))
    item.get_by_role("button", name="Review").click()
    expect(inbox.locator("#m-votes li.vote.standing .standing-note")).to_have_text(ahead)
    expect(inbox.locator("#m-votes li.vote.standing")).to_contain_text("the nightly loads are reviewed on Fridays")
    inbox.locator("#m-close").click()

    # A request alice opens herself: her standing approval may not approve her own, and the detail says why.
    own = opened(user="alice", title="Load alice's own batch")
    wait_until(lambda: [o["status"] for o in owed(airflow, own)] == ["skipped"], timeout=120, what="the skipped vote")
    card(inbox, own).get_by_role("button", name="Review").click()
    skipped = inbox.locator("#m-standing li.standing-skipped")
    expect(skipped).to_contain_text("alice's standing approval did not vote: ")
    expect(inbox.locator("#m-votes")).to_contain_text("No votes yet.")
    inbox.locator("#m-close").click()

    # One approval needed: the standing vote decides it alone, and the history names it.
    decided = opened(title="Load the late batch")
    wait_until(lambda: airflow.manager.queries.get(decided).state == "approved", timeout=120, what="decided ahead")
    assert airflow.manager.queries.get(decided).decision_source == "standing"
    inbox.goto("/hitl/ui/history")
    entry = inbox.locator(f'#timeline li.event[data-id="{decided}"]')
    once_more = "approved ahead by alice, standing approval, 1 use left"
    expect(entry.locator(".who-standing")).to_have_text(once_more)
    expect(entry.locator(".votes li.vote.standing .standing-note")).to_have_text(once_more)
    inbox.screenshot(path=str(screenshot_dir / "standing-history-desktop.png"))

    # The list follows: one use left; revoked in the page after a confirmation.
    page.reload()
    expect(row.locator(".s-uses")).to_have_text("1 of 3")
    page.screenshot(path=str(screenshot_dir / "standing-page-desktop.png"), full_page=True)
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    row.locator(".s-revoke").click()
    expect(row).to_have_class("standing-row revoked")
    expect(row.locator(".s-revoke")).to_have_count(0)
    assert asked and task_id in asked[0]
    (after,) = standing_of(airflow, "alice", task_id)
    assert after.revoked_by == "alice" and after.uses_left == 1
    assert errors == [] and inbox_errors == []


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_the_page_in_light_and_dark_at_375px_by_keyboard(
    airflow: AirflowHarness, new_page: PageFactory, task_id: str, mode: str, screenshot_dir: Path
) -> None:
    body = {
        "dag_id": DAG_ID,
        "task_id": task_id,
        "valid_until": (utcnow() + dt.timedelta(days=2)).isoformat(),
        "max_uses": None,
        "comment": "a long comment that has to wrap on a phone: every partition of the events table, reloaded",
    }
    made = airflow.api("POST", STANDING, user="carol", json_body=body, expect=(201,)).json()
    page = new_page(PHONE, color_scheme=mode)
    errors = watch_errors(page)
    login(page, airflow, "carol", "/hitl/ui/standing")
    expect(page.locator("html")).to_have_attribute("data-theme", mode)
    # On a phone the tab says "Standing"; its name stays whole.
    expect(page.locator("#nav-standing")).to_have_accessible_name("Standing approvals")
    row = page.locator(f'#s-rows tr[data-id="{made["id"]}"]')
    expect(row.locator(".s-uses")).to_have_text("no use limit")
    expect(row.locator(".s-state")).to_have_text("active")
    background, text = page_colours(page)
    if mode == "dark":
        assert background < 0.35 < text, (background, text)
    else:
        assert background > 0.8 > text, (background, text)
    # Nothing wider than the screen: no sideways scrolling, every control inside it.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert_inside(page)
    page.screenshot(path=str(screenshot_dir / f"standing-phone-{mode}.png"), full_page=True)

    # The keyboard alone reaches the form, the tabs and the row's Revoke button.
    reached: list[str] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id || document.activeElement.className")
        reached.append(focused)
        if "s-revoke" in focused:
            break
    assert {"nav-standing", "s-dag", "s-comment", "s-create"} <= set(reached), reached
    assert "s-revoke" in reached[-1], reached
    focused_row = page.evaluate("document.activeElement.closest('tr').dataset.id")
    assert focused_row == made["id"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    expect(row).to_have_class("standing-row revoked")
    assert errors == []

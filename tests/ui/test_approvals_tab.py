"""The Approvals tab in a real Airflow 3 UI, driven through headless Debian Chromium.

Each test signs in through Airflow's own login page, works in the pages the plugin serves
(embedded in the Airflow UI or opened directly at ``/hitl/ui/``), and checks the outcome
where it really lands: the approval store the gates read and the DAG runs Airflow reports.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, Route, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.e2e.harness import AirflowHarness, HarnessError, wait_until
from tests.ui.conftest import DESKTOP, PHONE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API = "/hitl/api/v1/approvals"
# What the pages send with every state-changing call; tests calling the API from the page's
# cookie session send the same, so a refusal is the API's verdict and not a CSRF guard's.
XHR = {"X-Requested-With": "XMLHttpRequest"}

PageFactory = Callable[..., Page]


def login(page: Page, airflow: AirflowHarness, user: str, path: str = "/") -> None:
    """Open ``path``; sign in on Airflow's login page it redirects to; wait to be back on ``path``."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/auth/login"))
    # Signed in, Airflow's login page sets the token cookie and goes to ``next``. On a loaded
    # machine that page was seen to come back to the login page once (the token not taken yet,
    # logged: POST /auth/token 201, then the page 303 to the login), where a person signs in
    # again: so does this, once, before failing.
    for attempt in (1, 2):
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(airflow.passwords[user])
        page.get_by_role("button", name="Sign in").click()
        try:
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000 if attempt == 1 else 120_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2 or "/auth/login" not in page.url:
                raise
    if path != "/":
        expect(page).to_have_url(re.compile(re.escape(path.split("?")[0])))


def open_gate(airflow: AirflowHarness, dag_id: str, task_id: str, *, user: str) -> tuple[str, str]:
    """Trigger ``dag_id`` as ``user`` and wait for its gate to be pending; return (run_id, approval id).

    A run that fails before its gate opens (on a busy machine Airflow's Execution API can
    stall long enough for a task runner to give up on starting a task) is triggered once more;
    a second failure is an error.
    """
    failures: list[str] = []
    for _ in range(2):
        run_id = airflow.trigger(dag_id, user=user)

        def opened(run_id: str = run_id) -> Any:
            pending = [a for a in airflow.approvals(dag_id, run_id, task_id) if a.state == "pending"]
            if pending:
                return pending[-1]
            return "failed" if airflow.dag_run(dag_id, run_id)["state"] == "failed" else None

        result = wait_until(opened, timeout=240, interval=0.5, what=f"the gate of {dag_id}/{run_id} to open")
        if result != "failed":
            return run_id, result.id
        failures.append(f"{run_id}: {airflow.task_states(dag_id, run_id)}")
    raise HarnessError(f"{dag_id} failed before its gate opened, twice: {failures}\n{airflow.dump_logs(lines=40)}")


def card(page_or_frame: Any, approval_id: str) -> Any:
    """The inbox card of one approval."""
    return page_or_frame.locator(f'li.card[data-id="{approval_id}"]')


def run_href(dag_id: str, run_id: str) -> str:
    """Airflow's own page of a run, as the cards link it (encodeURIComponent == quote(safe=''))."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


class TestPagesWithoutBrowser:
    """Plain HTTP: sign-in redirect, headers and static files."""

    def test_page_without_cookie_redirects_to_airflow_login(self, airflow: AirflowHarness) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            for path in ("/hitl/ui/", "/hitl/ui/history", "/hitl/ui/task?dag_id=a&run_id=b&task_id=c"):
                response = client.get(path, follow_redirects=False)
                assert response.status_code == 303, path
                location = response.headers["location"]
                assert location.startswith("/api/v2/auth/login?next="), location
                # A forged cookie is no better than none.
                forged = client.get(path, headers={"Cookie": "_token=not-a-jwt"}, follow_redirects=False)
                assert forged.status_code == 303

    def test_page_with_token_has_strict_headers(self, airflow: AirflowHarness) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            response = client.get("/hitl/ui/", headers={"Cookie": f"_token={airflow.token('alice')}"})
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert 'data-user="alice"' in response.text

    @pytest.mark.parametrize(
        ("name", "status", "media"),
        [
            ("hitl.js", 200, "text/javascript"),
            ("hitl.css", 200, "text/css"),
            ("approvals.svg", 200, "image/svg+xml"),
            ("..%2F__init__.py", 404, None),
            ("nope.js", 404, None),
        ],
        ids=["script", "stylesheet", "icon", "traversal", "missing"],
    )
    def test_static_files(self, airflow: AirflowHarness, name: str, status: int, media: str | None) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            response = client.get(f"/hitl/ui/static/{name}")
        assert response.status_code == status
        if media:
            assert response.headers["content-type"].startswith(media)

    def test_page_decisions_refuse_cross_site_requests(self, airflow: AirflowHarness) -> None:
        url = f"/hitl/ui/api/approvals/{uuid.uuid4()}/approve"
        cookie = {"Cookie": f"_token={airflow.token('alice')}"}  # sent as a browser sends it
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            # A cross-site form post: the cookie rides along, the custom header cannot.
            forged = client.post(url, headers=cookie, data={"comment": "x"})
            assert forged.status_code == 403 and "X-Requested-With" in forged.json()["detail"]
            other_site = client.post(url, json={}, headers={**cookie, **XHR, "Origin": "https://evil.example"})
            assert other_site.status_code == 403
            anonymous = client.post(url, json={}, headers=XHR)
            assert anonymous.status_code == 401
            # Same site, header present: past the guard, to the lookup of the unknown id.
            assert client.post(url, json={}, headers={**cookie, **XHR}).status_code == 404
            origin = {**XHR, "Origin": airflow.base_url}
            assert client.post(url, json={}, headers={**cookie, **origin}).status_code == 404

    def test_external_views_registered(self, airflow: AirflowHarness) -> None:
        plugins = airflow.api("GET", "/api/v2/plugins").json()["plugins"]
        views = {v["url_route"]: v for p in plugins for v in p["external_views"]}
        assert views["approvals"]["destination"] == "nav"
        assert views["approvals"]["href"] == "/hitl/ui/"
        assert views["hitl-approval"]["destination"] == "task_instance"
        assert "{TASK_ID}" in views["hitl-approval"]["href"]


class TestApproveFromModal:
    """Sign in, open Approvals from Airflow's nav, approve from the modal, the run succeeds."""

    def test_approve_gate_from_nav_modal(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        dag_id = "hitl_model_release"
        run_id, approval_id = open_gate(airflow, dag_id, "approve_release", user="bob")
        page = new_page()
        login(page, airflow, "alice")
        page.get_by_role("link", name="Approvals").click()
        expect(page).to_have_url(re.compile(r"/plugin/approvals"))
        frame = page.frame_locator('iframe[title="Approvals"]')

        item = card(frame, approval_id)
        expect(item).to_be_visible()
        expect(frame.locator("#pending-count")).to_have_text(re.compile(r"^[1-9]\d*$"))
        expect(item.locator("a.run")).to_have_attribute("href", run_href(dag_id, run_id))
        expect(item.locator(".countdown")).to_have_text(re.compile(r"expires in 3h 5\dm"))
        expect(item).to_have_class(re.compile(r"risk-high"))  # metadata.risk of the example DAG

        item.get_by_role("button", name="Review").click()
        modal = frame.locator("#modal")
        expect(modal).to_be_visible()
        expect(modal.locator("#m-title")).to_have_text("Release churn model 1.4.0 to production")
        expect(modal.locator("#m-requested-by")).to_have_text("bob")
        expect(modal.locator("#m-context")).to_contain_text("Accuracy: 0.962 (96.2%)")
        expect(modal.locator("#m-quorum")).to_have_text("(0 of 1 approvals, 1 still needed)")
        expect(modal.locator("#m-history-link")).to_have_attribute("href", f"/hitl/ui/history?dag_id={dag_id}")
        modal.locator("#m-json-details summary").click()
        expect(modal.locator("#m-json")).to_contain_text('"accuracy": 0.962')

        modal.locator("#m-comment").fill("metrics look right, ship it")
        modal.locator("#m-approve").click()
        # Nothing is sent before the confirmation step.
        expect(modal.locator("#m-confirm")).to_be_visible()
        assert airflow.manager.queries.get(approval_id).state == "pending"
        modal.locator("#m-confirm-ok").click()
        expect(modal).to_be_hidden()
        expect(item).to_have_count(0)

        decided = airflow.manager.queries.get(approval_id)
        assert (decided.state, decided.decided_by, decided.comment, decided.decision_source) == (
            "approved",
            "alice",
            "metrics look right, ship it",
            "ui",
        )
        airflow.wait_for_run_state(dag_id, run_id, "success", timeout=240)

    def test_run_link_opens_airflow_run_page(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        run_id, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice")
        page.get_by_role("link", name="Approvals").click()
        frame = page.frame_locator('iframe[title="Approvals"]')
        card(frame, approval_id).locator("a.run").click()
        # The Airflow UI itself (not a copy inside the frame) now shows the run.
        expect(page).to_have_url(re.compile(re.escape(run_href("e2e_gate", run_id)) + "$"))
        expect(page.locator('iframe[title="Approvals"]')).to_have_count(0)


class TestLiveAndFilters:
    """Decisions made elsewhere show up without a reload; the inbox filters and sorts."""

    def test_decision_elsewhere_updates_open_page(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, first = open_gate(airflow, "e2e_gate", "gate", user="admin")
        _, second = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        expect(card(page, first)).to_be_visible()
        expect(card(page, second)).to_be_visible()
        page.evaluate("window.__same_document = true")  # gone if the page reloads

        card(page, first).get_by_role("button", name="Review").click()
        airflow.api("POST", f"{API}/{first}/approve", user="carol", json_body={"comment": "from elsewhere"})
        # The open decision view follows the request: approved, buttons off, carol's vote listed.
        expect(page.locator("#m-state")).to_have_text("approved", timeout=20_000)
        expect(page.locator("#m-approve")).to_be_disabled()
        expect(page.locator("#m-votes")).to_contain_text("carol")
        page.locator("#m-close").click()
        expect(card(page, first)).to_have_count(0)

        airflow.api("POST", f"{API}/{second}/reject", user="carol", json_body={"reason": "elsewhere"})
        expect(card(page, second)).to_have_count(0, timeout=20_000)
        assert page.evaluate("window.__same_document") is True

    def test_filters_and_sort(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, gate_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        _, release_id = open_gate(airflow, "hitl_model_release", "approve_release", user="bob")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        expect(card(page, release_id)).to_be_visible()
        expect(card(page, gate_id)).to_be_visible()

        # Soonest expiry first: the release gate expires in 4 h, the e2e gate never.
        ids = page.locator("li.card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        assert ids.index(release_id) < ids.index(gate_id)
        page.locator("#sort").select_option("requested_desc")
        ids = page.locator("li.card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        assert ids.index(release_id) < ids.index(gate_id)  # requested later
        page.locator("#sort").select_option("requested_asc")
        ids = page.locator("li.card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        assert ids.index(gate_id) < ids.index(release_id)

        page.locator("#filter-dag").select_option("hitl_model_release")
        expect(card(page, gate_id)).to_have_count(0)
        expect(card(page, release_id)).to_be_visible()
        dags = page.locator("li.card").evaluate_all("cards => cards.map(c => c.dataset.dagId)")
        assert set(dags) == {"hitl_model_release"}
        expect(page.locator("#pending-count")).to_have_text(str(len(dags)))

        page.locator("#filter-state").select_option("escalated")
        expect(page.locator("li.card")).to_have_count(0)
        expect(page.locator("#empty")).to_be_visible()
        page.locator("#filter-state").select_option("")
        page.locator("#filter-age").select_option("-604800")  # older than 7 days: none
        expect(page.locator("li.card")).to_have_count(0)
        page.locator("#filter-age").select_option("3600")
        expect(card(page, release_id)).to_be_visible()
        for approval_id in (gate_id, release_id):
            airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


class TestOwnRun:
    """The user who triggered the run may not approve it, but may still reject it."""

    def test_requester_can_reject_but_not_approve(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, approval_id = open_gate(airflow, "hitl_model_release", "approve_release", user="bob")
        page = new_page()
        login(page, airflow, "bob", "/hitl/ui/")
        card(page, approval_id).get_by_role("button", name="Review").click()
        expect(page.locator("#m-approve")).to_be_disabled()
        expect(page.locator("#m-reject")).to_be_enabled()
        expect(page.locator("#m-disabled-reason")).to_contain_text("you triggered this run")
        refused = page.request.post(f"{API}/{approval_id}/approve", data={}, headers=XHR)
        assert refused.status == 403
        page.locator("#m-reason-input").fill("withdrawn by the requester")
        page.locator("#m-reject").click()
        page.locator("#m-confirm-ok").click()
        expect(page.locator("#modal")).to_be_hidden()
        assert airflow.manager.queries.get(approval_id).state == "rejected"


class TestReject:
    """Rejecting needs a reason: the page refuses without one, so does the API."""

    def test_reject_requires_reason(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        run_id, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        card(page, approval_id).get_by_role("button", name="Review").click()

        page.locator("#m-reject").click()
        expect(page.locator("#m-error")).to_have_text("A reason is required to reject.")
        expect(page.locator("#m-confirm")).to_be_hidden()
        assert airflow.manager.queries.get(approval_id).state == "pending"

        refused = page.request.post(f"{API}/{approval_id}/reject", data={"comment": "no reason"}, headers=XHR)
        assert refused.status == 422
        blank = page.request.post(f"{API}/{approval_id}/reject", data={"reason": "   "}, headers=XHR)
        assert blank.status == 422
        unchanged = airflow.manager.queries.get(approval_id)
        assert unchanged.state == "pending" and not unchanged.votes

        page.locator("#m-reason-input").fill("numbers do not add up")
        page.locator("#m-reject").click()
        expect(page.locator("#m-confirm-text")).to_contain_text("Reject")
        page.locator("#m-confirm-ok").click()
        expect(page.locator("#modal")).to_be_hidden()
        expect(card(page, approval_id)).to_have_count(0)

        rejected = airflow.manager.queries.get(approval_id)
        assert rejected.state == "rejected" and rejected.decided_by == "alice"
        assert (rejected.votes[0].reason, rejected.votes[0].source) == ("numbers do not add up", "ui")
        airflow.wait_for_ti_state("e2e_gate", run_id, "gate", "failed", timeout=240)


class TestViewer:
    """A viewer sees the request but every decision is refused, in the page and by the API."""

    def test_viewer_cannot_decide(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "viewer", "/hitl/ui/")
        item = card(page, approval_id)
        expect(item).to_be_visible()
        expect(item.locator(".badge.cannot")).to_contain_text("edit access")

        item.get_by_role("button", name="Review").click()
        expect(page.locator("#m-approve")).to_be_disabled()
        expect(page.locator("#m-reject")).to_be_disabled()
        expect(page.locator("#m-disabled-reason")).to_contain_text("You cannot approve: you do not have edit access")
        expect(page.locator("#m-approve")).to_have_attribute("title", re.compile("edit access"))

        for action, body in (("approve", {"comment": "me too"}), ("reject", {"reason": "because"})):
            response = page.request.post(f"{API}/{approval_id}/{action}", data=body, headers=XHR)
            assert response.status == 403, (action, response.text())
        bulk = page.request.post(f"{API}/bulk", data={"ids": [approval_id], "action": "approve"}, headers=XHR)
        assert bulk.json()["results"][0]["status_code"] == 403
        # The pages' own decision endpoints refuse too.
        page_call = page.request.post(f"/hitl/ui/api/approvals/{approval_id}/approve", data={}, headers=XHR)
        assert page_call.status == 403, page_call.text()
        assert airflow.manager.queries.get(approval_id).state == "pending"
        # Leave nothing waiting for the other tests.
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


class TestBulk:
    """Select three pending gates, approve them with one confirmation, see each result."""

    def test_bulk_approve_three(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        gates = [open_gate(airflow, "e2e_gate", "gate", user="admin") for _ in range(3)]
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/")
        for _, approval_id in gates:
            card(page, approval_id).locator("input.select").check()
        expect(page.locator("#selected-count")).to_have_text("3 selected")

        page.locator("#bulk-approve").click()
        dialog = page.locator("#bulk-modal")
        expect(dialog.locator("#b-title")).to_have_text("Approve 3 requests?")
        expect(dialog.locator("#b-list li")).to_have_count(3)
        dialog.locator("#b-comment").fill("batch release")
        dialog.locator("#b-confirm").click()

        expect(dialog.locator("#b-results .summary")).to_have_text("3 succeeded, 0 failed")
        expect(dialog.locator("#b-results li.result.ok")).to_have_count(3)
        for _, approval_id in gates:
            expect(dialog.locator(f'#b-results li[data-id="{approval_id}"]')).to_contain_text("now approved")
            approval = airflow.manager.queries.get(approval_id)
            assert (approval.state, approval.decided_by, approval.decision_source) == ("approved", "alice", "bulk")
        for run_id, _ in gates:
            airflow.wait_for_run_state("e2e_gate", run_id, "success", timeout=240)


def approved_and_rejected(airflow: AirflowHarness) -> tuple[str, str]:
    """Two gates of ``e2e_gate`` decided: one approved by alice, one rejected by carol; their ids."""
    _, approved_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
    _, rejected_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
    airflow.api("POST", f"{API}/{approved_id}/approve", user="alice", json_body={"comment": "fine"})
    airflow.api("POST", f"{API}/{rejected_id}/reject", user="carol", json_body={"reason": "carol says no"})
    return approved_id, rejected_id


class TestHistory:
    """The timeline filtered by approver and state, and the CSV export of the same filter."""

    def test_history_filter_and_csv(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        approved_id, rejected_id = approved_and_rejected(airflow)
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/history")
        timeline = page.locator("#timeline")
        expect(timeline.locator(f'li[data-id="{approved_id}"]')).to_be_visible()

        page.locator("#h-approver").fill("carol")
        page.locator("#h-state").select_option("rejected")
        page.locator("#h-dag").fill("e2e_gate")
        page.locator("#h-apply").click()
        entry = timeline.locator(f'li[data-id="{rejected_id}"]')
        expect(entry).to_be_visible()
        expect(timeline.locator(f'li[data-id="{approved_id}"]')).to_have_count(0)
        expect(entry.locator(".who")).to_have_text("carol")
        expect(entry.locator(".source")).to_have_text("api")
        expect(entry).to_contain_text("carol says no")
        # Each filter change asks again, and every earlier answer is a superset of the last one:
        # once the timeline holds as many entries as the API's answer to the whole filter, the
        # page shows that answer, not an intermediate one.
        expected = airflow.api(
            "GET",
            f"{API}/history",
            user="alice",
            params={"state": "rejected", "decided_by": "carol", "dag_id": "e2e_gate"},
        ).json()
        assert rejected_id in {item["id"] for item in expected["approvals"]}
        shown = timeline.locator("li.event")
        expect(shown).to_have_count(expected["total_entries"])
        expect(timeline.locator("li.event:not(.rejected)")).to_have_count(0)
        for index in range(expected["total_entries"]):
            expect(shown.nth(index).locator(".who")).to_have_text("carol")
            expect(shown.nth(index).locator(".badge").first).to_have_text("rejected")
        expect(page).to_have_url(re.compile(r"decided_by=carol"))

        # Date range, in the browser's own calendar: today keeps the entry, yesterday drops it.
        today, yesterday = page.evaluate(
            """() => [0, 1].map(back => {
                const d = new Date(Date.now() - back * 86400000);
                return [d.getFullYear(), d.getMonth() + 1, d.getDate()].map(n => String(n).padStart(2, "0")).join("-");
            })"""
        )
        page.locator("#h-since").fill(today)
        page.locator("#h-apply").click()
        expect(entry).to_be_visible()
        page.locator("#h-since").fill(yesterday)
        page.locator("#h-until").fill(yesterday)
        page.locator("#h-apply").click()
        expect(entry).to_have_count(0)
        expect(page.locator("#empty")).to_be_visible()
        page.locator("#h-since").fill(today)
        page.locator("#h-until").fill(today)
        page.locator("#h-apply").click()
        expect(entry).to_be_visible()

        with page.expect_download() as info:
            page.locator("#csv-link").click()
        download = info.value
        assert download.suggested_filename.endswith(".csv")
        rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
        assert rows, "the export has a header and at least one row"
        assert {r["decided_by"] for r in rows} == {"carol"}
        assert {r["state"] for r in rows} == {"rejected"}
        assert {r["dag_id"] for r in rows} == {"e2e_gate"}
        assert rejected_id in {r["id"] for r in rows}
        expect(shown).to_have_count(len(rows))

    def test_an_older_filters_late_answer_does_not_replace_the_newer_ones(
        self, airflow: AirflowHarness, new_page: PageFactory
    ) -> None:
        approved_id, rejected_id = approved_and_rejected(airflow)
        page = new_page()
        login(page, airflow, "alice", "/hitl/ui/history")
        timeline = page.locator("#timeline")
        approved, rejected = (timeline.locator(f'li[data-id="{i}"]') for i in (approved_id, rejected_id))
        expect(approved).to_be_visible()

        # The answer for "approved" is held back until the one for "rejected", asked after it, is shown.
        held: list[Route] = []
        asking_approved = re.compile(r".*/approvals/history\?.*state=approved")
        page.route(asking_approved, lambda route: held.append(route))
        page.locator("#h-state").select_option("approved")
        for _ in range(600):  # Playwright runs the route's handler only inside its own calls
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the page did not ask for the history with state=approved"
        page.locator("#h-state").select_option("rejected")
        expect(rejected).to_be_visible()
        expect(approved).to_have_count(0)

        with page.expect_response(lambda r: "state=approved" in r.url) as late:
            held[0].continue_()
        page.unroute(asking_approved)
        late.value.finished()
        # The page reads the late answer within milliseconds: for 3 s it must keep the newer one.
        for _ in range(30):
            assert (approved.count(), rejected.count()) == (0, 1), "the older filter's answer replaced the newer's"
            page.wait_for_timeout(100)
        expect(page.locator("#h-state")).to_have_value("rejected")


class TestUntrustedText:
    """Titles, descriptions and context with markup and scripts are shown as text, never run."""

    def test_script_and_img_payloads_render_as_text(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        run_id, approval_id = open_gate(airflow, "ui_xss", "gate", user="admin")
        page = new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        login(page, airflow, "alice", "/hitl/ui/")

        item = card(page, approval_id)
        expect(item.locator(".title")).to_have_text(
            "Payload <img src=x onerror=\"window.__hitl_xss = 'img'; alert('xss-img')\">"
        )
        item.get_by_role("button", name="Review").click()
        expect(page.locator("#m-description")).to_contain_text("<script>window.__hitl_xss")
        expect(page.locator("#m-context")).to_contain_text("<script>window.__hitl_xss = 'script'")
        page.locator("#m-json-details summary").click()
        expect(page.locator("#m-json")).to_contain_text("<img src=x onerror")

        page.goto(f"/hitl/ui/task?dag_id=ui_xss&run_id={quote(run_id, safe='')}&task_id=gate&map_index=-1")
        expect(page.locator("#m-title")).to_contain_text("<img src=x onerror")
        page.wait_for_timeout(1500)  # give any injected handler time to fire

        for where in (page,):
            assert where.evaluate("window.__hitl_xss") is None
            assert where.locator("main img, main script").count() == 0
        assert dialogs == []
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


class TestTaskInstanceTab:
    """The task_instance external view: the task's approval, decided right there."""

    def test_decide_from_task_instance_tab(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        run_id, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        page = new_page()
        login(page, airflow, "alice")
        page.goto(f"/dags/e2e_gate/runs/{quote(run_id, safe='')}/tasks/gate")
        page.get_by_role("link", name="Approval", exact=True).or_(
            page.get_by_role("tab", name="Approval", exact=True)
        ).first.click()
        expect(page).to_have_url(re.compile(r"/tasks/gate/plugin/hitl-approval"))
        frame = page.frame_locator('iframe[title="Approval"]')
        expect(frame.locator("#m-title")).to_have_text("e2e gate")
        expect(frame.locator("#m-state")).to_have_text("pending")
        frame.locator("#m-approve").click()
        frame.locator("#m-confirm-ok").click()
        expect(frame.locator("#m-state")).to_have_text("approved")
        expect(frame.locator("#m-approve")).to_be_disabled()
        assert airflow.manager.queries.get(approval_id).state == "approved"
        airflow.wait_for_run_state("e2e_gate", run_id, "success", timeout=240)


class TestScreenshots:
    """Inbox, modal and history in light and dark, at desktop and phone width, for the README.

    Written to a temporary folder; ``make screenshots`` points ``HITL_SCREENSHOTS_DIR`` at
    docs/images to refresh the pictures the README shows.
    """

    def test_screenshots(self, airflow: AirflowHarness, new_page: PageFactory, screenshot_dir: Path) -> None:
        from tests.ui.test_airflow_look import set_appearance

        _, release_id = open_gate(airflow, "hitl_model_release", "approve_release", user="bob")
        extra = [open_gate(airflow, "e2e_gate", "gate", user="admin")[1] for _ in range(2)]
        # The history shows a decision even when this test runs alone (make screenshots).
        body = {"dag_id": "e2e_gate", "title": "Refresh the sales dashboard"}
        decided = airflow.api("POST", API, json_body=body, expect=(201,)).json()["id"]
        airflow.api("POST", f"{API}/{decided}/approve", user="carol", json_body={"comment": "numbers match the source"})
        names = []
        for mode in ("light", "dark"):
            desktop = new_page(DESKTOP)
            login(desktop, airflow, "alice")
            desktop.goto("/plugin/approvals")
            frame = desktop.frame_locator('iframe[title="Approvals"]')
            expect(card(frame, release_id)).to_be_visible()
            set_appearance(desktop, mode)
            expect(frame.locator("html")).to_have_attribute("data-theme", mode)
            expect(card(frame, release_id)).to_be_visible()
            desktop.screenshot(path=str(screenshot_dir / f"approvals-inbox-desktop-{mode}.png"))
            card(frame, release_id).get_by_role("button", name="Review").click()
            expect(frame.locator("#m-context")).to_contain_text("Accuracy")
            desktop.screenshot(path=str(screenshot_dir / f"approvals-modal-desktop-{mode}.png"))
            frame.locator("#m-close").click()
            frame.locator("#nav-history").click()
            expect(frame.locator("#timeline li.event").first).to_be_visible()
            desktop.screenshot(path=str(screenshot_dir / f"approvals-history-desktop-{mode}.png"))

            phone = new_page(PHONE, color_scheme=mode)
            login(phone, airflow, "alice", "/hitl/ui/")
            expect(phone.locator("html")).to_have_attribute("data-theme", mode)
            expect(card(phone, release_id)).to_be_visible()
            # No sideways scrolling at 375 px.
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            phone.screenshot(path=str(screenshot_dir / f"approvals-inbox-phone-{mode}.png"))
            card(phone, release_id).get_by_role("button", name="Review").click()
            expect(phone.locator("#m-context")).to_contain_text("Accuracy")
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            phone.screenshot(path=str(screenshot_dir / f"approvals-modal-phone-{mode}.png"))
            names += [f"{page}-{mode}" for page in ("inbox-desktop", "modal-desktop", "history-desktop")]
            names += [f"{page}-{mode}" for page in ("inbox-phone", "modal-phone")]

        for name in names:
            assert (screenshot_dir / f"approvals-{name}.png").stat().st_size > 10_000
        for approval_id in (release_id, *extra):
            airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")

"""The server side of the Approvals pages (:mod:`airflow_hitl.api.routes.ui`), through Airflow's api-server app.

Pages are signed in by the Airflow UI's ``_token`` cookie (a real token of the test users)
and answer with strict headers; without a session they send the browser to Airflow's login.
Decisions from the pages go through ``/hitl/ui/api/...``: recorded with source ``ui`` (or
``bulk``) and refused unless they come from a page of this site. What the pages do in a
browser is in ``tests/ui``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from airflow_hitl import __version__, vocabulary
from airflow_hitl.api.routes.ui import SECURITY_HEADERS
from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import AirflowApi, open_request, snapshot

UI = "/hitl/ui"
XHR = {"X-Requested-With": "XMLHttpRequest"}
#: Debian's Chromium, as tests/ui drives it (never a downloaded browser).
CHROMIUM = os.environ.get("HITL_CHROMIUM", "/usr/bin/chromium")


class _Body(HTMLParser):
    """The attributes of a page's ``<body>``."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.attrs = dict(attrs)


def body_attrs(html: str) -> dict[str, Any]:
    """``data-*`` attributes of the page's body, without the prefix."""
    parser = _Body()
    parser.feed(html)
    return {k.removeprefix("data-"): v for k, v in parser.attrs.items() if k.startswith("data-")}


def cookie(api: AirflowApi, user: str) -> dict[str, str]:
    """The Airflow UI's session cookie of ``user``."""
    return {"_token": api.tokens[user]}


def page_post(api: AirflowApi, path: str, user: str | None, body: dict[str, Any], headers: dict[str, str] = XHR) -> Any:
    """POST ``body`` to ``/hitl/ui/api/approvals/<path>`` as a page of ``user`` would (cookie and header)."""
    cookies = cookie(api, user) if user else {}
    return api.client.post(f"{UI}/api/approvals/{path}", cookies=cookies, headers=headers, json=body)


def _quoted(path: str) -> str:
    """``path`` as the login redirect carries it in ``next``."""
    return quote(path, safe="")


class TestPages:
    @pytest.mark.parametrize(
        ("path", "page"),
        [
            ("/", "inbox"),
            ("/history", "history"),
            ("/delegations", "delegations"),
            ("/standing", "standing"),
            ("/task?dag_id=d", "task"),
        ],
    )
    def test_a_page_is_rendered_for_the_cookies_user_with_strict_headers(
        self, api: AirflowApi, path: str, page: str
    ) -> None:
        response = api.client.get(f"{UI}{path}", cookies=cookie(api, "alice"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        attrs = body_attrs(response.text)
        assert (attrs["page"], attrs["user"]) == (page, "alice")
        assert (attrs["app-base"], attrs["api-base"], attrs["airflow-base"]) == ("/hitl", "/hitl/api/v1", "")
        assert json.loads(attrs["vocabulary"]) == vocabulary.for_pages()
        assert f'src="/hitl/ui/static/hitl.js?v={__version__}"' in response.text

    def test_the_top_bar_names_the_user_and_roles_and_the_task_tab_has_none(self, api: AirflowApi) -> None:
        assert "alice · user" in api.client.get(f"{UI}/", cookies=cookie(api, "alice")).text
        assert 'class="topbar"' not in api.client.get(f"{UI}/task", cookies=cookie(api, "alice")).text

    def test_the_policy_allows_no_inline_script(self) -> None:
        policy = SECURITY_HEADERS["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'self'" in policy

    @pytest.mark.parametrize(
        "path", ["/", "/history", "/delegations", "/standing", "/task?dag_id=a&run_id=b&task_id=c"]
    )
    def test_without_a_session_the_browser_goes_to_airflows_login_and_back(self, api: AirflowApi, path: str) -> None:
        for cookies in ({}, {"_token": "not-a-jwt"}):
            response = api.client.get(f"{UI}{path}", cookies=cookies, follow_redirects=False)
            assert response.status_code == 303
            location = response.headers["location"]
            assert location.startswith("/api/v2/auth/login?next=")
            assert location.split("next=", 1)[1] == _quoted(f"{UI}{path}")

    def test_the_root_without_a_slash_redirects_to_it(self, api: AirflowApi) -> None:
        response = api.client.get(UI, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == f"{UI}/"

    @pytest.mark.parametrize(("given", "shown"), [("-1", "-1"), ("3", "3"), ("{MAP_INDEX}", ""), ("x1", "")], ids=str)
    def test_the_task_view_takes_the_ids_and_an_integer_map_index(
        self, api: AirflowApi, given: str, shown: str
    ) -> None:
        params = {"dag_id": "billing", "run_id": "manual__1", "task_id": "gate", "map_index": given}
        response = api.client.get(f"{UI}/task", params=params, cookies=cookie(api, "alice"))
        attrs = body_attrs(response.text)
        assert (attrs["dag-id"], attrs["run-id"], attrs["task-id"], attrs["map-index"]) == (
            "billing",
            "manual__1",
            "gate",
            shown,
        )

    def test_values_in_a_page_are_escaped(self, api: AirflowApi) -> None:
        hostile = '"><script>alert(1)</script>'
        response = api.client.get(f"{UI}/task", params={"dag_id": hostile}, cookies=cookie(api, "alice"))
        assert "<script>alert(1)</script>" not in response.text
        assert body_attrs(response.text)["dag-id"] == hostile

    @pytest.mark.parametrize(("user", "admin"), [("admin", "true"), ("alice", "false")])
    def test_the_delegations_page_knows_an_admin(self, api: AirflowApi, user: str, admin: str) -> None:
        response = api.client.get(f"{UI}/delegations", cookies=cookie(api, user))
        assert body_attrs(response.text)["admin"] == admin
        assert ('id="d-delegator"' in response.text) is (admin == "true")


class TestStatic:
    @pytest.mark.parametrize(
        ("name", "media"),
        [("hitl.js", "text/javascript"), ("hitl.css", "text/css"), ("approvals-dark.svg", "image/svg+xml")],
    )
    def test_package_files_are_served_for_an_hour(self, api: AirflowApi, name: str, media: str) -> None:
        response = api.client.get(f"{UI}/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media)
        assert response.headers["cache-control"] == "public, max-age=3600"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content

    @pytest.mark.parametrize(
        "name",
        [
            "nope.js",
            ".hidden",
            "..%2F__init__.py",
            "..%5C__init__.py",
            "%2Fetc%2Fpasswd",
            # Longer than any file name may be: the filesystem's OSError was a 500 (issue 23).
            "a" * 5000,
            "x" * 300 + ".js",
            "hitl.js%00.txt",
        ],
    )
    def test_anything_else_is_404(self, api: AirflowApi, name: str) -> None:
        assert api.client.get(f"{UI}/static/{name}").status_code == 404


class TestDecisionsFromThePages:
    def test_approve_is_recorded_with_source_ui(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gate = open_request(api_manager)
        response = api.client.post(
            f"{UI}/api/approvals/{gate.id}/approve", cookies=cookie(api, "op"), headers=XHR, json={"comment": "ok"}
        )
        assert response.status_code == 200, response.text
        assert response.json() == api_manager.queries.get(gate.id).to_dict()
        [vote] = api_manager.queries.get(gate.id).votes
        assert (vote.user, vote.vote, vote.source, vote.comment) == ("op", "approve", "ui", "ok")

    def test_reject_needs_a_reason_and_is_recorded_with_source_ui(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        gate = open_request(api_manager)
        url = f"{UI}/api/approvals/{gate.id}/reject"
        before = snapshot(api_manager)
        missing = api.client.post(url, cookies=cookie(api, "op"), headers=XHR, json={})
        assert missing.status_code == 422
        assert snapshot(api_manager) == before
        response = api.client.post(url, cookies=cookie(api, "op"), headers=XHR, json={"reason": "numbers off"})
        assert response.status_code == 200
        decided = api_manager.queries.get(gate.id)
        assert (decided.state, decided.decision_source, decided.votes[0].reason) == ("rejected", "ui", "numbers off")

    def test_bulk_approves_each_with_source_bulk_and_refuses_cancel(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        gates = [open_request(api_manager, run_id=f"manual__{i}") for i in range(2)]
        ids = [g.id for g in gates]
        before = snapshot(api_manager)
        cancel = api.client.post(
            f"{UI}/api/approvals/bulk",
            cookies=cookie(api, "op"),
            headers=XHR,
            json={"ids": ids, "action": "cancel", "reason": "no"},
        )
        assert cancel.status_code == 422
        assert "the pages only approve or reject" in cancel.text
        assert snapshot(api_manager) == before
        response = api.client.post(
            f"{UI}/api/approvals/bulk", cookies=cookie(api, "op"), headers=XHR, json={"ids": ids, "action": "approve"}
        )
        assert response.status_code == 200
        assert [(r["id"], r["ok"], r["state"]) for r in response.json()["results"]] == [
            (ids[0], True, "approved"),
            (ids[1], True, "approved"),
        ]
        assert {api_manager.queries.get(i).decision_source for i in ids} == {"bulk"}

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            pytest.param({}, 403, id="no-header"),
            pytest.param({**XHR, "Origin": "https://evil.example"}, 403, id="other-site"),
        ],
    )
    def test_a_cross_site_decision_is_refused_and_changes_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, headers: dict[str, str], status: int
    ) -> None:
        gate = open_request(api_manager)
        before = snapshot(api_manager)
        for action, body in (("approve", {}), ("reject", {"reason": "x"})):
            url = f"{UI}/api/approvals/{gate.id}/{action}"
            assert api.client.post(url, cookies=cookie(api, "op"), headers=headers, json=body).status_code == status
        bulk = page_post(api, "bulk", "op", {"ids": [gate.id], "action": "approve"}, headers)
        assert bulk.status_code == status
        assert snapshot(api_manager) == before

    def test_without_edit_access_or_a_known_id_nothing_is_decided(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        gate = open_request(api_manager)
        before = snapshot(api_manager)
        viewer = page_post(api, f"{gate.id}/approve", "viewer", {})
        assert viewer.status_code == 403
        assert "edit access" in viewer.json()["detail"]
        unknown = "00000000-0000-4000-8000-000000000000"
        missing = page_post(api, f"{unknown}/approve", "op", {})
        assert missing.status_code == 404
        anonymous = page_post(api, f"{gate.id}/approve", None, {})
        assert anonymous.status_code == 401
        assert snapshot(api_manager) == before


@pytest.fixture
def browser_of(api: AirflowApi) -> Iterator[Any]:
    """Open a page of this app in headless Chromium as a user: ``browser_of(user, path)`` -> the page.

    Every request of the browser is answered by the in-process app (Playwright's routing), so
    the page, its script and the REST calls it makes are the real ones without an Airflow
    started: the page as a browser renders it, at the cost of one Chromium.
    """
    from playwright.sync_api import sync_playwright

    def answer(route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        # The session cookie is the one the page was opened with; the client passes it on.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "cookie"}}
        response = api.client.request(
            request.method,
            url.path + (f"?{url.query}" if url.query else ""),
            headers=headers,
            content=request.post_data_buffer,
            cookies=cookie(api, user_of[0]),
        )
        kept = {k: v for k, v in response.headers.items() if k.lower() not in {"content-encoding", "content-length"}}
        route.fulfill(status=response.status_code, headers=kept, body=response.content)

    user_of: list[str] = []
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = instance.new_context(base_url="http://testserver")
            context.set_default_timeout(30_000)
            context.route("**/*", answer)

            def open_page(user: str, path: str) -> Any:
                user_of[:] = [user]
                page = context.new_page()
                page.goto(path)
                return page

            yield open_page
        finally:
            instance.close()


class TestBoundValuesShown:
    """A gate's ``bind`` values are what an approval is for: the detail view says so, whole."""

    def test_the_task_view_shows_each_bound_value(self, api_manager: ApprovalManager, browser_of: Any) -> None:
        from playwright.sync_api import expect

        sha = "9f2c" * 16
        open_request(api_manager, run_id="manual__bound", bound={"model": sha, "data": "s3://b/2026-01"})
        page = browser_of("alice", f"{UI}/task?dag_id=billing&run_id=manual__bound&task_id=gate")
        lines = page.locator("#m-bound p")
        expect(lines).to_have_count(2)
        # In the stored order (PostgreSQL's jsonb keeps its own), one line per value.
        assert sorted(lines.all_inner_texts()) == [
            "Approving exactly: data = s3://b/2026-01",
            f"Approving exactly: model = {sha}",
        ]
        expect(page.locator("#m-bound-block")).to_be_visible()
        # Whole, never shortened: the approver compares it with the artifact.
        assert page.locator("#m-bound code").first.inner_text() == sha

    def test_a_gate_without_bind_shows_no_such_line(self, api_manager: ApprovalManager, browser_of: Any) -> None:
        from playwright.sync_api import expect

        open_request(api_manager, run_id="manual__plain")
        page = browser_of("alice", f"{UI}/task?dag_id=billing&run_id=manual__plain&task_id=gate")
        expect(page.locator("#m-title")).to_have_text("Load the billing extract")
        expect(page.locator("#m-bound-block")).to_be_hidden()
        assert page.locator("#m-bound p").count() == 0

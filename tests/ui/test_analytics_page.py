"""The Analytics page (issue 28, items 3 and 4): charts, tables, filters and CSV on a real Airflow.

Real Airflow, Debian Chromium. The requests are written into the store the running Airflow
serves, through :class:`ApprovalManager` on a clock the test sets (days in the past, every wait
known), as requests opened over the API (no task for the api-server to end). Each test's
requests are on DAG ids of its own, so the page's DAG filter shows exactly them; whatever still
waits is cancelled afterwards, so no other test's inbox sees it.

The page is checked with its charts drawn (pixels on each canvas, the numbers in Chart.js's
data), its tables and totals, its CSV exports, in light and dark, at 375 px, with no script
error and nothing refused by the Content-Security-Policy. ``make screenshots``
(``HITL_SCREENSHOTS_DIR``) keeps the docs' pictures; otherwise they go to a temporary folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from airflow_hitl.analytics import HISTOGRAM_BUCKETS
from airflow_hitl.api.routes.ui import CHART_SCRIPT
from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.policy import Principal
from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import WAITING_STATES, Origin, Source
from tests.e2e.harness import AirflowHarness
from tests.helpers import Clock
from tests.ui.conftest import DESKTOP, PHONE
from tests.ui.test_airflow_look import page_colours
from tests.ui.test_approvals_tab import login
from tests.ui.test_page_fixes import assert_inside

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]
PAGE = "/hitl/ui/analytics"
#: Pixels drawn on a canvas (alpha above 0): a drawn chart has thousands.
PAINTED = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  return painted;
}"""
#: What Chart.js draws on a canvas: each dataset's label and numbers.
CHART_DATA = """canvas => {
  const chart = window.Chart.getChart(canvas);
  return chart ? { labels: chart.data.labels, datasets: chart.data.datasets.map((d) => [d.label, d.data]) } : null;
}"""
#: The colours of a chart's datasets, and the page's --ok and --bad now.
CHART_COLOURS = """canvas => {
  const css = getComputedStyle(document.documentElement);
  return {
    drawn: window.Chart.getChart(canvas).data.datasets.map((d) => d.backgroundColor),
    page: [css.getPropertyValue("--ok").trim(), css.getPropertyValue("--bad").trim()],
  };
}"""
#: The histogram's bars, as the report labels them.
BAR_LABELS = [label for _bound, label in HISTOGRAM_BUCKETS]


#: How many days back the known requests start, and the pictures' two weeks of history.
KNOWN_DAYS_AGO = 40
HISTORY_DAYS = 14


def day(n: int, *, ago: int = KNOWN_DAYS_AGO) -> dt.datetime:
    """09:00 UTC ``n`` days after the day ``ago`` days before today."""
    first = (utcnow() - dt.timedelta(days=ago)).replace(hour=9, minute=0, second=0, microsecond=0)
    return first + dt.timedelta(days=n)


class Seeder:
    """Writes requests into the running Airflow's store on a clock of its own; cancels what still waits, after."""

    def __init__(self, airflow: AirflowHarness) -> None:
        self.clock = Clock()
        self.manager = ApprovalManager(store=airflow.manager.store, clock=self.clock)
        self.ids: list[str] = []

    def at(self, moment: dt.datetime) -> Seeder:
        """Set the clock to ``moment``."""
        self.clock.now = moment
        return self

    def open(self, dag_id: str, task_id: str, **fields: Any) -> str:
        """Open a request (over the API: no task instance stands behind it) now, by the clock."""
        spec = ApprovalSpec(
            dag_id=dag_id,
            task_id=task_id,
            title=f"{dag_id}: {task_id}",
            requested_by="scheduler",
            **fields,
        )
        approval_id = self.manager.create(spec, source=Source.API, origin=Origin.API).id
        self.ids.append(approval_id)
        return approval_id

    def after(self, approval_id: str, seconds: float) -> Seeder:
        """Set the clock to ``seconds`` after ``approval_id`` was opened."""
        opened = self.manager.queries.get(approval_id).requested_at
        return self.at(opened + dt.timedelta(seconds=seconds))

    def cleanup(self) -> None:
        for approval_id in self.ids:
            if self.manager.queries.get(approval_id).state in WAITING_STATES:
                self.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")


@pytest.fixture
def seeder(airflow: AirflowHarness) -> Iterator[Seeder]:
    """A :class:`Seeder` over the running Airflow's store."""
    made = Seeder(airflow)
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def pictured(airflow: AirflowHarness) -> Iterator[str]:
    """The two weeks of :func:`history`, written once for the pictures; the first day of them (a ``since``)."""
    made = Seeder(airflow)
    history(made)
    yield day(0, ago=HISTORY_DAYS).date().isoformat()
    made.cleanup()


def known(seeder: Seeder, dag_id: str) -> None:
    """The known requests of ``dag_id``.

    Day 0 (40 days ago, far from the pictures' two weeks), task ``approve``: g1 approved by alice
    after 120 s, g2 by bob after 300 s, g3 rejected by bob after 1200 s, g4 timed out after 1 h;
    task ``sign_off``: s1 approved by carol after 60 s. Day 1: g5 approved by alice after 600 s;
    g6 waits, past its 30-minute SLA (a breach); s2 is cancelled.
    """
    alice, bob, carol = (Principal.of(name, ["op"]) for name in ("alice", "bob", "carol"))
    s = seeder.at(day(0))
    g1, g2, g3 = (s.open(dag_id, "approve") for _ in range(3))
    g4 = s.open(dag_id, "approve", timeout=dt.timedelta(hours=1), timeout_action="reject")
    s1 = s.open(dag_id, "sign_off")
    s.after(s1, 60).manager.approve(s1, user=carol)
    s.after(g1, 120).manager.approve(g1, user=alice)
    s.after(g2, 300).manager.approve(g2, user=bob)
    s.after(g3, 1200).manager.reject(g3, user=bob, reason="the numbers are off")
    # The api-server's deadline worker may time g4 out first (its deadline is long past): the same outcome.
    s.after(g4, 3600).manager.apply_timeout(g4)
    s.at(day(1))
    g5, g6 = s.open(dag_id, "approve"), s.open(dag_id, "approve", sla=dt.timedelta(minutes=30))
    s2 = s.open(dag_id, "sign_off")
    s.after(g5, 600).manager.approve(g5, user=alice)
    s.after(s2, 700).manager.cancel(s2, actor="scheduler", reason="not needed", source="api")
    # Recorded once, whoever comes first: this, or the api-server's drainer taking g6's overdue notice.
    s.after(g6, 3600).manager.sla.breach(g6)
    assert s.manager.queries.get(g6).sla_breached_at is not None


def history(seeder: Seeder) -> None:
    """Two weeks of requests on three DAGs, as a team might see them (for the docs' pictures).

    Synthetic and deterministic (a seeded random): waits of a few minutes to a few hours, now and
    then a rejection, a timeout (after 8 h), a cancel; a few gates still waiting, two past their SLA.
    """
    rng = random.Random(28)
    people = [Principal.of(name, ["op"]) for name in ("alice", "bob", "carol", "dana")]
    gates = [("billing_export", "approve_invoice"), ("ml_release", "sign_off_model")]
    gates += [("warehouse_load", "review_schema"), ("ml_release", "approve_canary")]
    eight_hours = dt.timedelta(hours=8)
    for n in range(HISTORY_DAYS):
        for dag_id, task_id in rng.sample(gates, k=rng.randint(2, 4)):
            for _ in range(rng.randint(1, 3)):
                opened = day(n, ago=HISTORY_DAYS) + dt.timedelta(minutes=rng.randint(0, 600))
                wait = rng.lognormvariate(7.0, 1.1) * (3 if task_id == "review_schema" else 1)
                roll = rng.random()
                if wait > eight_hours.total_seconds() or roll < 0.05:
                    # Only a gate meant to time out has a timeout (the deadline worker may apply it first).
                    late = seeder.at(opened).open(dag_id, task_id, timeout=eight_hours, timeout_action="reject")
                    seeder.after(late, eight_hours.total_seconds() + 1).manager.apply_timeout(late)
                    continue
                request = seeder.at(opened).open(dag_id, task_id)
                who = rng.choice(people)
                if roll < 0.12:
                    seeder.after(request, wait).manager.reject(request, user=who, reason="not yet")
                elif roll < 0.15:
                    seeder.after(request, wait).manager.cancel(request, actor="scheduler", reason="rerun", source="api")
                else:
                    seeder.after(request, wait).manager.approve(request, user=who)
    now = utcnow()
    for (dag_id, task_id), hours in ((gates[0], 5), (gates[2], 2)):
        overdue = seeder.at(now - dt.timedelta(hours=hours)).open(dag_id, task_id, sla=dt.timedelta(hours=1))
        seeder.after(overdue, 3700).manager.sla.breach(overdue)
    seeder.at(now - dt.timedelta(minutes=20)).open(*gates[1])


def watch_errors(page: Page) -> list[str]:
    """The page's uncaught script errors and console errors (a Content-Security-Policy refusal is one)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return errors


def painted(page: Page, canvas: str) -> int:
    """How many pixels of ``canvas`` are drawn."""
    return int(page.locator(canvas).evaluate(PAINTED))


def assert_charts_drawn(page: Page) -> None:
    """Both charts hold data and have pixels drawn on their canvas."""
    for canvas in ("#chart-ttd", "#chart-daily"):
        expect(page.locator(canvas)).to_be_visible()
        assert page.locator(canvas).evaluate(CHART_DATA) is not None, canvas
        assert painted(page, canvas) > 1000, canvas


def histogram(approved: list[int], rejected: list[int]) -> dict[str, Any]:
    """The chart of time to decision holding these counts in its first bars (the others 0)."""

    def padded(counts: list[int]) -> list[int]:
        return counts + [0] * (len(HISTOGRAM_BUCKETS) - len(counts))

    return {"labels": BAR_LABELS, "datasets": [["Approved", padded(approved)], ["Rejected", padded(rejected)]]}


def cells(page: Page, row: str, names: list[str]) -> list[str]:
    """The text of the cells ``names`` (their classes) of the table row ``row``."""
    return [page.locator(f"{row} .{name}").inner_text() for name in names]


class TestPageWithoutBrowser:
    """Plain HTTP: the sign-in redirect, the tab, and the charting library served from the package."""

    def test_without_a_session_the_page_sends_the_browser_to_airflows_login(self, airflow: AirflowHarness) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            response = client.get(PAGE, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/api/v2/auth/login?next=")

    def test_the_page_loads_the_packaged_chart_library_before_its_script(self, airflow: AirflowHarness) -> None:
        with httpx.Client(base_url=airflow.base_url, trust_env=False) as client:
            page = client.get(PAGE, headers={"Cookie": f"_token={airflow.token('alice')}"})
            library = client.get(f"/hitl/ui/static/{CHART_SCRIPT}")
            licence = client.get(f"/hitl/ui/static/{CHART_SCRIPT.rsplit('/', 1)[0]}/LICENSE.md")
            inbox = client.get("/hitl/ui/", headers={"Cookie": f"_token={airflow.token('alice')}"})
        assert page.status_code == 200
        assert 'data-page="analytics"' in page.text and 'id="nav-analytics"' in page.text
        assert page.text.index(CHART_SCRIPT) < page.text.index("/hitl.js")
        assert 'id="nav-analytics"' in inbox.text and CHART_SCRIPT not in inbox.text
        assert library.status_code == 200 and library.headers["content-type"].startswith("text/javascript")
        version = re.search(r"chart\.js-([\d.]+)/", CHART_SCRIPT)
        assert version and f"Chart.js v{version.group(1)}" in library.text[:200]
        assert licence.status_code == 200 and "MIT License" in licence.text


def test_the_numbers_charts_filters_and_exports(
    airflow: AirflowHarness, new_page: PageFactory, seeder: Seeder, tmp_path: Path
) -> None:
    dag_id = f"analytics_{uuid.uuid4().hex[:8]}"
    known(seeder, dag_id)
    page = new_page(DESKTOP)
    errors = watch_errors(page)
    login(page, airflow, "alice", f"{PAGE}?dag_id={dag_id}")
    expect(page.locator("#nav-analytics")).to_have_class("tab active")
    expect(page.locator("#a-dag")).to_have_value(dag_id)

    # Totals, and each table as the report has it.
    expect(page.locator("#t-requests")).to_have_text("8")
    totals = ["#t-approved", "#t-rejected", "#t-timed-out", "#t-pending", "#t-sla"]
    assert [page.locator(t).inner_text() for t in totals] == ["4", "1", "1", "1", "1"]
    approve = f'#gates-rows tr[data-dag="{dag_id}"][data-task="approve"]'
    columns = ["g-requests", "g-approved", "g-rejected", "g-timed-out", "g-cancelled", "g-escalated"]
    columns += ["g-p50", "g-p90", "g-pending", "g-sla"]
    # Decided after 120, 300, 600 and 1200 s: median 450 s; p90 at 1 + 0.9 * 3 = 3.7, 600 + 0.7 * 600.
    assert cells(page, approve, columns) == ["6", "3", "1", "1", "0", "0", "7m 30s", "17m 0s", "1", "1"]
    assert re.fullmatch(r"\d+d \d+h", page.locator(f"{approve} .g-oldest").inner_text())
    sign_off = f'#gates-rows tr[data-dag="{dag_id}"][data-task="sign_off"]'
    assert cells(page, sign_off, columns) == ["2", "1", "0", "0", "1", "0", "1m 0s", "1m 0s", "0", "0"]
    assert page.locator(f"{sign_off} .g-oldest").inner_text() == "—"
    voters = page.locator("#approvers-rows tr")
    expect(voters).to_have_count(3)
    rows = [
        cells(
            page, f'#approvers-rows tr[data-user="{u}"]', ["ap-decisions", "ap-approvals", "ap-rejections", "ap-median"]
        )
        for u in ("alice", "bob", "carol")
    ]
    assert rows == [["2", "2", "0", "6m 0s"], ["2", "1", "1", "12m 30s"], ["1", "1", "0", "1m 0s"]]
    days = [day(0).date().isoformat(), day(1).date().isoformat()]
    assert page.locator("#daily-rows .day-date").all_inner_texts() == days
    assert page.locator("#daily-rows .day-requests").all_inner_texts() == ["5", "3"]
    assert page.locator("#daily-rows .day-decided").all_inner_texts() == ["4", "1"]
    assert page.locator("#daily-rows .day-timed-out").all_inner_texts() == ["1", "0"]
    # The histogram's table, the chart's text alternative: every bar, its decisions and their share.
    # s1 waited 60 s (on the first bar's bound); g1 120 s and g2 300 s (on the second's); g5 600 s;
    # g3, rejected, 1200 s. g4 timed out and s2 was cancelled: no decision.
    assert page.locator("#histogram-rows .bar-label").all_inner_texts() == BAR_LABELS
    assert page.locator("#histogram-rows .bar-approved").all_inner_texts() == ["1", "2", "1", "0", "0", "0", "0", "0"]
    assert page.locator("#histogram-rows .bar-rejected").all_inner_texts() == ["0", "0", "0", "1", "0", "0", "0", "0"]
    assert page.locator("#histogram-rows .bar-share").all_inner_texts() == ["20%", "40%", "20%", "20%"] + ["0%"] * 4
    # On a desktop the tables are tables, as wide as the page.
    for table in ("#gates-table", "#histogram-table", "#approvers-table", "#daily-table"):
        spans = page.locator(table).evaluate(
            "t => [getComputedStyle(t).display, t.offsetWidth >= t.parentElement.clientWidth - 1]"
        )
        assert spans == ["table", True], table
    # The oldest waiting and the SLA breaches name the gate.
    expect(page.locator("#oldest-list li")).to_have_count(1)
    expect(page.locator("#oldest-list li .w-gate")).to_have_text(f"{dag_id} · approve")
    expect(page.locator("#sla-list li .w-figure")).to_have_text("1 of 6 requests waited past the SLA")

    # The charts: drawn, with the report's numbers (each bar's approved and rejected stacked; the
    # day's outcomes stacked), the histogram summed up in words beside it.
    assert_charts_drawn(page)
    assert page.locator("#chart-ttd").evaluate(CHART_DATA) == histogram([1, 2, 1], [0, 0, 0, 1])
    expect(page.locator("#c-ttd-note")).to_have_text(
        "At least half of the 5 decisions came within 5m, 90% within 1h. The table below lists each bar."
    )
    assert page.locator("#chart-ttd").get_attribute("aria-describedby") == "c-ttd-note"
    assert page.locator("#chart-daily").evaluate(CHART_DATA) == {
        "labels": days,
        "datasets": [["Decided", [4, 1]], ["Timed out", [1, 0]], ["Waiting or cancelled", [0, 2]]],
    }

    # Each table's CSV export: the same filters, the API's CSV.
    with page.expect_download() as download:
        page.locator("#csv-gates").click()
    saved = tmp_path / "gates.csv"
    download.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [(r["task_id"], r["requests"], r["time_to_decision_p50_s"]) for r in exported] == [
        ("approve", "6", "450.0"),
        ("sign_off", "2", "60.0"),
    ]
    for table, count in (("approvers", 3), ("daily", 2), ("histogram", len(HISTOGRAM_BUCKETS))):
        href = page.locator(f"#csv-{table}").get_attribute("href") or ""
        assert f"table={table}" in href and f"dag_id={dag_id}" in href
        with page.expect_download() as download:
            page.locator(f"#csv-{table}").click()
        download.value.save_as(tmp_path / f"{table}.csv")
        assert len(list(csv.DictReader(io.StringIO((tmp_path / f"{table}.csv").read_text())))) == count
    bars = list(csv.DictReader(io.StringIO((tmp_path / "histogram.csv").read_text())))
    assert [(b["label"], b["approved"], b["rejected"]) for b in bars[:4]] == [
        ("≤ 1 min", "1", "0"),
        ("1-5 min", "2", "0"),
        ("5-15 min", "1", "0"),
        ("15-60 min", "0", "1"),
    ]

    # Filters: the task, then day 1 on (From, in Airflow's timezone), kept in the address.
    page.locator("#a-task").fill("sign_off")
    page.locator("#a-apply").click()
    expect(page.locator("#t-requests")).to_have_text("2")
    expect(page.locator("#gates-rows tr")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"task_id=sign_off"))
    # The histogram follows the filters: s1's one approval, drawn again.
    assert page.locator("#chart-ttd").evaluate(CHART_DATA) == histogram([1], [])
    expect(page.locator("#c-ttd-note")).to_have_text("The one decision came within 1m. The table below lists each bar.")
    assert painted(page, "#chart-ttd") > 1000
    page.locator("#a-task").fill("")
    page.locator("#a-since").fill(days[1])
    page.locator("#a-apply").click()
    expect(page.locator("#t-requests")).to_have_text("3")
    expect(page.locator("#approvers-rows tr")).to_have_count(1)
    expect(page.locator("#daily-rows .day-date")).to_have_text([days[1]])
    assert page.locator("#chart-ttd").evaluate(CHART_DATA) == histogram([0, 0, 1], [])
    # Day 1 on, on the task that decided nothing then: no chart, the words say so, no empty table.
    page.locator("#a-task").fill("sign_off")
    page.locator("#a-apply").click()
    expect(page.locator("#t-requests")).to_have_text("1")
    expect(page.locator("#c-ttd-empty")).to_be_visible()
    expect(page.locator("#chart-ttd")).to_be_hidden()
    expect(page.locator("#histogram-table")).to_be_hidden()
    expect(page.locator("#histogram-empty")).to_be_visible()
    page.locator("#a-task").fill("")
    assert errors == []
    # A window that ends before it starts: the API's 422, named, in the error line (the browser
    # logs the refused fetch, nothing else).
    page.locator("#a-until").fill(days[0])
    page.locator("#a-apply").click()
    expect(page.locator("#a-error")).to_contain_text("`until`")
    assert errors and all("status of 422" in e for e in errors), errors


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_screenshots_light_and_dark_on_a_desktop_and_at_375px(
    airflow: AirflowHarness, new_page: PageFactory, pictured: str, mode: str, screenshot_dir: Path
) -> None:
    for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page = new_page(viewport, color_scheme=mode)
        errors = watch_errors(page)
        # The two weeks of history (the phone: one DAG of it), none of the other tests' requests.
        shown = f"?since={pictured}" + ("&dag_id=ml_release" if name == "phone" else "")
        login(page, airflow, "alice", PAGE + shown)
        expect(page.locator("html")).to_have_attribute("data-theme", mode)
        expect(page.locator("#gates-rows tr").first).to_be_visible()
        assert_charts_drawn(page)
        # The histogram's bars hold every decision of the totals, in this mode's green and red.
        drawn = page.locator("#chart-ttd").evaluate(CHART_DATA)
        assert drawn["labels"] == BAR_LABELS
        sums = [sum(counts) for _label, counts in drawn["datasets"]]
        assert sums == [int(page.locator(t).inner_text()) for t in ("#t-approved", "#t-rejected")]
        colours = page.locator("#chart-ttd").evaluate(CHART_COLOURS)
        assert colours["drawn"] == colours["page"], colours
        expect(page.locator("#c-ttd-note")).to_contain_text("At least half of the")
        expect(page.locator("#histogram-rows tr")).to_have_count(len(HISTOGRAM_BUCKETS))
        background, text = page_colours(page)
        if mode == "dark":
            assert background < 0.35 < text, (background, text)
        else:
            assert background > 0.8 > text, (background, text)
        if name == "phone":
            # Nothing wider than the screen: no sideways scrolling, every control inside it.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            assert_inside(page)
            # The five tabs on one line.
            tops = page.locator(".tabs .tab").evaluate_all("tabs => tabs.map((t) => t.getBoundingClientRect().top)")
            assert len(tops) == 5 and len(set(tops)) == 1, tops
        page.screenshot(path=str(screenshot_dir / f"analytics-{name}-{mode}.png"), full_page=True)
        assert errors == []

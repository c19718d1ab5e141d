"""The Approvals pages look like part of Airflow: its Appearance (light/dark), timezone and date format.

The pages are same-origin iframes inside Airflow's React UI. These tests change the settings
the way a person does, through Airflow's own User menu and timezone dialog, and check that
the embedded page follows at once (no reload), whatever the operating system prefers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.harness import AirflowHarness
from tests.ui.test_approvals_tab import API, card, login, open_gate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PageFactory = Callable[..., Page]
MODE_ITEMS = {"light": "Light Mode", "dark": "Dark Mode"}


def set_appearance(page: Page, mode: str) -> None:
    """Choose Light Mode or Dark Mode in the Airflow UI's User menu (Appearance)."""
    # Airflow's pages keep re-rendering for a while on a busy machine: be patient with the menu.
    page.get_by_role("button", name="User").click(timeout=90_000)
    page.get_by_role("menuitem", name="Appearance").click()
    item = MODE_ITEMS[mode]
    page.get_by_role("menuitem", name=item).or_(page.get_by_role("menuitemradio", name=item)).first.click()
    expect(page.locator("html")).to_have_class(re.compile(rf"\b{mode}\b"))


def set_timezone(page: Page, zone: str) -> None:
    """Pick ``zone`` in the Airflow UI's timezone dialog (the clock button in the nav)."""
    page.get_by_role("button", name=re.compile(r"^[+-]\d\d:\d\d$|Timezone")).first.click(timeout=90_000)
    dialog = page.get_by_role("dialog")
    combo = dialog.get_by_role("combobox")
    combo.click()
    combo.fill(zone)
    dialog.get_by_role("option", name=zone).first.click()
    expect(dialog).to_contain_text(f"Current time in {zone}")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def lightness(color: str) -> float:
    """Perceived lightness 0..1 of a CSS colour as getComputedStyle writes it (rgb() or oklch())."""
    numbers = [float(n) for n in re.findall(r"[\d.]+", color)]
    if color.startswith("oklch"):
        return numbers[0] if numbers[0] <= 1 else numbers[0] / 100
    r, g, b = (n / 255 for n in numbers[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def page_colours(frame: object) -> tuple[float, float]:
    """Lightness of the page background and of its text."""
    body = frame.locator("body")  # type: ignore[attr-defined]
    background = body.evaluate("b => getComputedStyle(b).backgroundColor")
    text = body.evaluate("b => getComputedStyle(b).color")
    return lightness(background), lightness(text)


class TestColourMode:
    @pytest.mark.parametrize(
        ("system", "airflow_mode"),
        [("light", "dark"), ("dark", "light")],
        ids=["airflow-dark-on-light-os", "airflow-light-on-dark-os"],
    )
    def test_pages_follow_airflows_appearance_not_the_os(
        self, airflow: AirflowHarness, new_page: PageFactory, system: str, airflow_mode: str
    ) -> None:
        page = new_page(color_scheme=system)
        login(page, airflow, "alice")
        page.goto("/plugin/approvals")
        frame = page.frame_locator('iframe[title="Approvals"]')
        expect(frame.locator("#pending-count")).to_have_text(re.compile(r"^\d+$"))

        set_appearance(page, airflow_mode)
        # Live: the open page switches without a reload.
        expect(frame.locator("html")).to_have_attribute("data-theme", airflow_mode)
        background, text = page_colours(frame)
        if airflow_mode == "dark":
            assert background < 0.35 < text, (background, text)
        else:
            assert background > 0.8 > text, (background, text)
        # Native controls (checkboxes, selects, date inputs) follow the same scheme.
        scheme = frame.locator("#filter-mine").evaluate("n => getComputedStyle(n).colorScheme")
        assert scheme == airflow_mode
        # Airflow's own font.
        assert frame.locator("body").evaluate("b => getComputedStyle(b).fontFamily").startswith("Inter")

        other = "light" if airflow_mode == "dark" else "dark"
        set_appearance(page, other)
        expect(frame.locator("html")).to_have_attribute("data-theme", other)
        # And a page loaded afterwards starts in the chosen mode.
        frame.locator("#nav-history").click()
        expect(frame.locator("#history-count")).to_have_text(re.compile(r"^\d+$"))
        expect(frame.locator("html")).to_have_attribute("data-theme", other)

    def test_nav_icon_has_a_dark_mode_variant(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        page = new_page()
        login(page, airflow, "alice")
        page.goto("/plugin/approvals")
        expect(page.frame_locator('iframe[title="Approvals"]').locator("#pending-count")).to_have_text(
            re.compile(r"^\d+$")
        )
        icon = page.locator('img[src*="/hitl/ui/static/approvals"]').first
        set_appearance(page, "light")
        expect(icon).to_have_attribute("src", re.compile(r"approvals\.svg$"))
        set_appearance(page, "dark")
        expect(icon).to_have_attribute("src", re.compile(r"approvals-dark\.svg$"))
        set_appearance(page, "light")


class TestTimezone:
    def test_dates_in_airflows_timezone_and_format(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        requested_at = airflow.manager.queries.get(approval_id).requested_at
        assert requested_at is not None
        if requested_at.tzinfo is None:
            requested_at = requested_at.replace(tzinfo=dt.timezone.utc)

        page = new_page()  # the browser's own zone is UTC and its locale en-GB
        login(page, airflow, "alice")
        page.goto("/plugin/approvals")
        frame = page.frame_locator('iframe[title="Approvals"]')
        card(frame, approval_id).get_by_role("button", name="Review").click()
        utc_text = requested_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        expect(frame.locator("#m-requested-at")).to_contain_text(utc_text)

        # Chosen in Airflow's own dialog while our page is open, without a reload. The modal's
        # backdrop covers Airflow's nav too (a modal is modal), so it is closed first.
        zone = "Asia/Tokyo"  # no DST, and one spelling (ICU knows Kolkata as Asia/Calcutta)
        frame.locator("#m-close").click()
        expect(page.locator("#hitl-modal-backdrop")).to_have_count(0)
        set_timezone(page, zone)
        card(frame, approval_id).get_by_role("button", name="Review").click()
        local_text = requested_at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
        expect(frame.locator("#m-requested-at")).to_contain_text(local_text)
        assert not re.search(r"\b(AM|PM)\b", frame.locator("#m-requested-at").inner_text())

        frame.locator("#m-close").click()
        set_timezone(page, "UTC")
        card(frame, approval_id).get_by_role("button", name="Review").click()
        expect(frame.locator("#m-requested-at")).to_contain_text(utc_text)
        airflow.manager.cancel(approval_id, actor="admin", reason="test cleanup", source="api")

    def test_history_date_filters_use_airflows_timezone(self, airflow: AirflowHarness, new_page: PageFactory) -> None:
        _, approval_id = open_gate(airflow, "e2e_gate", "gate", user="admin")
        airflow.api("POST", f"{API}/{approval_id}/approve", user="alice", json_body={"comment": "dated"})
        decided_at = airflow.manager.queries.get(approval_id).decided_at
        assert decided_at is not None
        if decided_at.tzinfo is None:
            decided_at = decided_at.replace(tzinfo=dt.timezone.utc)

        page = new_page()
        login(page, airflow, "alice")
        browser_zone = page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone")
        browser_day = decided_at.astimezone(ZoneInfo(browser_zone)).date().isoformat()
        # A zone whose calendar day at the moment of the decision is not the browser's.
        zone, airflow_day = next(
            (z, day)
            for z in ("Pacific/Kiritimati", "Pacific/Pago_Pago")
            if (day := decided_at.astimezone(ZoneInfo(z)).date().isoformat()) != browser_day
        )
        page.goto("/plugin/approvals")
        set_timezone(page, zone)

        page.goto("/hitl/ui/history")
        entry = page.locator(f'#timeline li[data-id="{approval_id}"]')
        expect(entry).to_be_visible()
        # The day it was decided on in Airflow's timezone shows it; the browser's day does not.
        for day, count in ((browser_day, 0), (airflow_day, 1)):
            page.locator("#h-since").fill(day)
            page.locator("#h-until").fill(day)
            page.locator("#h-apply").click()
            expect(entry).to_have_count(count)

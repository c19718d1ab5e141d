"""Fixtures for the browser tests: one real Airflow and one headless Debian Chromium per session.

Airflow comes from the e2e harness (api-server, scheduler, triggerer, dag-processor in a
temporary ``AIRFLOW_HOME``) with this folder's ``dags/`` added. The browser is Debian's
``/usr/bin/chromium`` driven by Playwright through ``executable_path``: nothing downloads a
browser. Every test gets a fresh browser context (its own cookies) and signs in through
Airflow's own login page with :func:`login`.

Set ``HITL_E2E_KEEP=1`` to keep the temporary ``AIRFLOW_HOME`` after the session.
Screenshots go to a temporary folder (tests never change tracked files); ``make screenshots``
sets ``HITL_SCREENSHOTS_DIR=docs/images`` to refresh the README's pictures.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import AirflowHarness

CHROMIUM = os.environ.get("HITL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_DAGS = Path(__file__).resolve().parent / "dags"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}

_harness: AirflowHarness | None = None


@pytest.fixture(scope="session", autouse=True)
def _patient_expect() -> None:
    """Give web-first assertions 30 s: the Airflow UI is slow on a busy 2-core machine."""
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """A running Airflow 3 with the example DAGs, the e2e DAGs and the UI test DAGs."""
    global _harness
    root: Path = tmp_path_factory.mktemp("airflow-ui")
    harness = AirflowHarness(root=root, extra_dag_dirs=[UI_DAGS])
    print(f"\nstarting Airflow in {root} on {harness.base_url}", file=sys.stderr)
    harness.start()
    _harness = harness
    try:
        yield harness
    finally:
        _harness = None
        harness.stop()
        if os.environ.get("HITL_E2E_KEEP"):
            print(f"\nkept Airflow home: {root}", file=sys.stderr)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots are written: ``HITL_SCREENSHOTS_DIR`` when set, else a temporary folder."""
    chosen = os.environ.get("HITL_SCREENSHOTS_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots go to {folder}", file=sys.stderr)
    return folder


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(f"Debian chromium not found at {CHROMIUM}; install it with apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def new_page(browser: Any, airflow: AirflowHarness) -> Iterator[Any]:
    """Factory of pages, each in its own browser context (own cookies), closed after the test."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] | None = None, *, color_scheme: str = "light") -> Any:
        # color_scheme is the operating system's setting, which Airflow's own Appearance overrides.
        context = browser.new_context(
            base_url=airflow.base_url,
            viewport=viewport or DESKTOP,
            accept_downloads=True,
            locale="en-GB",
            color_scheme=color_scheme,
        )
        # Airflow's React UI can take a long time to settle while other stacks share the 2 cores.
        context.set_default_timeout(90_000)
        context.set_default_navigation_timeout(120_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tails of the Airflow process logs to a failed test's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and _harness is not None:
        report.sections.append(("Airflow process logs", _harness.dump_logs(lines=60)))

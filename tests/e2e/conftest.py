"""One real Airflow for the whole e2e session: starting it takes a while on a small machine.

Set ``HITL_E2E_KEEP=1`` to keep the temporary ``AIRFLOW_HOME`` (process and task logs)
after the session; its path is printed at start-up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import AirflowHarness

_harness: AirflowHarness | None = None


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """A running Airflow 3 (api-server, scheduler, triggerer, dag-processor) with our DAGs."""
    global _harness
    root: Path = tmp_path_factory.mktemp("airflow-e2e")
    harness = AirflowHarness(root=root)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tails of the Airflow process logs to a failed e2e test's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and _harness is not None:
        report.sections.append(("Airflow process logs", _harness.dump_logs(lines=60)))

"""Shared real Airflow stacks for the e2e suites: starting one takes a while on a small machine.

Two stacks serve most modules, each started on first use and stopped right after the last
test that uses it (an idle Airflow still parses DAGs and heartbeats, which the rest of the run
would pay for on two cores):

- ``airflow``: api-server, scheduler, triggerer and dag-processor, LocalExecutor, PostgreSQL
  metadata DB, SQLite store, no notices.
- ``notifying_airflow``: the same with the approval store on PostgreSQL too, every process
  mailing a real SMTP server (aiosmtpd, in this process) that a test can stop and start,
  posting to a Slack Web API stand-in and sending its metrics to a StatsD listener (both
  served by this process on loopback).

The e2e modules run in an order that keeps each stack's users together. Set
``HITL_E2E_KEEP=1`` to keep the temporary ``AIRFLOW_HOME`` (process and task logs) after the
session; its path is printed at start-up.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from tests.e2e.harness import AirflowHarness, create_database, drop_database
from tests.e2e.mail import MailServer, serve_mail
from tests.helpers import StatsdListener
from tests.standins import SlackApi, notify_environment, serve_slack_api

#: Shared stack fixture name -> its running harness.
_running: dict[str, AirflowHarness] = {}
#: Stack fixture name -> node id of the last test using it (filled at collection).
_last_user: dict[str, str] = {}
_STACKS = ("airflow", "notifying_airflow")
RESUME_DAGS = Path(__file__).resolve().parent / "dags_resume"
#: ``[hitl] audit_key`` of every process of ``notifying_airflow`` (and of its harness's manager).
AUDIT_KEY = "e2e audit key: " + secrets.token_urlsafe(24)
E2E_DIR = Path(__file__).resolve().parent


def run_stack(name: str, harness: AirflowHarness) -> Iterator[AirflowHarness]:
    """Start ``harness``, yield it, stop it (idempotent: an early stop leaves nothing to do)."""
    print(f"\nstarting Airflow in {harness.root} on {harness.base_url}", file=sys.stderr)
    _running[name] = harness
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()
        _running.pop(name, None)
        if os.environ.get("HITL_E2E_KEEP"):
            print(f"\nkept Airflow home: {harness.root}", file=sys.stderr)


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """A running Airflow 3 (api-server, scheduler, triggerer, dag-processor) with our DAGs."""
    yield from run_stack("airflow", AirflowHarness(root=tmp_path_factory.mktemp("airflow-e2e")))


@pytest.fixture(scope="session")
def mail() -> Iterator[MailServer]:
    """The SMTP server of ``notifying_airflow``."""
    yield from serve_mail()


@pytest.fixture(scope="session")
def statsd() -> Iterator[StatsdListener]:
    """The StatsD server (UDP on loopback) that ``notifying_airflow`` sends its metrics to."""
    listener = StatsdListener()
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def slack() -> Iterator[SlackApi]:
    """The Slack Web API stand-in (HTTP on loopback) that ``notifying_airflow`` posts to."""
    yield from serve_slack_api()


@pytest.fixture(scope="session")
def notifying_airflow(
    tmp_path_factory: pytest.TempPathFactory, mail: MailServer, statsd: StatsdListener, slack: SlackApi
) -> Iterator[AirflowHarness]:
    """Airflow and the approval store on PostgreSQL, its processes mailing ``mail``, posting to
    ``slack``, sending metrics to ``statsd``."""
    metadata_url = create_database("hitl_e2e_af")
    store_url = create_database("hitl_e2e_store")
    harness = AirflowHarness(
        root=tmp_path_factory.mktemp("airflow-notify"),
        extra_dag_dirs=[RESUME_DAGS],
        metadata_db_url=metadata_url,
    )
    harness.store_url = store_url
    # On this shared 2-core machine the api-server's first /execution call has taken 77-93 s
    # (beyond the harness's 90 s client timeout) with a PostgreSQL metadata DB.
    harness._clients[0].close()
    harness._clients[0] = harness._http = httpx.Client(base_url=harness.base_url, timeout=300.0, trust_env=False)
    env = notify_environment(smtp_port=mail.port, slack_base_url=slack.base_url)
    env.update(
        {
            "AIRFLOW_HITL_STORE_URL": store_url,
            # psycopg 3 serves Airflow's async engine too (asyncpg is not installed).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url,
            "AIRFLOW__HITL__BASE_URL": harness.base_url,
            # Same backoff law, shorter ceiling: a 60 s outage is noticed within 5 s of its end.
            "AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF": "1.0",
            "AIRFLOW__HITL__NOTIFY_RETRY_MAX_BACKOFF": "5.0",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            # Keys the audit chain of every process (tests/e2e/test_audit_e2e.py).
            "AIRFLOW__HITL__AUDIT_KEY": AUDIT_KEY,
            # Signs every request's evidence (tests/e2e/test_evidence_e2e.py): a key of this session only.
            "AIRFLOW__HITL__EVIDENCE_SIGNING_KEY": Ed25519PrivateKey.generate()
            .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            .decode(),
        }
    )
    harness.env.update(env)
    # The tests' own manager writes the same store (decisions made "by hand"): with the stack's
    # audit key, or the keyed chain would refuse its events.
    harness._store = ApprovalStore(url=store_url)
    harness._manager = ApprovalManager(store=harness._store, audit_key=AUDIT_KEY)
    try:
        yield from run_stack("notifying_airflow", harness)
    finally:
        for url in (metadata_url, store_url):
            drop_database(url)


def _stack_of(item: pytest.Item) -> str | None:
    in_e2e = Path(str(item.path)).is_relative_to(E2E_DIR)
    return next((name for name in _STACKS if in_e2e and name in item.fixturenames), None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each shared stack's tests together, and note the last test of each."""
    slots = [i for i, item in enumerate(items) if Path(str(item.path)).is_relative_to(E2E_DIR)]
    e2e = [items[i] for i in slots]
    # Stable: within a stack (and for modules with a stack of their own) file order stays.
    order = {None: len(_STACKS)} | {name: rank for rank, name in enumerate(_STACKS)}
    for slot, item in zip(slots, sorted(e2e, key=lambda item: order[_stack_of(item)]), strict=True):
        items[slot] = item
    _last_user.clear()
    for item in items:
        name = _stack_of(item)
        if name is not None:
            _last_user[name] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Stop a shared stack as soon as its last test is done."""
    yield
    name = _stack_of(item)
    if name is not None and _last_user.get(name) == item.nodeid and name in _running:
        _running[name].stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tails of the Airflow process logs to a failed e2e test's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    harness = _running.get(_stack_of(item) or "")
    if report.failed and harness is not None:
        report.sections.append(("Airflow process logs", harness.dump_logs(lines=60)))

"""Airflow's real api-server app served over HTTP on loopback, for the command line to call.

The CLI decides through the REST API with ``httpx``, so the app of ``tests/airflow_api.py``
(real SimpleAuthManager users and tokens, our plugin mounted at ``/hitl``) is served by
uvicorn in a thread on ``127.0.0.1:<free port>``, once per session; each test injects its
own approval store, as the ``api`` fixture does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
import uvicorn

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from tests.airflow_api import JWT_SECRET, AirflowApi, serving
from tests.e2e.harness import free_port
from tests.standins import wait_for


@dataclass(frozen=True, kw_only=True)
class ServedApi:
    """Airflow's api-server app answering on a loopback port, with one token per test user."""

    url: str
    airflow_api: AirflowApi

    def token(self, user: str) -> str:
        """A real token of ``user`` from the app's ``POST /auth/token``."""
        return self.airflow_api.tokens[user]

    def password(self, user: str) -> str:
        """SimpleAuthManager's generated password of ``user``."""
        path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        with open(path, encoding="utf-8") as handle:
            return str(json.load(handle)[user])


@pytest.fixture(scope="session")
def served_api(airflow_api: AirflowApi) -> Iterator[ServedApi]:
    """The session's api-server app served by uvicorn on ``127.0.0.1``."""
    server = uvicorn.Server(
        uvicorn.Config(
            airflow_api.app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False, lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, name="cli-tests-api-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 60, "uvicorn to serve the api-server app")
        yield ServedApi(url=f"http://127.0.0.1:{server.config.port}", airflow_api=airflow_api)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def api_store(served_api: ServedApi, store: ApprovalStore) -> Iterator[ApprovalManager]:
    """The served app deciding on this test's store (SQLite and PostgreSQL); a manager over it."""
    with serving(served_api.airflow_api, store.url) as manager:
        yield manager


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token in the developer's environment must not decide what a test's command reads."""
    monkeypatch.delenv("AIRFLOW_HITL_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def _quiet_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's access log prints each request to stdout, where the served app's thread would
    mix it into the command's own output that the tests read."""
    # Only once the app is built (session fixtures come first): importing Airflow here would
    # configure it before a test that sets AIRFLOW_HOME.
    http_access_log = sys.modules.get("airflow.api_fastapi.common.http_access_log")
    if http_access_log is not None:
        from structlog.testing import ReturnLogger

        monkeypatch.setattr(http_access_log, "logger", ReturnLogger())


def _repoint_closed_log_streams() -> None:
    """Point every log handler whose stream was closed at the process's own stderr."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            # A FileHandler closed on purpose reopens itself; only plain streams are stranded.
            if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
                continue
            if getattr(handler.stream, "closed", False):
                # Not setStream(): it flushes the old stream first, which a closed one refuses.
                with handler.lock or contextlib.nullcontext():
                    handler.stream = sys.__stderr__


@pytest.fixture(autouse=True)
def _log_handlers_outlive_capture() -> Iterator[None]:
    """Airflow's log handlers write to a stream that outlives each test's captured output.

    Airflow configures logging when it is first imported, with a handler on the ``sys.stderr``
    of that moment. Run alone, a module of these tests imports Airflow inside its first test,
    whose ``capsys`` stream pytest closes at the test's end; every later log record (a refused
    token, the served app's thread shutting down) then fails with "--- Logging error ---" and
    a traceback on the current test's stderr, which the tests read as the command's own.
    After a module that imported Airflow outside such a test, the stream stays open and it hid.
    """
    _repoint_closed_log_streams()
    yield
    _repoint_closed_log_streams()


def resigned(token: str, *, expires_in: dt.timedelta, key: str = JWT_SECRET) -> str:
    """``token``'s claims signed again with ``key`` (Airflow's by default), expiring ``expires_in`` from now."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = dt.datetime.now(dt.timezone.utc)
    claims.update(exp=int((now + expires_in).timestamp()), iat=int((now - dt.timedelta(hours=2)).timestamp()))
    claims["nbf"] = claims["iat"]
    kid = {"kid": header["kid"]} if "kid" in header else None
    return jwt.encode(claims, key, algorithm=header["alg"], headers=kid)

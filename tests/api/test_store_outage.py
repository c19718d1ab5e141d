"""A PostgreSQL store that goes away: 503 with Retry-After, nothing applied, back when it is.

The app reaches a real PostgreSQL database through a TCP proxy on loopback
(:mod:`tests.api.tcp_proxy`) that the test stops, turns into a black hole, or makes cut a
connection right after relaying its COMMIT. Nothing is mocked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from tests.airflow_api import API, AirflowApi, open_request, serving
from tests.api.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxy(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """A proxy in front of the session's PostgreSQL server, relaying."""
    # Short bounds, so each outage answers within seconds.
    monkeypatch.setenv("AIRFLOW__HITL__STORE_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_POOL_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_STATEMENT_TIMEOUT", "5")
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    tcp = TcpProxy(target=(target.hostname or "127.0.0.1", target.port or 5432))
    tcp.start()
    yield tcp
    tcp.stop()


@pytest.fixture
def outage_manager(airflow_api: AirflowApi, pg_url: str, proxy: TcpProxy) -> Iterator[ApprovalManager]:
    """The mounted app over PostgreSQL reached only through ``proxy``."""
    url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    with serving(airflow_api, url) as manager:
        yield manager


@pytest.fixture
def direct(pg_url: str) -> Iterator[ApprovalManager]:
    """The same database, reached directly: what is really stored, whatever the proxy does."""
    store = ApprovalStore(url=pg_url)
    yield ApprovalManager(store=store)
    store.dispose()


class TestStoreOutage:
    """Stopped, hung and cut-at-commit stores, through the real app."""

    @pytest.mark.parametrize("outage", ["stopped", "black-hole"])
    def test_503_with_retry_after_and_nothing_applied(
        self,
        airflow_api: AirflowApi,
        outage_manager: ApprovalManager,
        direct: ApprovalManager,
        proxy: TcpProxy,
        outage: str,
    ) -> None:
        approval = open_request(outage_manager, run_id=f"outage__{outage}__{time.monotonic_ns()}")
        proxy.stop() if outage == "stopped" else proxy.black_hole()

        headers = airflow_api.headers("admin")
        for method, path, body in (
            ("POST", f"{approval.id}/approve", {"comment": "during the outage"}),
            ("GET", f"{approval.id}", None),
            ("GET", "pending", None),
        ):
            response = airflow_api.client.request(method, f"{API}/{path}", headers=headers, json=body)
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["Retry-After"]) > 0
            assert "nothing was changed" in response.json()["detail"]

        stored = direct.queries.get(approval.id)
        assert stored.state == "pending" and stored.votes == ()

        if outage == "stopped":
            proxy.start()
        else:
            proxy.relay()
        response = airflow_api.client.post(f"{API}/{approval.id}/approve", headers=headers, json={"comment": "back"})
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "approved"

    def test_commit_with_unknown_outcome_is_never_reported_as_failed(
        self, airflow_api: AirflowApi, outage_manager: ApprovalManager, direct: ApprovalManager, proxy: TcpProxy
    ) -> None:
        approval = open_request(outage_manager, run_id=f"outage__commit__{time.monotonic_ns()}")
        headers = airflow_api.headers("admin")
        proxy.cut_at_commit()

        response = airflow_api.client.post(f"{API}/{approval.id}/approve", headers=headers, json={"comment": "cut"})

        assert proxy.commits_cut == 1
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "may or may not have been applied" in detail and "nothing was changed" not in detail
        # The server did commit (it got the COMMIT before the cut): the vote lands, and a
        # retry is refused rather than counted twice.
        assert _eventually(lambda: direct.queries.get(approval.id).state == "approved")
        proxy.relay()
        retry = airflow_api.client.post(f"{API}/{approval.id}/approve", headers=headers, json={"comment": "again"})
        assert retry.status_code == 409
        assert [v.user for v in direct.queries.get(approval.id).votes] == ["admin"]


def _eventually(condition: Callable[[], bool], *, within: float = 60.0) -> bool:
    """Wait for ``condition`` (the server finishing what it was sent), not for a fixed time."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

"""The Airflow plugin (:mod:`airflow_hitl.plugins.hitl_plugin`): the app it mounts and the views it adds.

Airflow loads it through the ``airflow.plugins`` entry point; its external views must be
what Airflow's plugins API serves (``ExternalViewResponse``), and every address they name
must be a route of the mounted app. The app is mounted as Airflow's api-server mounts it and driven
in-process with a real ASGI client; the views in a real Airflow UI are in ``tests/ui``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import pytest
from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
from airflow.plugins_manager import AirflowPlugin, is_valid_plugin
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_hitl import __version__
from airflow_hitl.plugins.hitl_plugin import (
    APPROVAL_TASK_VIEW,
    APPROVALS_NAV_VIEW,
    URL_PREFIX,
    HitlPlugin,
)


@pytest.fixture
def app() -> FastAPI:
    """The app the plugin mounts."""
    [entry] = HitlPlugin.fastapi_apps
    assert isinstance(entry["app"], FastAPI)
    return entry["app"]


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client of an app that mounts the plugin's app as Airflow's api-server does (``init_plugins``)."""
    server = FastAPI()
    server.mount(HitlPlugin.fastapi_apps[0]["url_prefix"], app)
    with TestClient(server) as test_client:
        yield test_client


class TestLoading:
    def test_airflow_loads_it_through_its_entry_point(self) -> None:
        [entry] = [e for e in metadata.entry_points(group="airflow.plugins") if e.name == "hitl"]
        plugin = entry.load()
        assert plugin is HitlPlugin
        assert issubclass(plugin, AirflowPlugin) and is_valid_plugin(plugin)
        assert plugin.name == "hitl"

    def test_it_mounts_one_app_at_hitl(self, app: FastAPI) -> None:
        [entry] = HitlPlugin.fastapi_apps
        assert (entry["url_prefix"], entry["name"]) == ("/hitl", "airflow-hitl approvals")
        assert app.version == __version__
        paths = {getattr(route, "path", "") for route in app.routes}
        assert {"/api/v1/approvals", "/ui/", "/links", "/slack/interactions", "/health"} <= paths

    def test_the_prefix_is_not_one_airflow_reserves(self) -> None:
        from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

        assert not any(URL_PREFIX.startswith(reserved) for reserved in RESERVED_URL_PREFIXES)

    def test_its_app_runs_the_outbox_drainer_while_it_serves(
        self, app: FastAPI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Airflow 3.3 enters a mounted app's lifespan; that is what starts the drainer (turned off here).
        monkeypatch.setenv("AIRFLOW__HITL__OUTBOX_DRAINER", "False")
        with TestClient(app) as direct:
            assert app.state.hitl_lifespan is True
            assert direct.get("/health").json() == {"status": "ok", "version": __version__}


class TestExternalViews:
    def test_they_are_what_airflows_plugins_api_serves(self) -> None:
        assert HitlPlugin.external_views == [APPROVALS_NAV_VIEW, APPROVAL_TASK_VIEW]
        for view in HitlPlugin.external_views:
            served = ExternalViewResponse.model_validate(view).model_dump(exclude_unset=True)
            assert served == view
            # Airflow 3.3 skips a view without a url_route.
            assert view["url_route"]
        assert len({v["url_route"] for v in HitlPlugin.external_views}) == 2

    def test_the_nav_entry_opens_the_inbox_at_the_top_level(self, client: TestClient) -> None:
        assert (APPROVALS_NAV_VIEW["destination"], APPROVALS_NAV_VIEW["nav_top_level"]) == ("nav", True)
        response = client.get(APPROVALS_NAV_VIEW["href"], follow_redirects=False)
        # A page of ours: without a session it sends the browser to Airflow's login and back.
        assert response.status_code == 303
        assert response.headers["location"] == "/api/v2/auth/login?next=%2Fhitl%2Fui%2F"

    @pytest.mark.parametrize("icon", ["icon", "icon_dark_mode"])
    def test_the_nav_icons_are_served(self, client: TestClient, icon: str) -> None:
        response = client.get(APPROVALS_NAV_VIEW[icon])
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")

    def test_the_task_tab_names_the_task_instance(self, client: TestClient) -> None:
        href = APPROVAL_TASK_VIEW["href"]
        assert APPROVAL_TASK_VIEW["destination"] == "task_instance"
        for placeholder in ("{DAG_ID}", "{RUN_ID}", "{TASK_ID}", "{MAP_INDEX}"):
            assert placeholder in href
        filled = href.format(DAG_ID="billing", RUN_ID="manual__1", TASK_ID="gate", MAP_INDEX="-1")
        response = client.get(filled, follow_redirects=False)
        assert response.status_code == 303
        assert "dag_id%3Dbilling%26run_id%3Dmanual__1%26task_id%3Dgate%26map_index%3D-1" in response.headers["location"]

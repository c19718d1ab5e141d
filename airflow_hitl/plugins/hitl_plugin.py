"""The Airflow plugin: mounts airflow-hitl's FastAPI app on the api-server at ``/hitl``."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_hitl.api.app import create_app

URL_PREFIX = "/hitl"


class HitlPlugin(AirflowPlugin):
    """Approvals REST API, pages and interaction endpoints inside Airflow's api-server."""

    name = "hitl"
    fastapi_apps: list[dict[str, Any]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "airflow-hitl approvals"}
    ]

"""The Airflow plugin: mounts airflow-hitl's FastAPI app on the api-server at ``/hitl``.

It also adds the Approvals pages to the Airflow UI through ``external_views`` (Airflow 3):
an "Approvals" entry in the nav and an "Approval" tab on task instances. An entry with a
``url_route`` is embedded in an iframe at ``/plugin/<url_route>`` (same origin, so the UI's
``_token`` cookie signs the pages in); entries without one are skipped by Airflow 3.3.
For destinations other than ``nav`` the UI fills ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}``
and ``{MAP_INDEX}`` in ``href``.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_hitl.api.app import create_app

URL_PREFIX = "/hitl"
UI_PREFIX = f"{URL_PREFIX}/ui"

#: The nav entry: the inbox (pending approvals), with history one tab away inside the page.
APPROVALS_NAV_VIEW: dict[str, Any] = {
    "name": "Approvals",
    "href": f"{UI_PREFIX}/",
    "url_route": "approvals",
    "destination": "nav",
    # Shown at the top level of the nav, not folded under "Plugins".
    "nav_top_level": True,
    # Two icons, like Airflow's own nav icons that follow the Appearance setting.
    "icon": f"{UI_PREFIX}/static/approvals.svg",
    "icon_dark_mode": f"{UI_PREFIX}/static/approvals-dark.svg",
}

#: The task instance tab: that task's approval, decidable there by an allowed user.
APPROVAL_TASK_VIEW: dict[str, Any] = {
    "name": "Approval",
    "href": f"{UI_PREFIX}/task?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}",
    "url_route": "hitl-approval",
    "destination": "task_instance",
}


class HitlPlugin(AirflowPlugin):
    """Approvals REST API, pages and interaction endpoints inside Airflow's api-server."""

    name = "hitl"
    fastapi_apps: list[dict[str, Any]] = [
        {"app": create_app(outbox_drainer=True), "url_prefix": URL_PREFIX, "name": "airflow-hitl approvals"}
    ]
    external_views: list[dict[str, Any]] = [APPROVALS_NAV_VIEW, APPROVAL_TASK_VIEW]

"""Airflow's auth manager instance, its ``get_user`` and the DAGs' teams: the api-server's internals.

The auth manager's interface (``BaseAuthManager``, its users and resource details) is public
and used in :mod:`airflow_hitl.identity`; how to reach the instance the api-server made, how
Airflow resolves a request's token, and which team owns a DAG are not: see the table in
:mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from fastapi import Request
    from fastapi.security import HTTPAuthorizationCredentials


def auth_manager() -> BaseAuthManager[BaseUser]:
    """The auth manager the api-server initialised (SimpleAuthManager, FabAuthManager, ...).

    Raises when this process has none (a worker, the triggerer, the CLI).
    """
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def dag_teams(dag_ids: Iterable[str]) -> dict[str, str | None]:
    """The team owning each of ``dag_ids`` in Airflow's metadata DB (multi-team mode only)."""
    from airflow.models.dag import DagModel

    return dict(DagModel.get_dag_id_to_team_name_mapping(list(dag_ids)))


@functools.cache
def oauth_token_param(get_user: Callable[..., Any]) -> str:
    """The name of ``get_user``'s unused OAuth2 token parameter on this Airflow.

    Airflow 3.3 renamed ``oauth_token`` to ``_oauth_token``; passing the wrong name is a
    TypeError, which would turn every call into a 401 on 3.1 and 3.2.
    """
    return "_oauth_token" if "_oauth_token" in inspect.signature(get_user).parameters else "oauth_token"


async def user_from_request(request: Request, credentials: HTTPAuthorizationCredentials | None) -> BaseUser:
    """Airflow's ``get_user``: the user of a bearer token, or of the UI's ``_token`` cookie.

    Raises FastAPI's ``HTTPException`` (401 or 403) for a missing, expired or invalid token.
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request=request, bearer_credentials=credentials, **{oauth_token_param(get_user): None})

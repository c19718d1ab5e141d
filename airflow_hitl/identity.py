"""Who a user is and what they may do, asked of Airflow's auth manager.

This is the ONE module of airflow-hitl that asks the auth manager: through its public
interface (``BaseAuthManager``, documented on Airflow's "Public Interface" page), and through
:mod:`airflow_hitl.seam.auth` for what is not public (the api-server's instance, ``get_user``,
the DAGs' teams). It sits low in the layers so that both the REST API (a caller's token) and
the notifications (the recipient of a link, the user behind a Slack click, the people of a
role) ask the same questions the same way.

Only the api-server initialises an auth manager; elsewhere (a worker, a script) the lookups
here find nothing, and their callers fall back to ``[hitl]`` configuration.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_hitl.policy import Principal
from airflow_hitl.seam import auth as airflow_auth
from airflow_hitl.seam.dags import dag_exists

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from fastapi import Request
    from fastapi.security import HTTPAuthorizationCredentials

log = logging.getLogger(__name__)

#: The auth manager's methods for reading and for editing a DAG.
READ = "GET"
EDIT = "PUT"

#: The role that makes a SimpleAuthManager user an admin, and FAB's default ``AUTH_ROLE_ADMIN``.
SIMPLE_ADMIN_ROLE = "admin"
FAB_ADMIN_ROLE = "Admin"


def auth_manager() -> BaseAuthManager[BaseUser]:
    """The auth manager the api-server initialised (SimpleAuthManager, FabAuthManager, ...)."""
    return airflow_auth.auth_manager()


def principal_of(user: BaseUser) -> Principal:
    """Our :class:`Principal` for an Airflow user of any auth manager.

    The name is ``get_name()`` (the user name that DAG authors write in ``allowed_approvers``).
    Roles come from SimpleAuthManager's single ``role`` or FabAuthManager's ``roles`` (role
    objects with a ``name``, or plain strings); an auth manager with neither gives none.
    """
    name = str(user.get_name() or user.get_id())
    roles: list[str] = []
    single = getattr(user, "role", None)
    if isinstance(single, str) and single:
        roles.append(single)
    many = getattr(user, "roles", None)
    if many and not isinstance(many, str):
        for role in many:
            role_name = getattr(role, "name", role)
            if isinstance(role_name, str) and role_name:
                roles.append(role_name)
    return Principal.of(name, roles)


def team_names(dag_ids: Iterable[str]) -> dict[str, str | None]:
    """The team owning each of ``dag_ids`` (None: no team); a DAG whose team cannot be known is left out.

    Outside multi-team mode no DAG has a team, and Airflow's metadata DB is not asked. In
    multi-team mode a DAG's team is its bundle's; a DAG of a bundle of no team has None. A
    DAG the metadata DB does not have (deleted since its approvals were opened, or a DB that
    cannot be read) is left out: it may have been any team's, so only a user who may read
    every DAG (:func:`reads_every_dag`) may see its approvals.
    """
    from airflow.configuration import conf

    ids = list(dict.fromkeys(dag_ids))
    if not ids or not conf.getboolean("core", "multi_team", fallback=False):
        return dict.fromkeys(ids)
    teams = airflow_auth.dag_teams(ids)
    # Airflow's mapping names only DAGs that have a team; those without one are every reader's.
    return {dag_id: teams.get(dag_id) for dag_id in ids if dag_id in teams or dag_exists(dag_id)}


def reads_every_dag(user: Any) -> bool:
    """Whether the auth manager provably lets ``user`` read and edit every DAG, of every team.

    Only SimpleAuthManager's admin role: its checks say yes to it before they look at the
    DAG or its team. ``is_authorized_dag`` asked without a DAG is no such promise: FAB says
    yes to GET for anyone who may read one DAG (it means "may list DAGs"), SimpleAuthManager
    in multi-team mode to a viewer of any team (it means "DAGs of no team"), and any other
    auth manager may mean either. Everyone else is asked DAG by DAG (:func:`authorized_dag_ids`).
    """
    try:
        manager = auth_manager()
    except Exception:
        return False
    if not callable(getattr(manager, "get_users", None)):  # not SimpleAuthManager
        return False
    # The user's own role, as SimpleAuthManager checks it: not [core] simple_auth_manager_all_admins,
    # which a token minted before the option was set does not follow.
    role = getattr(user, "role", None)
    return isinstance(role, str) and role.lower() == SIMPLE_ADMIN_ROLE


def is_authorized_dag(user: Any, *, method: str, dag_id: str) -> bool:
    """Ask the auth manager whether ``user`` may ``method`` the DAG ``dag_id``, of its team.

    There is deliberately no question about "all DAGs": see :func:`reads_every_dag`.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    teams = team_names([dag_id])
    if dag_id not in teams:
        return reads_every_dag(user)
    details = DagDetails(id=dag_id, team_name=teams[dag_id])
    return bool(auth_manager().is_authorized_dag(method=method, user=user, details=details))  # type: ignore[arg-type]


def authorized_dag_ids(user: Any, *, method: str, dag_ids: Iterable[str]) -> set[str]:
    """Those of ``dag_ids`` that ``user`` may ``method``: one auth-manager question per team.

    ``BaseAuthManager.filter_authorized_dag_ids`` is the public question for many DAGs (the
    one Airflow's own list routes ask, through ``get_authorized_dag_ids``): the base class asks
    ``is_authorized_dag`` per DAG, and an auth manager may answer all at once. It takes one
    team per call; outside multi-team mode no DAG has a team, so it is one call.
    """
    ids = set(dag_ids)
    if not ids:
        return set()
    teams = team_names(ids)
    allowed: set[str] = set()
    if len(teams) < len(ids) and reads_every_dag(user):
        allowed |= ids - teams.keys()  # DAGs of no known team: only for who reads every DAG
    by_team: dict[str | None, set[str]] = defaultdict(set)
    for dag_id, team in teams.items():
        by_team[team].add(dag_id)
    manager = auth_manager()
    for team, team_ids in by_team.items():
        question: dict[str, Any] = {"dag_ids": team_ids, "user": user, "method": method}
        if team is not None:
            question["team_name"] = team  # Airflow 3.2+: 3.1 has no teams, and no such parameter
        allowed |= manager.filter_authorized_dag_ids(**question)
    return allowed


def find_user(*, name: str | None = None, email: str | None = None) -> tuple[bool, Any | None]:
    """(an auth manager is available, its user record by ``name`` or ``email``, or None).

    SimpleAuthManager lists its configured users; FabAuthManager's security manager finds a
    user of its table by user name or email.
    """
    try:
        manager = auth_manager()
    except Exception:
        return False, None
    get_users = getattr(manager, "get_users", None)
    if callable(get_users):  # SimpleAuthManager: users come from [core] simple_auth_manager_users
        if name is None:
            return True, None
        return True, next((user for user in get_users() if user.get_name() == name), None)
    finder = getattr(getattr(manager, "security_manager", None), "find_user", None)
    if callable(finder):  # FabAuthManager
        try:
            return True, finder(username=name) if name is not None else finder(email=email)
        except Exception:
            log.warning("auth manager lookup of user %r failed", name or email, exc_info=True)
            return True, None
    return True, None


def user_known(name: str) -> bool | None:
    """Whether the auth manager has a user called ``name``; None when it cannot tell.

    SimpleAuthManager and FabAuthManager can (their user lists); any other auth manager, or a
    process without one (a worker, the CLI), cannot.
    """
    available, user = find_user(name=name)
    if not available:
        return None
    manager = auth_manager()
    can_tell = callable(getattr(manager, "get_users", None)) or callable(
        getattr(getattr(manager, "security_manager", None), "find_user", None)
    )
    if not can_tell:
        return None
    return user is not None


def roles_of(name: str) -> frozenset[str] | None:
    """The roles the auth manager gives user ``name`` now (for a delegator's vote); None when unknown."""
    available, user = find_user(name=name)
    if not available or user is None:
        return None
    return principal_of(user).roles


def is_admin(user: Any) -> bool:
    """Whether ``user`` is an Airflow admin, as their auth manager defines one.

    SimpleAuthManager: the ``admin`` role (everyone with ``simple_auth_manager_all_admins``).
    FabAuthManager: the security manager's admin role (``AUTH_ROLE_ADMIN``, ``Admin`` unless
    configured). Any other auth manager has no admin we could recognise: nobody is one.
    """
    try:
        manager = auth_manager()
    except Exception:
        return False
    if callable(getattr(manager, "get_users", None)):  # SimpleAuthManager
        from airflow.configuration import conf

        if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
            return True
        role = getattr(user, "role", None)
        return isinstance(role, str) and role.lower() == SIMPLE_ADMIN_ROLE
    security_manager = getattr(manager, "security_manager", None)
    if security_manager is not None:  # FabAuthManager
        try:
            admin_role = security_manager.auth_role_admin or FAB_ADMIN_ROLE
        except Exception:
            # Read from the Flask app's config, which needs an app context outside a FAB request.
            admin_role = FAB_ADMIN_ROLE
        return admin_role in principal_of(user).roles
    return False


async def user_from_request(request: Request, credentials: HTTPAuthorizationCredentials | None) -> BaseUser:
    """Airflow's ``get_user``: the user of a bearer token, or of the UI's ``_token`` cookie."""
    return await airflow_auth.user_from_request(request, credentials)

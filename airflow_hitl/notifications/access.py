"""Who is deciding from an email link or a Slack button, and may they edit the DAG?

The REST API asks the auth manager about the caller's token; a link or a click has no token,
only a user name (the link's recipient, the mapped Slack user). Here that name is looked up
in the api-server's auth manager (SimpleAuthManager's configured users, FabAuthManager's user
table) and asked the same question the REST API asks: edit access to the approval's DAG.
The request's own policy is then applied by the manager, as for every other vote.

Where no auth manager is initialised (the ``/hitl`` app embedded in a test or a script),
only the request's policy applies; the api-server always has one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow_hitl.policy import Principal

log = logging.getLogger(__name__)


def _lookup(name: str) -> tuple[bool, Any | None]:
    """(auth manager available, its user record for ``name`` or None)."""
    try:
        from airflow_hitl.api.security import auth_manager

        manager = auth_manager()
    except Exception:
        return False, None
    get_users = getattr(manager, "get_users", None)
    if callable(get_users):  # SimpleAuthManager: users come from [core] simple_auth_manager_users
        for user in get_users():
            if user.get_name() == name:
                return True, user
        return True, None
    finder = getattr(getattr(manager, "security_manager", None), "find_user", None)
    if callable(finder):  # FabAuthManager
        try:
            return True, finder(username=name)
        except Exception:
            log.warning("auth manager lookup of user %r failed", name, exc_info=True)
            return True, None
    return True, None


def decider(name: str, dag_id: str, *, extra_roles: Iterable[str] = ()) -> tuple[Principal | None, str | None]:
    """The principal ``name`` votes as, or the reason they may not decide approvals of ``dag_id``."""
    available, user = _lookup(name)
    if not available:
        return Principal.of(name, extra_roles), None
    if user is None:
        return None, f"{name!r} is not a user of this Airflow"
    from airflow_hitl.api.security import EDIT, is_authorized_dag, principal_of

    if not is_authorized_dag(user, method=EDIT, dag_id=dag_id):
        return None, f"you do not have edit access to DAG {dag_id!r}"
    principal = principal_of(user)
    return Principal.of(principal.name, [*principal.roles, *extra_roles]), None

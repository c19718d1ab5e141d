"""Who is deciding from an email link or a Slack button, and may they edit the DAG?

The REST API asks the auth manager about the caller's token; a link or a click has no token,
only a user name (the link's recipient, the mapped Slack user). Here that name is looked up
in the api-server's auth manager (SimpleAuthManager's configured users, FabAuthManager's user
table) and asked the same question the REST API asks: edit access to the approval's DAG.
The request's own policy is then applied by the manager, as for every other vote. A
delegate's vote is asked the same question about the delegator (:func:`delegator_refusal`),
on every channel, the REST API included.

Where no auth manager is initialised (the ``/hitl`` app embedded in a test or a script),
only the request's policy applies; the api-server always has one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from airflow_hitl.identity import EDIT, find_user, is_authorized_dag, principal_of
from airflow_hitl.policy import Principal

log = logging.getLogger(__name__)


def delegator_refusal(name: str, dag_id: str) -> str | None:
    """Why delegator ``name`` may not decide approvals of ``dag_id`` now, or None when they may.

    A delegate's vote is the delegator's: it needs the delegator's own edit access to the DAG,
    asked of the auth manager as the vote is cast (every channel passes this to the manager,
    which asks it under the request's lock). A delegator demoted or removed since they
    delegated decides nothing through anyone. Without an auth manager only the policy applies.
    """
    available, user = find_user(name=name)
    if not available:
        return None
    if user is None:
        return f"{name!r} is not a user of this Airflow"
    if not is_authorized_dag(user, method=EDIT, dag_id=dag_id):
        return f"{name} does not have edit access to DAG {dag_id!r}"
    return None


def decider(name: str, dag_id: str, *, extra_roles: Iterable[str] = ()) -> tuple[Principal | None, str | None]:
    """The principal ``name`` votes as, or the reason they may not decide approvals of ``dag_id``."""
    available, user = find_user(name=name)
    if not available:
        return Principal.of(name, extra_roles), None
    if user is None:
        return None, f"{name!r} is not a user of this Airflow"
    if not is_authorized_dag(user, method=EDIT, dag_id=dag_id):
        return None, f"you do not have edit access to DAG {dag_id!r}"
    principal = principal_of(user)
    return Principal.of(principal.name, [*principal.roles, *extra_roles]), None

"""Authentication and authorization of the ``/hitl`` API through Airflow's own auth manager.

FastAPI's side of it: who the caller of a request is (:class:`Caller`), the dependencies
that require read or edit access, and the CSRF guard. The questions themselves are asked of
Airflow's auth manager in :mod:`airflow_hitl.identity`, which the notifications (links,
Slack clicks, recipients) share.

- Authentication: Airflow's ``get_user`` (a bearer token from ``POST /auth/token``, or the
  UI's ``_token`` cookie). A missing, expired or invalid token is a 401 here, where Airflow
  answers an invalid one with 403, because our contract keeps 403 for "authenticated but
  not allowed".
- Authorization: reading an approval needs read (``GET``) access to its DAG; deciding,
  cancelling and creating need edit (``PUT``) access, asked of the auth manager with the
  approval's ``dag_id`` exactly as Airflow's ``requires_access_dag`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airflow_hitl.identity import (
    EDIT,
    READ,
    authorized_dag_ids,
    is_authorized_dag,
    principal_of,
    reads_every_dag,
    user_from_request,
)
from airflow_hitl.policy import Principal

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

# Declared with auto_error=False so a missing header reaches Airflow's get_user, which then
# falls back to the UI cookie; it also documents the bearer scheme in our OpenAPI.
_bearer_scheme = HTTPBearer(auto_error=False, description="A JWT from Airflow's `POST /auth/token`.")

__all__ = ["EDIT", "READ", "Caller", "authenticate", "current_caller", "is_authorized_dag", "principal_of"]


@dataclass(frozen=True, kw_only=True)
class Caller:
    """The authenticated Airflow user of one request, and our policy's view of them."""

    user: BaseUser
    principal: Principal
    _verdicts: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The user name the policy, votes and audit trail use."""
        return self.principal.name

    def can_read_dag(self, dag_id: str) -> bool:
        """True when the auth manager gives this user read access to ``dag_id``."""
        return self._authorized(READ, dag_id)

    def can_edit_dag(self, dag_id: str) -> bool:
        """True when the auth manager gives this user edit access to ``dag_id``."""
        return self._authorized(EDIT, dag_id)

    def edit_refusal(self, dag_id: str) -> str | None:
        """Why this user may not decide approvals of ``dag_id``, or None when they may.

        Passed as ``dag_access`` to the manager's decisions, which ask it under the row lock.
        """
        if self.can_edit_dag(dag_id):
            return None
        return f"you do not have edit access to DAG {dag_id!r}"

    def _authorized(self, method: str, dag_id: str) -> bool:
        # Lists ask the same question for every row of a DAG; one answer per request is enough.
        key = (method, dag_id)
        if key not in self._verdicts:
            self._verdicts[key] = is_authorized_dag(self.user, method=method, dag_id=dag_id)
        return self._verdicts[key]


def readable_dag_ids(caller: Caller, candidates: Callable[[], Iterable[str]]) -> set[str] | None:
    """Of the DAG ids ``candidates()`` returns, those ``caller`` may read; None when they may read every DAG.

    Airflow's own list routes filter with ``get_authorized_dag_ids``, which only knows DAGs in
    the metadata DB; approvals can outlive their DAG or be opened from outside a task, so we
    filter the DAG ids that occur in the approval store with the same auth manager instead.
    """
    # The shortcut is only for who provably reads every DAG of every team. Not "is_authorized_dag
    # without a DAG": FAB answers it yes for a reader of one DAG, SimpleAuthManager in multi-team
    # mode for a viewer of any team (tests/api/test_security.py, TestFab and TestTeams).
    if reads_every_dag(caller.user):
        return None
    # Only asked for when needed: a user who may read every DAG costs no store query.
    return authorized_dag_ids(caller.user, method=READ, dag_ids=candidates())


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None = None) -> Caller:
    """Resolve the caller with Airflow's ``get_user``; raise 401 when there is no valid token."""
    try:
        user = await user_from_request(request, credentials)
    except HTTPException as err:
        # Airflow says 403 "Invalid JWT token" for a forged or malformed token; to an API
        # client that is "not authenticated", which the contract spells 401.
        if err.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=str(err.detail) if err.status_code == status.HTTP_401_UNAUTHORIZED else "Invalid token",
                headers={"WWW-Authenticate": "Bearer"},
            ) from err
        raise
    except Exception as err:
        # A token the validator cannot even parse must never become a 500.
        log.info("rejecting a request whose token could not be validated: %s", err)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Invalid token",
            headers={"WWW-Authenticate": "Bearer"},
        ) from err
    return Caller(user=user, principal=principal_of(user))


async def bearer_credentials(request: Request) -> HTTPAuthorizationCredentials | None:
    """The ``Authorization: Bearer`` credentials of ``request``, if any."""
    return await _bearer_scheme(request)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def require_same_site(request: Request) -> None:
    """Refuse a state-changing request that did not come from a page of this site (CSRF guard).

    Browsers only let a page add ``X-Requested-With`` to a same-origin request (cross-origin
    it needs a CORS preflight, which this app never answers), and they always send ``Origin``
    on a cross-site POST.
    """
    if request.headers.get("x-requested-with") != "XMLHttpRequest":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing X-Requested-With header (cross-site request refused)")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Caller:
    """FastAPI dependency: the authenticated caller of this request.

    A bearer token cannot be sent by another site; the UI's cookie can, so a state-changing
    request authenticated by the cookie alone must also prove it came from our own pages.
    """
    caller = await authenticate(request, credentials)
    if credentials is None and request.method not in SAFE_METHODS:
        require_same_site(request)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def require_read(caller: Caller, dag_id: str) -> None:
    """Raise 403 unless ``caller`` may read ``dag_id``."""
    if not caller.can_read_dag(dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you do not have read access to DAG {dag_id!r}")


def require_edit(caller: Caller, dag_id: str) -> None:
    """Raise 403 unless ``caller`` may edit ``dag_id`` (decide, cancel or open its approvals)."""
    if not caller.can_edit_dag(dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you do not have edit access to DAG {dag_id!r}")

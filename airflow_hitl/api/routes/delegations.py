"""``/api/v1/delegations``: thin handlers over the manager's delegations.

A user lets another decide their approvals for a period (see :mod:`airflow_hitl.delegation`).
The delegator is the caller; an admin (as :func:`airflow_hitl.identity.is_admin` defines one
per auth manager) may name another. Listing shows the caller's own delegations, given or
received; an admin sees every one. Only the delegator or an admin ends one.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from airflow_hitl.api.datamodels import (
    MAX_ID_LENGTH,
    DelegationBody,
    DelegationCollectionResponse,
    DelegationResponse,
    error_responses,
)
from airflow_hitl.api.deps import DEFAULT_LIMIT, Limit, ManagerDep, Offset, Text, client_of
from airflow_hitl.api.security import CallerDep, current_caller
from airflow_hitl.delegation import DelegationNotFound
from airflow_hitl.identity import is_admin, user_known

router = APIRouter(
    prefix="/delegations",
    tags=["delegations"],
    dependencies=[Depends(current_caller)],
    responses=error_responses(401, 422, 503),
)


def _not_found_response() -> dict[int | str, dict[str, Any]]:
    # The shared 404 text speaks of approval requests; this one of delegations.
    responses = error_responses(403, 404)
    responses[404] = {**responses[404], "description": "No delegation with this id."}
    return responses


def _canonical_id(value: str) -> str:
    # Not a UUID cannot name a delegation: the same answer as an unknown one.
    try:
        if len(value) <= MAX_ID_LENGTH:
            return str(uuid.UUID(value))
    except ValueError:
        pass
    raise DelegationNotFound(value[:MAX_ID_LENGTH])


@router.post(
    "",
    response_model=DelegationResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Let someone decide your approvals for a period",
    responses=error_responses(403, 413),
)
def create_delegation(body: DelegationBody, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """Create a delegation from the caller (or, for an admin, from ``delegator``) to ``delegate``."""
    created = manager.delegations.create_delegation(
        actor=caller.principal,
        delegate=body.delegate,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        dag_ids=body.dag_ids,
        delegator=body.delegator,
        admin=is_admin(caller.user),
        user_known=user_known,
        source="api",
        client=client_of(request),
    )
    return JSONResponse(manager.delegations.describe_delegation(created), status_code=status.HTTP_201_CREATED)


@router.get(
    "",
    response_model=DelegationCollectionResponse,
    summary="Delegations you gave or received (every one for an admin)",
    responses=error_responses(403),
)
def list_delegations(
    caller: CallerDep,
    manager: ManagerDep,
    state: Annotated[Literal["active", "all"], Query(description="`active`: only those in force now.")] = "all",
    user: Annotated[Text, Query(description="Admins: only those this user gave or received.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    offset: Offset = 0,
) -> Response:
    """The caller's delegations (as delegator or delegate), newest first; admins see all of them."""
    admin = is_admin(caller.user)
    if user is not None and user != caller.name and not admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may list another user's delegations")
    involving = user if admin else caller.name
    items, total = manager.delegations.list_delegations(
        involving=involving, active_only=state == "active", limit=limit, offset=offset
    )
    return JSONResponse(
        {"delegations": [manager.delegations.describe_delegation(d) for d in items], "total_entries": total}
    )


@router.delete(
    "/{delegation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End a delegation now",
    responses=_not_found_response(),
)
def end_delegation(delegation_id: str, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """End it now (its delegator or an admin); ending one that is already over changes nothing."""
    manager.delegations.end_delegation(
        _canonical_id(delegation_id),
        actor=caller.principal,
        admin=is_admin(caller.user),
        source="api",
        client=client_of(request),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)

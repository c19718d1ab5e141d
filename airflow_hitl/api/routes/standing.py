"""``/api/v1/standing-approvals``: thin handlers over the manager's standing approvals.

An approver votes ahead of time for the gates of a DAG (or of one task of it) that open in a
window, at most ``max_uses`` times (see :mod:`airflow_hitl.standing`). The approver is always
the caller: creating one needs edit access to the DAG (whoever could not decide its gates
cannot approve them ahead), and the DAG must be one Airflow knows. Listing shows the caller's
own; an admin (as :func:`airflow_hitl.identity.is_admin` defines one per auth manager) sees
everyone's and may filter by ``approver``. Only the approver or an admin revokes one.

Someone else's standing approval is answered as an unknown one, 404 on ``GET`` and ``DELETE``
alike: its id says nothing about whether it exists. ``GET /approvals/{id}/standing`` tells how
the standing approvals owed a request their votes were settled; it needs read access to the
request's DAG, as the request itself does.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from airflow_hitl.api.datamodels import (
    MAX_ID_LENGTH,
    StandingApprovalBody,
    StandingApprovalCollectionResponse,
    StandingApprovalResponse,
    StandingOwedVotesResponse,
    StandingState,
    error_responses,
)
from airflow_hitl.api.deps import (
    DEFAULT_LIMIT,
    Limit,
    ManagerDep,
    Offset,
    RestChannel,
    Text,
    canonical_approval_id,
    client_of,
)
from airflow_hitl.api.security import Caller, CallerDep, current_caller, require_read
from airflow_hitl.identity import is_admin
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.seam.dags import dag_exists
from airflow_hitl.settings import HitlSettings
from airflow_hitl.standing import StandingApproval, StandingNotFound

router = APIRouter(
    tags=["standing approvals"],
    dependencies=[Depends(current_caller)],
    responses=error_responses(401, 422, 503),
)

PATH = "/standing-approvals"


def _not_found_response(*codes: int) -> dict[int | str, dict[str, Any]]:
    # The shared 404 text speaks of approval requests; this one of standing approvals.
    responses = error_responses(*codes, 404)
    responses[404] = {
        **responses[404],
        "description": "No standing approval with this id, or it is someone else's (you are not an admin).",
    }
    return responses


def _canonical_id(value: str) -> str:
    # Not a UUID cannot name a standing approval: the same answer as an unknown one.
    try:
        if len(value) <= MAX_ID_LENGTH:
            return str(uuid.UUID(value))
    except ValueError:
        pass
    raise StandingNotFound(value[:MAX_ID_LENGTH])


def _own(manager: ApprovalManager, standing_id: str, caller: Caller) -> StandingApproval:
    """The standing approval ``standing_id`` when ``caller`` owns it or is an admin; else 404, as if unknown."""
    standing = manager.standing.get(_canonical_id(standing_id))
    if standing.approver != caller.name and not is_admin(caller.user):
        raise StandingNotFound(standing.id)
    return standing


def _json(manager: ApprovalManager, standing: StandingApproval, status_code: int = status.HTTP_200_OK) -> JSONResponse:
    return JSONResponse(manager.standing.describe(standing), status_code=status_code)


@router.post(
    PATH,
    response_model=StandingApprovalResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Approve ahead the gates of a DAG that open in a window",
    responses=error_responses(403, 413),
)
def create_standing_approval(
    body: StandingApprovalBody, request: Request, caller: CallerDep, manager: ManagerDep, channel: RestChannel
) -> Response:
    """Your vote, cast for you on each gate of ``dag_id`` (``task_id``'s only, when named) opening in the window.

    403 without edit access to the DAG; 422 naming the field for a window that is over or
    longer than ``[hitl] standing_approval_max_days``, or a DAG Airflow does not know.
    """
    created = manager.standing.create(
        actor=caller.principal,
        dag_id=body.dag_id,
        task_id=body.task_id,
        valid_from=body.valid_from,
        valid_until=body.valid_until,
        max_uses=body.max_uses,
        comment=body.comment,
        max_days=HitlSettings.load().standing_approval_max_days,
        dag_access=caller.edit_refusal,
        dag_known=dag_exists,
        source=channel[0],
        client={**client_of(request), **channel[1]},
    )
    return _json(manager, created, status.HTTP_201_CREATED)


@router.get(
    PATH,
    response_model=StandingApprovalCollectionResponse,
    summary="Your standing approvals (everyone's for an admin)",
    responses=error_responses(403),
)
def list_standing_approvals(
    caller: CallerDep,
    manager: ManagerDep,
    state: Annotated[StandingState | None, Query(description="Only those in this state now.")] = None,
    dag_id: Annotated[Text, Query(description="Only those of this DAG.")] = None,
    approver: Annotated[
        Text, Query(description="Admins: only this approver's. Others may only name themselves.")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    offset: Offset = 0,
) -> Response:
    """The caller's standing approvals, newest first; an admin's list holds everyone's."""
    admin = is_admin(caller.user)
    if approver is not None and approver != caller.name and not admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may list another user's standing approvals")
    items, total = manager.standing.list(
        approver=approver if admin else caller.name, dag_id=dag_id, state=state, limit=limit, offset=offset
    )
    return JSONResponse({"standing_approvals": [manager.standing.describe(s) for s in items], "total_entries": total})


@router.get(
    f"{PATH}/{{standing_id}}",
    response_model=StandingApprovalResponse,
    summary="One standing approval",
    responses=_not_found_response(),
)
def get_standing_approval(standing_id: str, caller: CallerDep, manager: ManagerDep) -> Response:
    """One of the caller's standing approvals (anyone's for an admin)."""
    return _json(manager, _own(manager, standing_id, caller))


@router.delete(
    f"{PATH}/{{standing_id}}",
    response_model=StandingApprovalResponse,
    summary="Revoke a standing approval now",
    responses=_not_found_response(),
)
def revoke_standing_approval(
    standing_id: str, request: Request, caller: CallerDep, manager: ManagerDep, channel: RestChannel
) -> Response:
    """Revoke it now (its approver or an admin): it casts no vote from here on; revoking twice changes nothing."""
    standing = _own(manager, standing_id, caller)
    revoked = manager.standing.revoke(
        standing.id,
        actor=caller.principal,
        admin=is_admin(caller.user),
        source=channel[0],
        client={**client_of(request), **channel[1]},
    )
    return _json(manager, revoked)


@router.get(
    "/approvals/{approval_id}/standing",
    response_model=StandingOwedVotesResponse,
    summary="The votes standing approvals owed a request, and how each was settled",
    responses=error_responses(403, 404),
)
def approval_standing(approval_id: str, caller: CallerDep, manager: ManagerDep) -> Response:
    """Each standing approval's vote owed when the request opened or escalated: due, used, or skipped and why."""
    approval = manager.queries.get(canonical_approval_id(approval_id))
    require_read(caller, approval.dag_id)
    owed = manager.standing.owed_to(approval.id)
    return JSONResponse({"owed_votes": owed, "total_entries": len(owed)})

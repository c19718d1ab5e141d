"""What several routers of the ``/hitl`` app share: FastAPI dependencies and the way a body becomes a decision.

The manager of the process (:func:`get_manager`, :data:`ManagerDep`) and the figures of its
store (:func:`analytics_of`), who sent a request (:func:`client_of`), an approval id in its
canonical form, the paging and text query parameters, and a request body turned into the
:class:`~airflow_hitl.manager.Decision` of the one decision path (:func:`body_decision`, and
:func:`decide_many` for the REST API's and the pages' bulk actions). The routers in
:mod:`airflow_hitl.api.routes` import them from here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, cast

from fastapi import Depends, Header, HTTPException, Query, Request
from pydantic import AfterValidator, BaseModel

from airflow_hitl.analytics import ApprovalAnalytics
from airflow_hitl.api.datamodels import MAX_ID_LENGTH, BulkBody, BulkItemResult
from airflow_hitl.api.security import Caller
from airflow_hitl.exceptions import HitlError, InvalidInput
from airflow_hitl.identity import roles_of as delegator_roles
from airflow_hitl.limits import INT32_MAX, text_problem
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.notifications.access import delegator_refusal
from airflow_hitl.vocabulary import (
    CLIENT_DETAIL_HEADERS,
    CLIENT_HEADER,
    REST_SOURCES,
    Action,
    DecisionActionWord,
    Source,
    SourceWord,
)

_manager_lock = threading.Lock()
_process_manager: ApprovalManager | None = None

MAX_LIMIT = 10_000
# Beyond any real store, within PostgreSQL's bigint OFFSET.
MAX_OFFSET = INT32_MAX
DEFAULT_LIMIT = 100


def get_manager(request: Request) -> ApprovalManager:
    """The manager of this process, created on first use.

    A test (or an embedding app) may set ``app.state.hitl_manager`` or override this
    dependency. Creation is lazy because resolving the store reads the ``hitl_default``
    connection, which must not happen when the plugin is merely imported.
    """
    injected = getattr(request.app.state, "hitl_manager", None)
    if injected is not None:
        return cast("ApprovalManager", injected)
    global _process_manager
    if _process_manager is None:
        with _manager_lock:
            if _process_manager is None:
                _process_manager = ApprovalManager()
    return _process_manager


async def manager_of(request: Request) -> ApprovalManager:
    """FastAPI dependency: :func:`get_manager`, run on the event loop.

    A plain ``def`` dependency would be run in the thread pool, a hand-off that costs more
    than the function itself on every request.
    """
    return get_manager(request)


ManagerDep = Annotated[ApprovalManager, Depends(manager_of)]


async def analytics_of(request: Request) -> ApprovalAnalytics:
    """FastAPI dependency: the figures of the store of this process's manager (:func:`get_manager`).

    Built per request, which costs nothing (it only holds the store); the manager does not
    hand one out.
    """
    return ApprovalAnalytics(store=get_manager(request).store)


def client_of(request: Request) -> dict[str, Any]:
    """Who sent ``request`` (address, user agent): recorded in the audit trail with every decision made over HTTP."""
    return {
        "client_address": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
    }


def canonical_approval_id(value: str) -> str:
    """Canonical form of an approval id; InvalidInput when it is not a UUID."""
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput("id", "is not a valid approval id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput("id", f"{value!r} is not a valid approval id") from None


def storable_text(value: str | None) -> str | None:
    """``value`` when the store can keep it; ValueError (a 422) naming why not.

    PostgreSQL refuses NUL and lone surrogates in text: a 422 here rather than a 500 there.
    """
    problem = text_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


def _rest_source(value: str | None) -> str | None:
    if value is not None and value not in REST_SOURCES:
        raise ValueError(f"must be one of {list(REST_SOURCES)}")
    return value


def rest_channel(
    x_hitl_client: Annotated[
        str | None,
        Header(
            alias=CLIENT_HEADER,
            description="`cli` when the command line sends the decision (recorded as its source); default `api`. "
            "Only a label: who decides is always the token's user.",
        ),
        AfterValidator(_rest_source),
    ] = None,
    os_user: Annotated[
        str | None, Header(alias=CLIENT_DETAIL_HEADERS["os_user"], max_length=255), AfterValidator(storable_text)
    ] = None,
    hostname: Annotated[
        str | None, Header(alias=CLIENT_DETAIL_HEADERS["hostname"], max_length=255), AfterValidator(storable_text)
    ] = None,
) -> tuple[Source, dict[str, Any]]:
    """The source of a REST decision (``api`` or ``cli``) and, for the CLI, where it says it ran."""
    if x_hitl_client != Source.CLI:
        return Source.API, {}
    return Source.CLI, {k: v for k, v in {"os_user": os_user, "hostname": hostname}.items() if v is not None}


RestChannel = Annotated[tuple[Source, dict[str, Any]], Depends(rest_channel)]


Limit = Annotated[int, Query(ge=0, le=MAX_LIMIT, description=f"Page size, 0 to {MAX_LIMIT}.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"Rows to skip, 0 to {MAX_OFFSET}.")]
Text = Annotated[str | None, Query(max_length=250), AfterValidator(storable_text)]


def decision_of(
    caller: Caller,
    action: DecisionActionWord | Action,
    *,
    source: SourceWord | Source,
    client: Mapping[str, Any],
    comment: str | None = None,
    reason: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_behalf_of: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    content_digest: str | None = None,
) -> Decision:
    """The :class:`Decision` of an authenticated caller; their edit access is asked under the row lock.

    A delegate's vote is checked against the delegator's roles and edit access to the DAG as the
    auth manager gives them when the vote is cast.
    """
    return Decision(
        action=action,
        user=caller.principal,
        source=source,
        comment=comment,
        reason=reason,
        metadata=metadata,
        client=client,
        dag_access=caller.edit_refusal,
        on_behalf_of=on_behalf_of,
        delegator_roles=delegator_roles,
        # The delegator's own edit access now, asked under the row lock like the caller's.
        delegator_access=delegator_refusal,
        inputs=inputs,
        content_digest=content_digest,
    )


#: The fields of a decision that a request body may carry (ApproveBody, RejectBody, CancelBody).
_BODY_FIELDS = ("comment", "reason", "metadata", "on_behalf_of", "inputs", "content_digest")


def body_decision(
    caller: Caller,
    action: DecisionActionWord | Action,
    body: BaseModel,
    *,
    source: SourceWord | Source,
    request: Request,
    details: Mapping[str, Any] | None = None,
) -> Decision:
    """The :class:`Decision` a REST or page request body asks for: whichever fields the body has.

    ``details``: what the client says of itself (the CLI's OS user and host), kept with the client.
    """
    fields = {name: getattr(body, name) for name in _BODY_FIELDS if name in type(body).model_fields}
    return decision_of(caller, action, source=source, client={**client_of(request), **(details or {})}, **fields)


def decide_many(
    body: BulkBody, *, caller: Caller, manager: ApprovalManager, client: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply ``body.action`` to each id as ``caller`` (source ``bulk``); the JSON of a :class:`BulkResponse`."""
    results: list[BulkItemResult] = []
    digests = body.content_digests or {}
    for raw_id in body.ids:
        try:
            approval_id = canonical_approval_id(raw_id)
            decision = decision_of(
                caller,
                body.action,
                source=Source.BULK,
                client=client,
                comment=body.comment if body.action != Action.CANCEL.value else None,
                reason=body.reason,
                content_digest=digests.get(raw_id),
            )
            done = manager.decide(approval_id, decision)
            results.append(BulkItemResult(id=approval_id, ok=True, status_code=200, state=done.state))
        except HitlError as err:
            detail = getattr(err, "reason", None) or str(err)
            results.append(BulkItemResult(id=raw_id, ok=False, status_code=err.status_code, detail=detail))
        except HTTPException as err:
            results.append(BulkItemResult(id=raw_id, ok=False, status_code=err.status_code, detail=str(err.detail)))
    succeeded = sum(1 for r in results if r.ok)
    return {
        "action": body.action,
        "results": [r.model_dump() for r in results],
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
    }

"""``/api/v1/approvals``: thin handlers over :class:`~airflow_hitl.manager.ApprovalManager`.

Each handler authenticates the caller (Airflow token), checks DAG access with the auth
manager, calls the manager, and shapes the answer. Policy, state transitions and audit
rows all live in the manager; domain errors carry their own HTTP status and are turned
into responses by the handler installed in :mod:`airflow_hitl.api.app`.

Handlers are plain ``def``: the manager does blocking database work, which FastAPI then
runs in its thread pool instead of on the event loop.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

from airflow_hitl.api.datamodels import (
    ApprovalCollectionResponse,
    ApprovalResponse,
    ApproveBody,
    BulkBody,
    BulkResponse,
    CancelBody,
    CreateBody,
    NoticeResponse,
    RejectBody,
    error_responses,
)
from airflow_hitl.api.deps import (
    DEFAULT_LIMIT,
    Limit,
    ManagerDep,
    Offset,
    RestChannel,
    Text,
    body_decision,
    canonical_approval_id,
    client_of,
    decide_many,
    storable_text,
)
from airflow_hitl.api.security import (
    Caller,
    CallerDep,
    current_caller,
    readable_dag_ids,
    require_edit,
    require_read,
)
from airflow_hitl.delegation import Delegation
from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.identity import roles_of as delegator_roles
from airflow_hitl.limits import INT32_MAX, time_problem
from airflow_hitl.manager import ApprovalFilter, ApprovalManager, ApprovalSpec
from airflow_hitl.notifications.access import delegator_refusal
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.queries import SNAPSHOT_CACHE_SIZE, Kept
from airflow_hitl.records import Approval
from airflow_hitl.vocabulary import (
    STATES,
    TERMINAL_STATES,
    Action,
    Origin,
    OriginWord,
    Source,
    State,
)

router = APIRouter(
    prefix="/approvals",
    tags=["approvals"],
    dependencies=[Depends(current_caller)],
    responses=error_responses(401, 422, 503),
)
# What a single request's decision can answer besides 401, 422 and 503.
_DECISION_ERRORS = error_responses(403, 404, 409, 413)

CSV_COLUMNS = (
    "id",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "origin",
    "title",
    "state",
    "decision",
    "decided_by",
    "decided_at",
    "decision_source",
    "comment",
    "requested_by",
    "requested_at",
    "expires_at",
    "required_approvals",
    "approvers",
    "votes",
    # What the approvers were shown when it was decided (see Approval.content_digest).
    "content_digest",
)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # A time without an offset is taken as UTC, the zone every stored time is in.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _visible(caller: Caller, manager: ApprovalManager, filters: ApprovalFilter) -> ApprovalFilter | None:
    """``filters`` narrowed to the DAGs ``caller`` may read; None when nothing is visible."""
    dag_ids = readable_dag_ids(caller, manager.queries.dag_ids)
    if dag_ids is None:
        return filters
    if not dag_ids:
        return None
    from dataclasses import replace

    return replace(filters, dag_ids=sorted(dag_ids))


#: What only the API adds to :meth:`Approval.to_dict`: what the caller may do, the notices' delivery.
CALLER_FIELDS = ("can_approve", "can_approve_reason", "can_approve_for", "notices")
#: What the API leaves out of :meth:`Approval.to_dict`: the DAG author's notification settings.
HIDDEN_FIELDS = frozenset({"notify"})
_ITEM_FIELDS = tuple(name for name in ApprovalResponse.model_fields if name not in CALLER_FIELDS)


def _caller_fields(
    approval: Approval,
    caller: Caller | None = None,
    manager: ApprovalManager | None = None,
    delegations: Sequence[Delegation] = (),
) -> dict[str, Any]:
    """What ``caller`` may do with ``approval`` (:data:`CALLER_FIELDS`); all null without a caller."""
    # Only the pending list and the single item say what the caller may do; null elsewhere.
    data: dict[str, Any] = dict.fromkeys(CALLER_FIELDS)
    if caller is not None and manager is not None:
        refusal = caller.edit_refusal(approval.dag_id)
        if refusal is None:
            own = manager.queries.can_approve(caller.principal, approval)
            # The caller's active delegations (read once per list) may let them decide for someone.
            eligibility = manager.delegations.can_decide(
                caller.principal, approval, own, delegations, roles_of=delegator_roles, access=delegator_refusal
            )
            # Four eyes across a run: a delegator who voted on a gate this one names may not vote here either.
            eligibility = manager.queries.apart(approval, caller.name, eligibility)
            data["can_approve"], data["can_approve_reason"] = eligibility.allowed, eligibility.reason
            data["can_approve_for"] = eligibility.on_behalf_of
        else:
            data["can_approve"], data["can_approve_reason"] = False, refusal
    return data


def _item(
    approval: Approval,
    caller: Caller | None = None,
    manager: ApprovalManager | None = None,
    delegations: Sequence[Delegation] = (),
) -> dict[str, Any]:
    """The API form of ``approval``: :meth:`Approval.to_dict` in the order of :class:`ApprovalResponse`.

    Not validated through the response model: on a page of 100 requests that costs more than
    the database. tests/test_records.py checks that the record and the model name the same
    fields, and the API tests check every response against the models.
    """
    full = approval.to_dict()
    data = {name: full[name] for name in _ITEM_FIELDS}
    data.update(_caller_fields(approval, caller, manager, delegations))
    return data


def _dumps(content: Any) -> str:
    # What JSONResponse writes.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


class _ItemTexts:
    """The JSON of listed requests' own fields, by record.

    On PostgreSQL a page hands out the same record for a request until it changes (see
    :mod:`airflow_hitl.queries`), so an unchanged request is serialised once, not once per
    page. Kept by the record's identity, holding the record so that identity is never reused
    while it is kept.
    """

    def __init__(self, *, size: int) -> None:
        self._kept: Kept[int, tuple[Approval, str]] = Kept(size=size)

    def text(self, approval: Approval) -> str:
        """``{...`` without its closing brace: the caller's fields follow."""
        kept = self._kept.get(id(approval))
        if kept is not None and kept[0] is approval:
            return kept[1]
        full = approval.to_dict()
        text = _dumps({name: full[name] for name in _ITEM_FIELDS})[:-1]
        self._kept.put(id(approval), (approval, text))
        return text


_item_texts = _ItemTexts(size=SNAPSHOT_CACHE_SIZE)


def _json(content: Any, status_code: int = status.HTTP_200_OK) -> JSONResponse:
    # The body is already JSON-ready; skip FastAPI's second pass through the response model.
    return JSONResponse(content=content, status_code=status_code)


def _collection(
    items: Iterable[Approval],
    total: int,
    caller: Caller | None = None,
    manager: ApprovalManager | None = None,
    delegations: Sequence[Delegation] = (),
) -> Response:
    """A page of requests: each one's own fields as kept JSON, followed by the caller's."""
    texts = (f"{_item_texts.text(a)},{_dumps(_caller_fields(a, caller, manager, delegations))[1:]}" for a in items)
    body = f'{{"approvals":[{",".join(texts)}],"total_entries":{int(total)}}}'
    return Response(content=body.encode("utf-8"), media_type="application/json")


def _states(values: Iterable[str] | None, allowed: tuple[State, ...]) -> list[State] | None:
    if not values:
        return None
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise InvalidInput("state", f"unknown state(s) {wrong}; one of {list(allowed)}")
    return [State(v) for v in values]


def _representable_time(value: dt.datetime | None) -> dt.datetime | None:
    problem = time_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


Time = Annotated[dt.datetime | None, AfterValidator(_representable_time)]
OriginFilter = Annotated[
    OriginWord | None,
    Query(description="`task`: only task instances' gates; `api`: only requests opened over the REST API."),
]
MapIndex = Annotated[int | None, Query(ge=-1, le=INT32_MAX, description="Task map index (-1: not mapped).")]


@router.get("", response_model=ApprovalCollectionResponse, summary="List approval requests")
def list_approvals(
    caller: CallerDep,
    manager: ManagerDep,
    state: Annotated[list[str] | None, Query(description="Repeat for several states.")] = None,
    dag_id: Text = None,
    run_id: Text = None,
    task_id: Text = None,
    map_index: MapIndex = None,
    origin: OriginFilter = None,
    requested_by: Text = None,
    decided_by: Text = None,
    limit: Limit = DEFAULT_LIMIT,
    offset: Offset = 0,
    order_by: Annotated[
        str, Query(max_length=50, description="A column; prefix '-' for descending."), AfterValidator(storable_text)
    ] = ("-requested_at"),
) -> Response:
    """Approval requests on DAGs the caller may read, newest first by default."""
    filters = _visible(
        caller,
        manager,
        ApprovalFilter(
            states=_states(state, STATES),
            dag_id=dag_id,
            run_id=run_id,
            task_id=task_id,
            map_index=map_index,
            origin=origin,
            requested_by=requested_by,
            decided_by=decided_by,
        ),
    )
    if filters is None:
        return _collection([], 0)
    items, total = manager.queries.list(filters, limit=limit, offset=offset, order_by=order_by)
    return _collection(items, total)


@router.get("/pending", response_model=ApprovalCollectionResponse, summary="List pending approval requests")
def list_pending(
    caller: CallerDep,
    manager: ManagerDep,
    dag_id: Text = None,
    run_id: Text = None,
    task_id: Text = None,
    origin: OriginFilter = None,
    requested_by: Text = None,
    limit: Limit = DEFAULT_LIMIT,
    offset: Offset = 0,
) -> Response:
    """Requests still waiting (pending or escalated), soonest expiry first, each with ``can_approve``."""
    filters = _visible(
        caller,
        manager,
        ApprovalFilter(dag_id=dag_id, run_id=run_id, task_id=task_id, origin=origin, requested_by=requested_by),
    )
    if filters is None:
        return _collection([], 0)
    items, total = manager.queries.pending(filters, limit=limit, offset=offset)
    return _collection(items, total, caller, manager, manager.delegations.delegations_to(caller.name))


@router.get(
    "/history",
    response_model=ApprovalCollectionResponse,
    summary="Decided approval requests (JSON, or CSV with format=csv)",
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "JSON page, or a CSV export with a header row.",
        }
    },
)
def history(
    caller: CallerDep,
    manager: ManagerDep,
    dag_id: Text = None,
    state: Annotated[list[str] | None, Query(description="Decided states; repeat for several.")] = None,
    decided_by: Text = None,
    requested_by: Text = None,
    run_id: Text = None,
    task_id: Text = None,
    origin: OriginFilter = None,
    since: Annotated[Time, Query(description="Decided at or after (ISO 8601; UTC if no offset).")] = None,
    until: Annotated[Time, Query(description="Decided at or before.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    offset: Offset = 0,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Decided requests, newest decision first; ``format=csv`` is the audit export."""
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since > until:
        raise InvalidInput("since", "must not be after `until`")
    filters = _visible(
        caller,
        manager,
        ApprovalFilter(
            states=_states(state, TERMINAL_STATES),
            dag_id=dag_id,
            run_id=run_id,
            task_id=task_id,
            decided_by=decided_by,
            requested_by=requested_by,
            origin=origin,
            since=since,
            until=until,
        ),
    )
    items: Sequence[Approval] = []
    total = 0
    if filters is not None:
        items, total = manager.queries.history(filters, limit=limit, offset=offset)
    if format == "csv":
        return Response(
            content=_csv(items),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="hitl-approval-history.csv"',
                "X-Total-Count": str(total),
            },
        )
    return _collection(items, total)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        # Numbers and booleans are ours, never a formula: -1 stays -1.
        return str(value)
    # Spreadsheets run cells that start like a formula; user text must never be one.
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(items: Iterable[Approval]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for a in items:
        data = a.to_dict()
        row: Mapping[str, Any] = {
            **data,
            "approvers": ";".join(data["approvers"]),
            "votes": ";".join(f"{v['user']}:{v['vote']}" for v in data["votes"]),
        }
        writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


@router.post(
    "",
    response_model=ApprovalResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Open an approval request (a gate outside a task)",
    responses=error_responses(403, 413),
)
def create_approval(body: CreateBody, caller: CallerDep, manager: ManagerDep) -> Response:
    """Open a request on a DAG the caller may edit; the caller is recorded as ``requested_by``.

    The request is marked ``origin: api`` everywhere it is shown: it never stands for a task
    instance's gate, even when it names the dag, run and task of a waiting one.
    """
    require_edit(caller, body.dag_id)
    spec = ApprovalSpec(
        dag_id=body.dag_id,
        title=body.title,
        run_id=body.run_id,
        task_id=body.task_id,
        map_index=body.map_index,
        description=body.description,
        reason=body.reason,
        context=body.context,
        requested_by=caller.name,
        timeout=dt.timedelta(seconds=body.timeout_seconds) if body.timeout_seconds else None,
        timeout_action=body.timeout_action,
        sla=dt.timedelta(seconds=body.sla_seconds) if body.sla_seconds else None,
        escalation_targets=tuple(
            EscalationLevel(
                approvers=tuple(level.approvers),
                roles=tuple(level.roles),
                timeout=dt.timedelta(seconds=level.timeout_seconds),
                required_approvals=level.required_approvals,
            )
            for level in body.escalate_to
        ),
        escalation_final_action=body.escalation_final_action,
        required_approvals=body.required_approvals,
        require_all=body.require_all,
        allowed_approvers=tuple(body.allowed_approvers),
        allowed_roles=tuple(body.allowed_roles),
        allow_self_approval=body.allow_self_approval,
        on_reject=body.on_reject,
        metadata=body.metadata,
        inputs={name: spec.stored() for name, spec in body.inputs.items()},
    )
    # Marked as opened over the API by the caller, never by the body: no task's gate.
    created = manager.create(spec, actor=caller.name, source=Source.API, origin=Origin.API)
    return _json(_item(created, caller, manager), status.HTTP_201_CREATED)


@router.get(
    "/{approval_id}",
    response_model=ApprovalResponse,
    summary="One approval request with its votes",
    responses=error_responses(403, 404),
)
def get_approval(approval_id: str, caller: CallerDep, manager: ManagerDep) -> Response:
    """One request, with ``can_approve`` for the caller and its notices' delivery."""
    approval = manager.queries.get(canonical_approval_id(approval_id))
    require_read(caller, approval.dag_id)
    item = _item(approval, caller, manager, manager.delegations.delegations_to(caller.name))
    notices = (n.to_dict() for n in manager.notices.list_notifications(request_id=approval.id, limit=1000))
    item["notices"] = [{k: n[k] for k in NoticeResponse.model_fields} for n in notices]
    return _json(item)


@router.post("/{approval_id}/approve", response_model=ApprovalResponse, summary="Approve", responses=_DECISION_ERRORS)
def approve(
    approval_id: str, body: ApproveBody, request: Request, caller: CallerDep, manager: ManagerDep, channel: RestChannel
) -> Response:
    """Vote to approve; the request is approved once its quorum is reached."""
    decision = body_decision(caller, Action.APPROVE, body, source=channel[0], request=request, details=channel[1])
    return _json(_item(manager.decide(canonical_approval_id(approval_id), decision)))


@router.post(
    "/{approval_id}/reject",
    response_model=ApprovalResponse,
    summary="Reject (a reason is required)",
    responses=_DECISION_ERRORS,
)
def reject(
    approval_id: str, body: RejectBody, request: Request, caller: CallerDep, manager: ManagerDep, channel: RestChannel
) -> Response:
    """Reject; one allowed rejection rejects the request at once."""
    decision = body_decision(caller, Action.REJECT, body, source=channel[0], request=request, details=channel[1])
    return _json(_item(manager.decide(canonical_approval_id(approval_id), decision)))


@router.post(
    "/{approval_id}/cancel",
    response_model=ApprovalResponse,
    summary="Cancel a waiting request",
    responses=_DECISION_ERRORS,
)
def cancel(
    approval_id: str, body: CancelBody, request: Request, caller: CallerDep, manager: ManagerDep, channel: RestChannel
) -> Response:
    """Withdraw a waiting request; its task fails. Needs edit access to the DAG."""
    decision = body_decision(caller, Action.CANCEL, body, source=channel[0], request=request, details=channel[1])
    return _json(_item(manager.decide(canonical_approval_id(approval_id), decision)))


@router.post(
    "/bulk",
    response_model=BulkResponse,
    summary="Approve, reject or cancel many requests",
    responses=error_responses(413),
)
def bulk(body: BulkBody, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """Apply one action to every id; each gets its own result, and one failure stops nothing."""
    return _json(decide_many(body, caller=caller, manager=manager, client=client_of(request)))

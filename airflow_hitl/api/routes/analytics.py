"""``/api/v1/analytics``: approval figures per gate, approver and day, and the histogram of time to
decision; ``/api/v1/analytics.csv``: one table.

Thin handlers over :class:`~airflow_hitl.analytics.ApprovalAnalytics`: the caller's readable
DAGs are asked of the auth manager (as the approvals' lists ask them), the figures are computed
by the store, and the handler only shapes the answer. The definitions of the figures are the
report's (:meth:`ApprovalAnalytics.report`).

Handlers are plain ``def``: the report is blocking database work, which FastAPI then runs in
its thread pool instead of on the event loop.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, AwareDatetime

from airflow_hitl.analytics import AnalyticsReport, ApprovalAnalytics
from airflow_hitl.api.analytics_models import (
    AnalyticsResponse,
    ApproverFiguresResponse,
    BucketFiguresResponse,
    DayFiguresResponse,
    GateFiguresResponse,
)
from airflow_hitl.api.datamodels import error_responses
from airflow_hitl.api.deps import ManagerDep, analytics_of, storable_text
from airflow_hitl.api.security import Caller, CallerDep, current_caller, readable_dag_ids
from airflow_hitl.limits import time_problem
from airflow_hitl.manager import ApprovalManager

router = APIRouter(tags=["analytics"], dependencies=[Depends(current_caller)], responses=error_responses(401, 422, 503))

AnalyticsDep = Annotated[ApprovalAnalytics, Depends(analytics_of)]

#: The tables of a report a CSV export can hold, and their columns (the report's own keys, in order).
CSV_TABLES: dict[str, tuple[str, ...]] = {
    "gates": tuple(GateFiguresResponse.model_fields),
    "approvers": tuple(ApproverFiguresResponse.model_fields),
    "daily": tuple(DayFiguresResponse.model_fields),
    "histogram": tuple(BucketFiguresResponse.model_fields),
}
TableWord = Literal["gates", "approvers", "daily", "histogram"]
#: The key of the report each table is, where the table's short name differs from it.
REPORT_KEYS: dict[str, str] = {"histogram": "time_to_decision_histogram"}

#: What a spreadsheet runs as a formula when a cell starts with it (tab and CR too, as OWASP lists).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _representable(value: dt.datetime | None) -> dt.datetime | None:
    problem = time_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


Moment = Annotated[AwareDatetime | None, AfterValidator(_representable)]


@dataclass(frozen=True, kw_only=True)
class ReportFilters:
    """The filters of a report, as the query gives them (both routes take the same)."""

    dag_id: str | None
    task_id: str | None
    since: dt.datetime | None
    until: dt.datetime | None


def report_filters(
    dag_id: Annotated[
        str | None, Query(max_length=250, description="Only this DAG's gates."), AfterValidator(storable_text)
    ] = None,
    task_id: Annotated[
        str | None, Query(max_length=250, description="Only this task's gates."), AfterValidator(storable_text)
    ] = None,
    since: Annotated[
        Moment, Query(description="Only requests opened at or after this time (ISO 8601 with a time zone).")
    ] = None,
    until: Annotated[
        Moment, Query(description="Only requests opened at or before this time (with a time zone).")
    ] = None,
) -> ReportFilters:
    """FastAPI dependency: the report's filters; an empty ``dag_id`` or ``task_id`` filters nothing, as in the lists."""
    return ReportFilters(dag_id=dag_id or None, task_id=task_id or None, since=since, until=until)


FiltersDep = Annotated[ReportFilters, Depends(report_filters)]


def _report(
    caller: Caller, manager: ApprovalManager, analytics: ApprovalAnalytics, f: ReportFilters
) -> AnalyticsReport:
    """The report of the requests on the DAGs ``caller`` may read (none: an empty report)."""
    dag_ids = readable_dag_ids(caller, manager.queries.dag_ids)
    return analytics.report(dag_ids, dag_id=f.dag_id, task_id=f.task_id, since=f.since, until=f.until)


@router.get(
    "/analytics",
    response_model=AnalyticsResponse,
    summary="Approval figures per gate, approver and day, and the time to decision's distribution",
)
def analytics(caller: CallerDep, manager: ManagerDep, service: AnalyticsDep, filters: FiltersDep) -> Response:
    """How long gates wait, where they stall, which time out and who answers, of the requests opened in the window.

    Only requests on DAGs the caller may read count. ``time_to_decision_*`` and
    ``time_to_decision_histogram`` are of approved and rejected requests; ``oldest_pending_s``
    is measured now; ``daily`` is by the UTC day a request was opened.
    """
    # Already JSON-ready (text, numbers, null): FastAPI's second pass through the model is skipped.
    return JSONResponse(content=dict(_report(caller, manager, service, filters)))


class CsvResponse(Response):
    """A CSV answer: declared ``text/csv`` in the OpenAPI document."""

    media_type = "text/csv"


def _json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`error_responses` of a route that answers CSV: its errors are still JSON.

    FastAPI declares a response with a ``model`` in the route's own media type (``text/csv``
    here); the error body's schema is named instead, in ``application/json``.
    """
    declared = error_responses(*codes)
    for entry in declared.values():
        entry.pop("model")
        entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return declared


def csv_cell(value: Any) -> str:
    """``value`` as a CSV cell that no spreadsheet runs as a formula (text starting with one gets a quote)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        # Counts and seconds are ours, never a formula.
        return str(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def csv_text(columns: tuple[str, ...], rows: Iterable[Mapping[str, Any]]) -> str:
    """A CSV document: a header row of ``columns``, then one row per mapping (RFC 4180 quoting)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows([csv_cell(row[c]) for c in columns] for row in rows)
    return buffer.getvalue()


@router.get(
    "/analytics.csv",
    response_class=CsvResponse,
    summary="One table of the approval figures as CSV",
    responses={200: {"description": "The table with a header row."}, **_json_errors(401, 422, 503)},
)
def analytics_csv(
    table: Annotated[
        TableWord,
        Query(description="Which table: `gates`, `approvers`, `daily` or `histogram` (`time_to_decision_histogram`)."),
    ],
    caller: CallerDep,
    manager: ManagerDep,
    service: AnalyticsDep,
    filters: FiltersDep,
) -> Response:
    """One table of ``GET /analytics`` (``histogram``: ``time_to_decision_histogram``), same filters, as a download."""
    report: Mapping[str, Any] = _report(caller, manager, service, filters)
    rows: list[Any] = list(report[REPORT_KEYS.get(table, table)])
    return CsvResponse(
        content=csv_text(CSV_TABLES[table], rows),
        headers={"Content-Disposition": f'attachment; filename="hitl-analytics-{table}.csv"'},
    )

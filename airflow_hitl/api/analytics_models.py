"""Response bodies of ``GET /hitl/api/v1/analytics`` (snake_case, like the rest of the API).

The figures' definitions are the report's (:meth:`airflow_hitl.analytics.ApprovalAnalytics.report`);
these models declare them in the OpenAPI document, and their fields, in order, are the columns
of each table's CSV export. Kept beside :mod:`airflow_hitl.api.datamodels` (the approvals'
bodies), which would otherwise outgrow a module.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class _Figures(BaseModel):
    """Base of the analytics response bodies (as the other responses: unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")


class GateFiguresResponse(_Figures):
    """One gate's figures: a DAG's task (``task_id`` null for requests opened over the API without one)."""

    dag_id: str
    task_id: str | None
    requests: int
    approved: int
    rejected: int
    timed_out: int
    cancelled: int
    escalated: int = Field(description="Requests that escalated at least once, however they ended.")
    time_to_decision_p50_s: float | None = Field(description="Seconds from request to approval or rejection.")
    time_to_decision_p90_s: float | None = Field(description="null: no request of the gate was decided.")
    pending_now: int = Field(description="Requests still waiting (pending or escalated).")
    oldest_pending_s: float | None = Field(description="How long the oldest waiting one has waited; null: none.")
    sla_breaches: int = Field(description="Requests found still waiting past their SLA.")


class ApproverFiguresResponse(_Figures):
    """One person's votes on the requests of the report (a delegate's vote counts as its delegator's)."""

    user: str
    decisions: int
    approvals: int
    rejections: int
    median_response_s: float | None = Field(description="Median seconds from request to this person's vote.")


class DayFiguresResponse(_Figures):
    """The requests opened on one UTC day, and how many of them ended decided or timed out."""

    date: dt.date
    requests: int
    decided: int = Field(description="Approved or rejected (by now).")
    timed_out: int


class BucketFiguresResponse(_Figures):
    """One bar of the time-to-decision histogram: the approved and rejected requests whose wait it holds."""

    le_s: float | None = Field(
        description="Upper bound of the bar in seconds, inclusive (the lower bound, exclusive, is the previous "
        "bar's); null: the last bar, unbounded."
    )
    label: str = Field(description="The bar's durations in words, as the page shows them (e.g. `1-5 min`).")
    approved: int
    rejected: int


class AnalyticsResponse(_Figures):
    """Approval figures per gate, per approver and per day, of the requests on DAGs the caller may read."""

    gates: list[GateFiguresResponse]
    approvers: list[ApproverFiguresResponse]
    daily: list[DayFiguresResponse]
    time_to_decision_histogram: list[BucketFiguresResponse] = Field(
        description="The decided (approved or rejected) requests by time to decision, in fixed bars from "
        "`≤ 1 min` to `> 3 days`; every bar, in order, empty ones at 0."
    )

"""Approval analytics: how long gates wait, where they stall, which time out, and who answers.

Every figure is computed by the store, in SQL aggregates over ``approval_requests`` and
``approval_votes``: four statements (gates, approvers, days, the histogram of time to decision)
reading one snapshot. Python only renames and rounds what comes back: a report over 100,000
requests moves a few hundred rows, not 100,000. Percentiles are PostgreSQL's
``percentile_cont``; SQLite has none, so there the same linear interpolation is done with
window functions (``ROW_NUMBER`` and ``COUNT`` over each group), and both backends answer the
same numbers for the same rows. The approvers' statement reads votes alone: each carries its
request's DAG, task and opening time, which is what the filters ask of it (revision 0014). On
PostgreSQL the approvers' statement and the histogram's run beside the gates' and the days', on a
second connection importing the first one's snapshot (``pg_export_snapshot``).

A service over a store and a clock, like the manager's (the route and the page call it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypedDict

from sqlalchemy import (
    Date,
    Integer,
    Interval,
    Subquery,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.limits import text_problem, time_problem
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import DECISIONS, WAITING_STATES, Action, State

#: PostgreSQL's ``work_mem`` for a report's statements: a sort of 100,000 requests fits in it.
SORT_MEMORY = "32MB"

#: What ``pg_export_snapshot()`` answers, e.g. ``00000003-0000001B-1``.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")

#: The percentiles of a gate's time to decision, by output name.
GATE_PERCENTILES = {"time_to_decision_p50_s": 0.5, "time_to_decision_p90_s": 0.9}

#: The bars of the time-to-decision histogram: each bar's upper bound in seconds (inclusive; None:
#: none, the last bar) and its label. Fixed, human durations rather than bins computed from the
#: data: a team reads "most within 5 minutes, a few over a day", and a bar means the same in
#: every report, whatever the filters.
HISTOGRAM_BUCKETS: tuple[tuple[float | None, str], ...] = (
    (60.0, "≤ 1 min"),
    (300.0, "1-5 min"),
    (900.0, "5-15 min"),
    (3600.0, "15-60 min"),
    (14_400.0, "1-4 h"),
    (86_400.0, "4-24 h"),
    (259_200.0, "1-3 days"),
    (None, "> 3 days"),
)

_R = ApprovalRequestRow
_V = ApprovalVoteRow


class GateFigures(TypedDict):
    """One gate (a DAG's task; ``task_id`` None for requests opened over the API without one)."""

    dag_id: str
    task_id: str | None
    requests: int
    approved: int
    rejected: int
    timed_out: int
    cancelled: int
    escalated: int
    time_to_decision_p50_s: float | None
    time_to_decision_p90_s: float | None
    pending_now: int
    oldest_pending_s: float | None
    sla_breaches: int


class ApproverFigures(TypedDict):
    """One person's votes on the requests of the report."""

    user: str
    decisions: int
    approvals: int
    rejections: int
    median_response_s: float | None


class DayFigures(TypedDict):
    """The requests opened on one UTC day, and how many of them ended decided or timed out."""

    date: str
    requests: int
    decided: int
    timed_out: int


class BucketFigures(TypedDict):
    """One bar of the time-to-decision histogram: the decided requests whose wait it holds.

    ``le_s``: the bar's upper bound in seconds, inclusive (None: the last bar, unbounded); its
    lower bound, exclusive, is the previous bar's (0 for the first, which holds 0 s too).
    """

    le_s: float | None
    label: str
    approved: int
    rejected: int


class AnalyticsReport(TypedDict):
    """What :meth:`ApprovalAnalytics.report` answers."""

    gates: list[GateFigures]
    approvers: list[ApproverFigures]
    daily: list[DayFigures]
    time_to_decision_histogram: list[BucketFigures]


def empty_report() -> AnalyticsReport:
    """The report of no request: no gate, approver or day, and every bar of the histogram at 0."""
    return {"gates": [], "approvers": [], "daily": [], "time_to_decision_histogram": _histogram({})}


class ApprovalAnalytics:
    """Figures of the approval store: per gate, per approver and per day (``report``)."""

    def __init__(self, *, store: ApprovalStore, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        # "How long has the oldest waiting request waited" is asked of this clock, the manager's.
        self._clock = clock

    def report(
        self,
        dag_ids: Collection[str] | None,
        *,
        dag_id: str | None = None,
        task_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> AnalyticsReport:
        """The figures of the requests opened between ``since`` and ``until`` (inclusive) on the DAGs in ``dag_ids``.

        :param dag_ids: The DAGs the caller may read; None: every DAG. An empty collection
            reads nothing (an empty report).
        :param dag_id: Only this DAG; ``task_id``: only this task's gates.
        :param since: Only requests with ``requested_at >= since``; ``until``: ``<= until``.
            Every figure, the pending ones included, is of the requests in that window.

        Definitions (all times in seconds, to the millisecond):

        * ``requests``: requests opened; ``approved``, ``rejected``, ``timed_out`` and
          ``cancelled``: those that ended so (a timed-out request counts as ``timed_out`` only,
          whatever its timeout action did to the task); ``escalated``: those that escalated at
          least once (``escalation_level > 0``), however they ended.
        * Time to decision: ``decided_at - requested_at`` of the requests that were *decided*,
          i.e. approved or rejected, automatic approvals included (their gate waited 0 s). Timed
          out and cancelled requests are left out: nobody decided them, and their wait is the
          timeout or the cancel, not a decision. ``p50``/``p90`` interpolate linearly
          (``percentile_cont``); None when the gate has no decided request.
        * ``pending_now``: requests still waiting (pending or escalated); ``oldest_pending_s``:
          how long the oldest of them has waited, by the clock (None when none waits).
        * ``sla_breaches``: the gate's requests found still waiting past their SLA. Each has
          ``sla_breached_at`` set and one ``sla_breached`` audit event, written together, once
          (:mod:`airflow_hitl.sla`); the column is counted, not the events, so the report never
          reads the audit trail, the store's largest table.
        * Approvers: every vote cast on the requests (``user`` is whose vote it counts as, a
          delegate's vote included, a standing approval's too); ``median_response_s``: median
          of ``vote.created_at - request.requested_at``.
        * Daily: by the UTC date of ``requested_at``; ``decided``: of that day's requests, those
          approved or rejected (by now); ``timed_out``: those timed out.
        * ``time_to_decision_histogram``: the decided requests of every gate of the report, by
          their time to decision (as the percentiles measure it) in the bars of
          :data:`HISTOGRAM_BUCKETS`; a wait equal to a bar's bound is in that bar. Every bar is
          there, in order, empty ones at 0, so the bars sum to the gates' approved and rejected.

        Gates come by DAG and task (a DAG's gate without a task last), approvers by most votes, days in order.
        """
        dag_ids = _checked(dag_ids, dag_id=dag_id, task_id=task_id, since=since, until=until)
        if dag_ids is not None and not dag_ids:
            return empty_report()
        where = _where(_R.__table__.c, dag_ids=dag_ids, dag_id=dag_id, task_id=task_id, since=since, until=until)
        votes = _where(_V.__table__.c, dag_ids=dag_ids, dag_id=dag_id, task_id=task_id, since=since, until=until)
        if not self.store.is_postgres:
            # One read transaction: SQLite's WAL gives its statements one snapshot.
            with self.store.read_engine.connect() as conn:
                try:
                    return {
                        "gates": self._gates(conn, where, postgres=False),
                        "approvers": self._approvers(conn, votes, postgres=False),
                        "daily": self._daily(conn, where, postgres=False),
                        "time_to_decision_histogram": self._histogram(conn, where, postgres=False),
                    }
                finally:
                    conn.rollback()
        with self._snapshot() as conn, ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-analytics") as pool:
            # Each statement reads every request (or vote) the filters keep, at about the same
            # cost: two run on a second connection, at the same time, in the same snapshot, so
            # a report takes about half the sum of the four.
            snapshot = str(conn.scalar(text("SELECT pg_export_snapshot()")))
            beside = pool.submit(self._approvers_and_histogram, snapshot, where, votes)
            gates = self._gates(conn, where, postgres=True)
            daily = self._daily(conn, where, postgres=True)
            approvers, histogram = beside.result()
            return {"gates": gates, "approvers": approvers, "daily": daily, "time_to_decision_histogram": histogram}

    @contextmanager
    def _snapshot(self, snapshot: str | None = None) -> Iterator[Connection]:
        """A PostgreSQL read transaction with one snapshot for all its statements (``snapshot``: an exported one)."""
        with self.store.read_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            try:
                if snapshot is not None:
                    if not _SNAPSHOT_ID.fullmatch(snapshot):
                        raise ValueError(f"not a PostgreSQL snapshot id: {snapshot!r}")
                    # Must come first in the transaction; a utility statement takes no bound value.
                    conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
                # Each statement sorts the requests it reads once (percentiles need them in order):
                # kept in memory up to this size, rather than spilled to disk past the default 4 MB.
                conn.execute(text(f"SET LOCAL work_mem = '{SORT_MEMORY}'"))
                # The report already runs two statements at once: PostgreSQL's own parallel workers
                # beside them compete for the same cores (on two cores they made no report faster).
                conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
                yield conn
            finally:
                conn.rollback()

    def _approvers_and_histogram(
        self, snapshot: str, where: list[Any], votes: list[Any]
    ) -> tuple[list[ApproverFigures], list[BucketFigures]]:
        """The approvers' figures and the histogram in the exported ``snapshot`` (on the executor's thread)."""
        with self._snapshot(snapshot) as conn:
            return self._approvers(conn, votes, postgres=True), self._histogram(conn, where, postgres=True)

    def _gates(self, conn: Connection, where: list[Any], *, postgres: bool) -> list[GateFigures]:
        decided = _R.state.in_(DECISIONS)
        waited = _wait(_R.decided_at, _R.requested_at, postgres=postgres)
        if postgres:
            statement = (
                select(
                    _R.dag_id,
                    _R.task_id,
                    *_gate_counts(_R.__table__.c),
                    *_percentile_columns(waited, GATE_PERCENTILES, among=decided),
                )
                .where(*where)
                .group_by(_R.dag_id, _R.task_id)
                # NULLS LAST, PostgreSQL's own order for ascending keys: an index on (dag_id,
                # task_id) then hands the rows over already grouped, with no sort.
                .order_by(_R.dag_id, _R.task_id.nulls_last())
            )
        else:
            needed = (_R.dag_id, _R.task_id, _R.state, _R.escalation_level, _R.sla_breached_at, _R.requested_at)
            source = select(*needed, case((decided, waited)).label("value")).where(*where)
            ranked = _ranked(source.subquery("source"), ("dag_id", "task_id"))
            statement = (
                select(
                    ranked.c.dag_id,
                    ranked.c.task_id,
                    *_gate_counts(ranked.c),
                    *_interpolated(ranked, GATE_PERCENTILES),
                )
                .group_by(ranked.c.dag_id, ranked.c.task_id)
                .order_by(ranked.c.dag_id, ranked.c.task_id.is_(None), ranked.c.task_id)
            )
        now = self._clock()
        gates: list[GateFigures] = []
        for row in conn.execute(statement).mappings():
            oldest = row["oldest_pending"]
            gates.append(
                {
                    "dag_id": row["dag_id"],
                    "task_id": row["task_id"],
                    "requests": row["requests"],
                    "approved": row["approved"],
                    "rejected": row["rejected"],
                    "timed_out": row["timed_out"],
                    "cancelled": row["cancelled"],
                    "escalated": row["escalated"],
                    "time_to_decision_p50_s": _seconds(row["time_to_decision_p50_s"]),
                    "time_to_decision_p90_s": _seconds(row["time_to_decision_p90_s"]),
                    "pending_now": row["pending_now"],
                    # The one figure of the clock, not the store: "now" is the manager's.
                    "oldest_pending_s": None if oldest is None else round((now - oldest).total_seconds(), 3),
                    "sla_breaches": row["sla_breaches"],
                }
            )
        return gates

    def _approvers(self, conn: Connection, where: list[Any], *, postgres: bool) -> list[ApproverFigures]:
        # Votes only: each carries its request's DAG, task and opening time (revision 0014), and
        # their covering index is in voter order, so no request is read and no vote sorted.
        response = _wait(_V.created_at, _V.requested_at, postgres=postgres)
        median = {"median_response_s": 0.5}
        if postgres:
            statement = (
                select(_V.user, *_vote_counts(_V.__table__.c), *_percentile_columns(response, median))
                .where(*where)
                .group_by(_V.user)
                .order_by(func.count().desc(), _V.user)
            )
        else:
            source = select(_V.user, _V.vote, response.label("value")).where(*where)
            ranked = _ranked(source.subquery("source"), ("user",))
            statement = (
                select(ranked.c.user, *_vote_counts(ranked.c), *_interpolated(ranked, median))
                .group_by(ranked.c.user)
                .order_by(func.count().desc(), ranked.c.user)
            )
        return [
            {
                "user": row["user"],
                "decisions": row["decisions"],
                "approvals": row["approvals"],
                "rejections": row["rejections"],
                "median_response_s": _seconds(row["median_response_s"]),
            }
            for row in conn.execute(statement).mappings()
        ]

    def _daily(self, conn: Connection, where: list[Any], *, postgres: bool) -> list[DayFigures]:
        # The UTC day: PostgreSQL's timestamptz is shown in the session's zone unless asked for UTC
        # (written out, not bound, so statistics on this very expression can inform the plan);
        # SQLite keeps naive UTC text, whose date() is the UTC date.
        day = (
            cast(func.timezone(literal_column("'UTC'"), _R.requested_at), Date)
            if postgres
            else func.date(_R.requested_at)
        ).label("day")
        statement = (
            select(
                day,
                func.count().label("requests"),
                _count_if(_R.state.in_(DECISIONS)).label("decided"),
                _count_if(_R.state == State.TIMEOUT).label("timed_out"),
            )
            .where(*where)
            .group_by(day)
            .order_by(day)
        )
        return [
            {
                "date": row["day"].isoformat() if isinstance(row["day"], dt.date) else str(row["day"]),
                "requests": row["requests"],
                "decided": row["decided"],
                "timed_out": row["timed_out"],
            }
            for row in conn.execute(statement).mappings()
        ]

    def _histogram(self, conn: Connection, where: list[Any], *, postgres: bool) -> list[BucketFigures]:
        bounds = [bound for bound, _label in HISTOGRAM_BUCKETS if bound is not None]
        # The first bar whose bound the wait does not pass (CASE takes the first true branch).
        bar = case(
            *((_decided_within(bound, postgres=postgres), index) for index, bound in enumerate(bounds)),
            else_=len(bounds),
        )
        # Grouped in an outer query by the inner one's column: PostgreSQL would not see a CASE
        # with bound values in both SELECT and GROUP BY as one expression.
        decided = select(bar.label("bar"), _R.state).where(*where, _R.state.in_(DECISIONS)).subquery("decided")
        statement = select(
            decided.c.bar,
            _count_if(decided.c.state == State.APPROVED).label("approved"),
            _count_if(decided.c.state == State.REJECTED).label("rejected"),
        ).group_by(decided.c.bar)
        return _histogram({row.bar: (row.approved, row.rejected) for row in conn.execute(statement)})


def _histogram(counts: Mapping[int, tuple[int, int]]) -> list[BucketFigures]:
    """Every bar of :data:`HISTOGRAM_BUCKETS`, in order, with its (approved, rejected) from ``counts`` (0: none)."""
    bars: list[BucketFigures] = []
    for index, (bound, label) in enumerate(HISTOGRAM_BUCKETS):
        approved, rejected = counts.get(index, (0, 0))
        bars.append({"le_s": bound, "label": label, "approved": approved, "rejected": rejected})
    return bars


def _decided_within(seconds: float, *, postgres: bool) -> ColumnElement[bool]:
    """Whether a request's time to decision (:func:`_wait` of ``decided_at``) is at most ``seconds``.

    PostgreSQL: ``decided_at <= requested_at + interval``, the same comparison to the
    microsecond, about a quarter cheaper over 100,000 rows than an ``interval`` subtracted and
    compared per row and bar. SQLite: the wait in seconds, to the millisecond, against the bound.
    """
    if postgres:
        return _R.decided_at <= _R.requested_at + literal(dt.timedelta(seconds=seconds), Interval)
    return _wait(_R.decided_at, _R.requested_at, postgres=False) <= literal(seconds)


def _checked(
    dag_ids: Collection[str] | None,
    *,
    dag_id: str | None,
    task_id: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[str] | None:
    """The report's filters checked (:class:`InvalidInput` naming the first wrong one); ``dag_ids`` as a list."""
    if dag_ids is not None:
        if isinstance(dag_ids, (str, bytes)) or not isinstance(dag_ids, Collection):
            raise InvalidInput("dag_ids", "must be a collection of DAG ids (or None for every DAG)")
        if not all(isinstance(d, str) for d in dag_ids):
            raise InvalidInput("dag_ids", "must hold DAG ids (strings) only")
    for name, value in (("dag_id", dag_id), ("task_id", task_id)):
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidInput(name, "must be a non-empty string")
        if problem := text_problem(value):
            raise InvalidInput(name, problem)
    for name, moment in (("since", since), ("until", until)):
        if moment is None:
            continue
        if not isinstance(moment, dt.datetime) or moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInput(name, "must be a timezone-aware date and time")
        if problem := time_problem(moment):
            raise InvalidInput(name, problem)
    if since is not None and until is not None and until < since:
        raise InvalidInput("until", "must not be before since")
    return None if dag_ids is None else sorted(set(dag_ids))


def _where(
    c: Any,
    *,
    dag_ids: list[str] | None,
    dag_id: str | None,
    task_id: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[Any]:
    """The report's filters on the columns ``c`` of requests, or of votes (which carry their request's)."""
    where: list[Any] = []
    if dag_ids is not None:
        where.append(c.dag_id.in_(dag_ids))
    if dag_id is not None:
        where.append(c.dag_id == dag_id)
    if task_id is not None:
        where.append(c.task_id == task_id)
    if since is not None:
        where.append(c.requested_at >= since)
    if until is not None:
        where.append(c.requested_at <= until)
    return where


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """How many rows of the group meet ``condition`` (``COUNT`` of a ``CASE``: ``FILTER`` needs SQLite 3.30)."""
    return func.count(case((condition, 1)))


def _wait(end: Any, start: Any, *, postgres: bool) -> ColumnElement[Any]:
    """The time from ``start`` to ``end``, in SQL, as the percentiles sort it.

    PostgreSQL: the ``interval`` itself (sorted as it is, nothing computed per row).
    SQLite: seconds, to the millisecond, which is all its date functions keep (``julianday``
    is a count of days; its product is rounded back to whole milliseconds).
    """
    if postgres:
        return cast(end - start, Interval)
    return func.round((func.julianday(end) - func.julianday(start)) * 86_400_000) / 1000.0


def _gate_counts(c: Any) -> list[Any]:
    """A gate's counts over the columns ``c`` of its requests (the table's, or a subquery's)."""
    waiting = c.state.in_(WAITING_STATES)
    return [
        func.count().label("requests"),
        _count_if(c.state == State.APPROVED).label("approved"),
        _count_if(c.state == State.REJECTED).label("rejected"),
        _count_if(c.state == State.TIMEOUT).label("timed_out"),
        _count_if(c.state == State.CANCELLED).label("cancelled"),
        _count_if(c.escalation_level > 0).label("escalated"),
        _count_if(waiting).label("pending_now"),
        _count_if(c.sla_breached_at.is_not(None)).label("sla_breaches"),
        func.min(case((waiting, c.requested_at))).label("oldest_pending"),
    ]


def _vote_counts(c: Any) -> list[Any]:
    """An approver's counts over the columns ``c`` of their votes (the table's, or a subquery's)."""
    return [
        func.count().label("decisions"),
        _count_if(c.vote == Action.APPROVE).label("approvals"),
        _count_if(c.vote == Action.REJECT).label("rejections"),
    ]


def _percentile_columns(
    value: ColumnElement[Any], percentiles: Mapping[str, float], *, among: ColumnElement[bool] | None = None
) -> list[Any]:
    """PostgreSQL's ``percentile_cont`` of ``value`` per group, of the rows ``among`` (all: None).

    Percentiles of one ``value`` share one sort (PostgreSQL 11+ shares their state).
    """
    columns = []
    for name, p in percentiles.items():
        percentile = func.percentile_cont(p).within_group(value)
        columns.append((percentile if among is None else percentile.filter(among)).label(name))
    return columns


def _ranked(source: Subquery, keys: tuple[str, ...]) -> Subquery:
    """SQLite: the rows of ``source`` with the rank of each ``value`` in its group, and how many values the group has.

    Rows without a value (NULL) rank after every value, so values rank 1 to ``size``.
    """
    group = [source.c[k] for k in keys]
    return select(
        source,
        # "value IS NULL" first: NULLS LAST needs SQLite 3.30, window functions only 3.25.
        func.row_number().over(partition_by=group, order_by=[source.c.value.is_(None), source.c.value]).label("rank"),
        func.count(source.c.value).over(partition_by=group).label("size"),
    ).subquery("ranked")


def _interpolated(ranked: Subquery, percentiles: Mapping[str, float]) -> list[Any]:
    """SQLite: ``percentile_cont`` done by hand over :func:`_ranked` rows, as aggregates of their group.

    As PostgreSQL does it: the percentile ``p`` of ``n`` sorted values sits at the 1-based
    position ``1 + p * (n - 1)``; between two ranks it is interpolated linearly. Each value
    contributes its weight to the sum (one rank, or the two either side of the position); a
    group without values has no percentile (NULL).
    """
    columns = []
    for name, p in percentiles.items():
        position = literal(1.0) + literal(p) * (ranked.c.size - 1)
        below = cast(position, Integer)  # truncation: the position is at least 1 when there are values
        fraction = position - below
        weighted = func.sum(
            case((ranked.c.rank == below, ranked.c.value * (literal(1.0) - fraction)), else_=0.0)
        ) + func.sum(case((ranked.c.rank == below + 1, ranked.c.value * fraction), else_=0.0))
        columns.append(case((func.max(ranked.c.size) > 0, weighted)).label(name))
    return columns


def _seconds(value: Any) -> float | None:
    """A time from the store (an interval, or seconds) as seconds, to the millisecond; None stays None."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    return round(seconds, 3)

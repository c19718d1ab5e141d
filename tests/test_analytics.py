"""analytics: per gate, per approver and per day figures, computed by the store, on SQLite and PostgreSQL.

Every request is opened and decided through :class:`ApprovalManager` on the test's clock, so
each figure below is known from the timeline of :func:`timeline`; both backends must answer
the very same numbers.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from airflow_hitl.analytics import HISTOGRAM_BUCKETS, ApprovalAnalytics, empty_report
from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalEventRow
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.vocabulary import AuditType, Origin, Source
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
CAROL = Principal.of("carol", ["op"])
#: A Monday; the timeline runs over it and the next day (UTC).
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
DAY = 24 * 3600
#: When the report is asked: the second day, 10:00 UTC.
NOW = DAY + 3600
SLA = dt.timedelta(minutes=30)


def at(clock: Clock, seconds: float) -> None:
    """Set the clock to ``START + seconds``."""
    clock.now = START + dt.timedelta(seconds=seconds)


def timeline(mgr: ApprovalManager, clock: Clock) -> dict[str, str]:
    """Open and decide the known requests; the ids by name.

    Day 1 (2026-03-02), gate release/gate: r1 approved by alice at +60 s; r2 rejected by bob
    at +300 s; r3 (two approvals) approved by alice at +30 s and bob at +120 s; r4 timed out
    at +1 h; r5 cancelled at +900 s; r6 escalated at +1 h and still waiting. Gate
    release/deploy: d1 approved by carol at +600 s, d2 approved automatically at once.
    Day 2 (2026-03-03, 09:00): r7 (release/gate) and e1 (DAG etl, opened over the API with no
    task) wait. At 10:00, r6, r7 and e1 still wait past their 30-minute SLA: three breaches;
    r1 had one too, but was approved in time.
    """
    at(clock, 0)
    ids = {
        "r1": mgr.create(spec(task_id="gate", sla=SLA)).id,
        "r2": mgr.create(spec(task_id="gate")).id,
        "r3": mgr.create(spec(task_id="gate", required_approvals=2)).id,
        "r4": mgr.create(spec(task_id="gate", timeout=dt.timedelta(hours=1), timeout_action="reject")).id,
        "r5": mgr.create(spec(task_id="gate")).id,
        "r6": mgr.create(
            spec(
                task_id="gate",
                timeout=dt.timedelta(hours=1),
                timeout_action="escalate",
                sla=SLA,
                escalation_targets=[EscalationLevel(approvers=("dave",), timeout=dt.timedelta(days=7))],
                escalation_final_action="reject",
            )
        ).id,
        "d1": mgr.create(spec(task_id="deploy")).id,
        "d2": mgr.create(spec(task_id="deploy")).id,
    }
    mgr.decide_automatically(ids["d2"], source=Source.AUTO, comment="approval_type=auto")
    at(clock, 30)
    mgr.approve(ids["r3"], user=ALICE)
    at(clock, 60)
    mgr.approve(ids["r1"], user=ALICE)
    at(clock, 120)
    mgr.approve(ids["r3"], user=BOB)
    at(clock, 300)
    mgr.reject(ids["r2"], user=BOB, reason="not now")
    at(clock, 600)
    mgr.approve(ids["d1"], user=CAROL)
    at(clock, 900)
    mgr.cancel(ids["r5"], actor="ricky", reason="withdrawn")
    at(clock, 3600)
    assert mgr.apply_timeout(ids["r4"]).approval.state == "timeout"
    assert mgr.apply_timeout(ids["r6"]).approval.state == "escalated"
    at(clock, DAY)
    ids["r7"] = mgr.create(spec(task_id="gate", sla=SLA)).id
    ids["e1"] = mgr.create(
        spec(dag_id="etl", run_id=None, task_id=None, try_number=None, sla=SLA), source=Source.API, origin=Origin.API
    ).id
    at(clock, NOW)
    # What the api-server's drainer asks when each gate's sla_breached notice falls due.
    breached = {name: mgr.sla.breach(ids[name])[0] for name in ("r1", "r6", "r7", "e1")}
    assert breached == {"r1": False, "r6": True, "r7": True, "e1": True}
    return ids


def gate(
    dag_id: str,
    task_id: str | None,
    *,
    requests: int,
    approved: int = 0,
    rejected: int = 0,
    timed_out: int = 0,
    cancelled: int = 0,
    escalated: int = 0,
    p50: float | None = None,
    p90: float | None = None,
    pending_now: int = 0,
    oldest_pending_s: float | None = None,
    sla_breaches: int = 0,
) -> dict[str, Any]:
    """A gate's expected figures."""
    return {
        "dag_id": dag_id,
        "task_id": task_id,
        "requests": requests,
        "approved": approved,
        "rejected": rejected,
        "timed_out": timed_out,
        "cancelled": cancelled,
        "escalated": escalated,
        "time_to_decision_p50_s": p50,
        "time_to_decision_p90_s": p90,
        "pending_now": pending_now,
        "oldest_pending_s": oldest_pending_s,
        "sla_breaches": sla_breaches,
    }


# Decided requests of release/gate waited 60, 120 and 300 s: the median is 120, and p90 sits at
# position 1 + 0.9 * 2 = 2.8, between 120 and 300: 120 + 0.8 * 180 = 264. Release/deploy: 0 and
# 600 s (the automatic approval waited nothing): 300 and 540. Timeouts and cancels are no decision.
ETL = gate("etl", None, requests=1, pending_now=1, oldest_pending_s=3600.0, sla_breaches=1)
DEPLOY = gate("release", "deploy", requests=2, approved=2, p50=300.0, p90=540.0)
GATE = gate(
    "release",
    "gate",
    requests=7,
    approved=2,
    rejected=1,
    timed_out=1,
    cancelled=1,
    escalated=1,
    p50=120.0,
    p90=264.0,
    pending_now=2,
    oldest_pending_s=float(NOW),
    sla_breaches=2,
)


def bars(*counts: tuple[int, int]) -> list[dict[str, Any]]:
    """The histogram whose first bars hold ``counts`` (approved, rejected), the rest none."""
    padded = [*counts] + [(0, 0)] * (len(HISTOGRAM_BUCKETS) - len(counts))
    return [
        {"le_s": bound, "label": label, "approved": approved, "rejected": rejected}
        for (bound, label), (approved, rejected) in zip(HISTOGRAM_BUCKETS, padded, strict=True)
    ]


# Decided requests waited 0 s (d2, automatic) and 60 s (r1, on the first bar's bound): both in
# "<= 1 min"; 120 s (r3) and 300 s (r2, rejected, on the second bar's bound): "1-5 min"; 600 s
# (d1): "5-15 min". The timeout and the cancel are no decision; r6, r7 and e1 still wait.
HISTOGRAM = bars((2, 0), (1, 1), (1, 0))
ALICE_FIGURES = {"user": "alice", "decisions": 2, "approvals": 2, "rejections": 0, "median_response_s": 45.0}
BOB_FIGURES = {"user": "bob", "decisions": 2, "approvals": 1, "rejections": 1, "median_response_s": 210.0}
CAROL_FIGURES = {"user": "carol", "decisions": 1, "approvals": 1, "rejections": 0, "median_response_s": 600.0}


@pytest.fixture
def analytics(store: ApprovalStore, clock: Clock) -> ApprovalAnalytics:
    """The analytics of the parametrised store, on the test's clock."""
    return ApprovalAnalytics(store=store, clock=clock)


@pytest.fixture
def known(mgr: ApprovalManager, clock: Clock) -> dict[str, str]:
    """The store holding :func:`timeline`'s requests."""
    return timeline(mgr, clock)


@pytest.mark.usefixtures("known")
class TestReport:
    def test_every_figure_of_every_dag(self, analytics: ApprovalAnalytics, store: ApprovalStore) -> None:
        report = analytics.report(None)
        assert report == {
            "gates": [ETL, DEPLOY, GATE],
            "approvers": [ALICE_FIGURES, BOB_FIGURES, CAROL_FIGURES],
            "daily": [
                {"date": "2026-03-02", "requests": 8, "decided": 5, "timed_out": 1},
                {"date": "2026-03-03", "requests": 2, "decided": 0, "timed_out": 0},
            ],
            "time_to_decision_histogram": HISTOGRAM,
        }
        # Each breach counted is one sla_breached event of the audit trail.
        with store.session() as session:
            events = session.scalar(
                select(func.count())
                .select_from(ApprovalEventRow)
                .where(ApprovalEventRow.event_type == AuditType.SLA_BREACHED)
            )
        assert events == sum(g["sla_breaches"] for g in report["gates"]) == 3

    def test_only_the_dags_the_caller_may_read(self, analytics: ApprovalAnalytics) -> None:
        report = analytics.report({"release", "payroll"})
        assert report["gates"] == [DEPLOY, GATE]
        assert report["approvers"] == [ALICE_FIGURES, BOB_FIGURES, CAROL_FIGURES]
        assert report["daily"][1] == {"date": "2026-03-03", "requests": 1, "decided": 0, "timed_out": 0}
        assert report["time_to_decision_histogram"] == HISTOGRAM
        assert analytics.report({"etl"})["gates"] == [ETL]
        assert analytics.report({"etl"})["approvers"] == []
        # etl's one request still waits: every bar is there, empty.
        assert analytics.report({"etl"})["time_to_decision_histogram"] == bars()
        # A caller who may read no DAG reads nothing, however many DAGs the store holds.
        nothing = {"gates": [], "approvers": [], "daily": [], "time_to_decision_histogram": bars()}
        assert analytics.report(set()) == empty_report() == nothing
        assert analytics.report(frozenset({"payroll"})) == nothing

    def test_one_dag_and_task(self, analytics: ApprovalAnalytics) -> None:
        report = analytics.report(None, dag_id="release", task_id="deploy")
        assert report == {
            "gates": [DEPLOY],
            "approvers": [CAROL_FIGURES],
            "daily": [{"date": "2026-03-02", "requests": 2, "decided": 2, "timed_out": 0}],
            "time_to_decision_histogram": bars((1, 0), (0, 0), (1, 0)),
        }
        assert analytics.report(None, task_id="gate")["time_to_decision_histogram"] == bars((1, 0), (1, 1))
        # The filters narrow what the caller may read, never widen it.
        assert analytics.report({"etl"}, dag_id="release")["gates"] == []
        assert [g["task_id"] for g in analytics.report(None, task_id="gate")["gates"]] == ["gate"]

    def test_since_and_until_bound_requested_at(self, analytics: ApprovalAnalytics) -> None:
        second_day = START + dt.timedelta(days=1)
        later = analytics.report(None, since=second_day)
        assert later["gates"] == [
            ETL,
            gate("release", "gate", requests=1, pending_now=1, oldest_pending_s=3600.0, sla_breaches=1),
        ]
        assert later["approvers"] == []
        assert later["daily"] == [{"date": "2026-03-03", "requests": 2, "decided": 0, "timed_out": 0}]
        assert later["time_to_decision_histogram"] == bars()
        earlier = analytics.report(None, until=second_day - dt.timedelta(seconds=1))
        assert earlier["gates"] == [DEPLOY, {**GATE, "requests": 6, "pending_now": 1, "sla_breaches": 1}]
        assert earlier["approvers"] == [ALICE_FIGURES, BOB_FIGURES, CAROL_FIGURES]
        assert earlier["time_to_decision_histogram"] == HISTOGRAM
        # Both bounds are inclusive: a window of one instant holds the requests opened then.
        exactly = analytics.report(None, since=second_day, until=second_day)
        assert [(g["dag_id"], g["requests"]) for g in exactly["gates"]] == [("etl", 1), ("release", 1)]
        # Any time zone names the same instant.
        tokyo = dt.timezone(dt.timedelta(hours=9))
        assert analytics.report(None, since=second_day.astimezone(tokyo)) == later

    def test_oldest_pending_follows_the_clock(self, analytics: ApprovalAnalytics, clock: Clock) -> None:
        clock.advance(minutes=30)
        by_dag = {g["dag_id"]: g["oldest_pending_s"] for g in analytics.report(None, task_id=None)["gates"]}
        assert by_dag["etl"] == 3600.0 + 1800.0

    def test_four_aggregates_whatever_the_rows(self, analytics: ApprovalAnalytics, store: ApprovalStore) -> None:
        # Computed in the store: one aggregate statement per table of the report, no rows loaded one by one.
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                statements.append(statement)

        event.listen(store.engine, "before_cursor_execute", seen)
        try:
            analytics.report(None)
        finally:
            event.remove(store.engine, "before_cursor_execute", seen)
        aggregates = [s for s in statements if "GROUP BY" in s]
        assert len(aggregates) == 4
        # Besides them, PostgreSQL's report only exports its snapshot to the votes' statement.
        assert [s for s in statements if s not in aggregates] == (
            ["SELECT pg_export_snapshot()"] if store.is_postgres else []
        )


class TestPercentiles:
    def test_interpolated_as_percentile_cont(
        self, mgr: ApprovalManager, analytics: ApprovalAnalytics, clock: Clock
    ) -> None:
        # Eleven decisions after uneven waits (whole milliseconds): p50 is a value, p90 lies
        # between two; as PostgreSQL's percentile_cont (statistics' "inclusive" quantiles) has them.
        waits = [0.25, 1.5, 2.0, 7.125, 30.0, 31.5, 90.0, 600.0, 3599.999, 3600.0, 86400.0]
        for index, wait in enumerate(waits):
            at(clock, index * 10)
            request = mgr.create(spec(task_id="model"))
            at(clock, index * 10 + wait)
            if index % 3:
                mgr.approve(request.id, user=ALICE)
            else:
                mgr.reject(request.id, user=BOB, reason="no")
        deciles = statistics.quantiles(waits, n=10, method="inclusive")
        (figures,) = analytics.report(None)["gates"]
        assert figures["time_to_decision_p50_s"] == round(deciles[4], 3) == 31.5
        assert figures["time_to_decision_p90_s"] == round(deciles[8], 3)
        approvers = {a["user"]: a["median_response_s"] for a in analytics.report(None)["approvers"]}
        assert approvers == {
            "alice": round(statistics.median(w for i, w in enumerate(waits) if i % 3), 3),
            "bob": round(statistics.median(w for i, w in enumerate(waits) if not i % 3), 3),
        }

    def test_one_decision_is_its_own_percentile(
        self, mgr: ApprovalManager, analytics: ApprovalAnalytics, clock: Clock
    ) -> None:
        at(clock, 0)
        request = mgr.create(spec())
        at(clock, 42.5)
        mgr.approve(request.id, user=ALICE)
        (figures,) = analytics.report(None)["gates"]
        assert (figures["time_to_decision_p50_s"], figures["time_to_decision_p90_s"]) == (42.5, 42.5)

    def test_an_empty_store(self, analytics: ApprovalAnalytics) -> None:
        assert analytics.report(None) == empty_report()


class TestHistogram:
    def test_a_wait_on_a_bound_is_in_that_bar_a_millisecond_more_in_the_next(
        self, mgr: ApprovalManager, analytics: ApprovalAnalytics, clock: Clock
    ) -> None:
        # Two requests per bound: one decided exactly on it, one a millisecond after (approved,
        # then rejected, then approved...), and one a week long. Bar i holds the wait on its own
        # bound and the one just past the bound before it.
        bounds = [bound for bound, _label in HISTOGRAM_BUCKETS if bound is not None]
        waits = [w for bound in bounds for w in (bound, bound + 0.001)] + [7 * DAY]
        expected = [[0, 0] for _ in HISTOGRAM_BUCKETS]
        for index, wait in enumerate(waits):
            at(clock, index)
            request = mgr.create(spec(task_id="model"))
            at(clock, index + wait)
            rejected = index % 3 == 1
            if rejected:
                mgr.reject(request.id, user=BOB, reason="no")
            else:
                mgr.approve(request.id, user=ALICE)
            expected[(index + 1) // 2][1 if rejected else 0] += 1
        # An automatic approval waited nothing: the first bar.
        at(clock, 0)
        automatic = mgr.create(spec(task_id="model"))
        mgr.decide_automatically(automatic.id, source=Source.AUTO, comment="approval_type=auto")
        expected[0][0] += 1
        # A request cancelled or timed out after any wait is no decision: in no bar.
        for ending in ("cancel", "timeout"):
            at(clock, 0)
            opened = mgr.create(spec(task_id="model", timeout=dt.timedelta(minutes=2), timeout_action="reject"))
            at(clock, 150)
            if ending == "cancel":
                mgr.cancel(opened.id, actor="ricky", reason="withdrawn")
            else:
                assert mgr.apply_timeout(opened.id).approval.state == "timeout"

        report = analytics.report(None)
        assert report["time_to_decision_histogram"] == bars(*(tuple(pair) for pair in expected))
        assert expected == [[2, 0], [1, 1], [1, 1], [2, 0], [1, 1], [1, 1], [2, 0], [1, 1]]
        (figures,) = report["gates"]
        histogram = report["time_to_decision_histogram"]
        assert sum(b["approved"] for b in histogram) == figures["approved"] == 11
        assert sum(b["rejected"] for b in histogram) == figures["rejected"] == 5
        # Filtered like every figure: by task, and by when the requests were opened.
        assert analytics.report(None, task_id="other")["time_to_decision_histogram"] == bars()
        first = analytics.report(None, until=START + dt.timedelta(seconds=1))["time_to_decision_histogram"]
        # Opened at +0: the wait of exactly 60 s, the automatic approval, the cancel and the timeout; at +1: 60.001 s.
        assert first == bars((2, 0), (0, 1))


class TestBadInput:
    @pytest.mark.parametrize(
        ("arguments", "field"),
        [
            ({"dag_ids": "release"}, "dag_ids"),
            ({"dag_ids": {"release", 7}}, "dag_ids"),
            ({"dag_id": ""}, "dag_id"),
            ({"dag_id": 7}, "dag_id"),
            ({"task_id": "gate\x00"}, "task_id"),
            ({"since": dt.datetime(2026, 3, 2)}, "since"),
            ({"until": "2026-03-02"}, "until"),
            ({"since": START, "until": START - dt.timedelta(seconds=1)}, "until"),
        ],
    )
    def test_named_field(self, analytics: ApprovalAnalytics, arguments: dict[str, Any], field: str) -> None:
        arguments = dict(arguments)  # the parameters are shared by both backends' runs
        dag_ids = arguments.pop("dag_ids", None)
        with pytest.raises(InvalidInput) as raised:
            analytics.report(dag_ids, **arguments)
        assert raised.value.field == field


@pytest.fixture
def tokyo_store(pg_url: str, pg_store: ApprovalStore) -> Iterator[ApprovalStore]:
    """The PostgreSQL test store, read by sessions whose time zone is Asia/Tokyo."""
    store = ApprovalStore(url=f"{pg_url}?options=-c%20TimeZone%3DAsia/Tokyo")
    yield store
    store.dispose()


def test_days_are_utc_days_whatever_the_session_zone(
    pg_store: ApprovalStore, tokyo_store: ApprovalStore, clock: Clock
) -> None:
    # 23:30 UTC is 08:30 the next day in Tokyo: the day of the request is still the UTC one.
    mgr = ApprovalManager(store=pg_store, clock=clock)
    clock.now = dt.datetime(2026, 3, 2, 23, 30, tzinfo=dt.timezone.utc)
    mgr.create(spec())
    daily = ApprovalAnalytics(store=tokyo_store, clock=clock).report(None)["daily"]
    assert daily == [{"date": "2026-03-02", "requests": 1, "decided": 0, "timed_out": 0}]

"""``/hitl/api/v1/analytics`` and ``/analytics.csv`` through Airflow's api-server with real tokens.

The requests are opened and decided through :class:`ApprovalManager` on a clock the test sets
(so every wait is known to the second), over the store the mounted app serves; the figures are
read back through the REST API. The only figure of the server's own clock, ``oldest_pending_s``,
is checked against the times read just before and after the call. A refused call changes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest

from airflow_hitl.analytics import HISTOGRAM_BUCKETS
from airflow_hitl.api.analytics_models import AnalyticsResponse
from airflow_hitl.api.routes.analytics import CSV_TABLES, REPORT_KEYS, csv_cell
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import Principal
from airflow_hitl.spec import utcnow
from tests.airflow_api import AirflowApi, open_request, snapshot
from tests.helpers import Clock

ANALYTICS = "/hitl/api/v1/analytics"
CSV = f"{ANALYTICS}.csv"
#: A Monday; the requests are opened on it and the next day (UTC).
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
OP = Principal.of("op", ["op"])
ADMIN = Principal.of("admin", ["admin"])


def bars(*counts: tuple[int, int]) -> list[dict[str, Any]]:
    """The histogram whose first bars hold ``counts`` (approved, rejected), the others none."""
    padded = [*counts] + [(0, 0)] * (len(HISTOGRAM_BUCKETS) - len(counts))
    return [
        {"le_s": bound, "label": label, "approved": approved, "rejected": rejected}
        for (bound, label), (approved, rejected) in zip(HISTOGRAM_BUCKETS, padded, strict=True)
    ]


#: No request: no rows, and every bar of the histogram at 0.
EMPTY = {"gates": [], "approvers": [], "daily": [], "time_to_decision_histogram": bars()}


def _at(clock: Clock, seconds: float) -> None:
    clock.now = START + dt.timedelta(seconds=seconds)


@pytest.fixture
def known(api_manager: ApprovalManager) -> dict[str, str]:
    """The known requests, by name, in the store the app serves.

    Day 1, ``billing``/``gate``: a1 approved by op at +60 s, a2 rejected by admin at +600 s, a3
    approved by op at +120 s, a4 still waiting, past its 30-minute SLA at +1 h (a breach).
    ``nightly``/``load``: n1 approved by op at +30 s, n2 timed out at +1 h, n3 cancelled at
    +300 s. Day 2 (09:00): b1 (``billing``/``gate``) waits.
    """
    clock = Clock(START)
    mgr = ApprovalManager(store=api_manager.store, clock=clock)
    ids = {
        "a1": open_request(mgr, run_id="r1").id,
        "a2": open_request(mgr, run_id="r2").id,
        "a3": open_request(mgr, run_id="r3").id,
        "a4": open_request(mgr, run_id="r4", sla=dt.timedelta(minutes=30)).id,
        "n1": open_request(mgr, dag_id="nightly", task_id="load", run_id="n1").id,
        "n2": open_request(
            mgr, dag_id="nightly", task_id="load", run_id="n2", timeout=dt.timedelta(hours=1), timeout_action="reject"
        ).id,
        "n3": open_request(mgr, dag_id="nightly", task_id="load", run_id="n3").id,
    }
    _at(clock, 30)
    mgr.approve(ids["n1"], user=OP)
    _at(clock, 60)
    mgr.approve(ids["a1"], user=OP)
    _at(clock, 120)
    mgr.approve(ids["a3"], user=OP)
    _at(clock, 300)
    mgr.cancel(ids["n3"], actor="trigger-user", reason="not needed")
    _at(clock, 600)
    mgr.reject(ids["a2"], user=ADMIN, reason="numbers look wrong")
    _at(clock, 3600)
    assert mgr.apply_timeout(ids["n2"]).approval.state == "timeout"
    assert mgr.sla.breach(ids["a4"])[0] is True
    _at(clock, 24 * 3600)
    ids["b1"] = open_request(mgr, run_id="b1").id
    return ids


def billing(**changes: Any) -> dict[str, Any]:
    """The figures of ``billing``/``gate`` over every known request, with ``changes``."""
    # Decided after 60, 120 and 600 s: the median is 120; p90 sits at 1 + 0.9 * 2 = 2.8, 80% of
    # the way from 120 to 600: 504.
    figures = {
        "dag_id": "billing",
        "task_id": "gate",
        "requests": 5,
        "approved": 2,
        "rejected": 1,
        "timed_out": 0,
        "cancelled": 0,
        "escalated": 0,
        "time_to_decision_p50_s": 120.0,
        "time_to_decision_p90_s": 504.0,
        "pending_now": 2,
        "oldest_pending_s": "since START",
        "sla_breaches": 1,
    }
    return {**figures, **changes}


NIGHTLY = {
    "dag_id": "nightly",
    "task_id": "load",
    "requests": 3,
    "approved": 1,
    "rejected": 0,
    "timed_out": 1,
    "cancelled": 1,
    "escalated": 0,
    # The timeout and the cancel are no decision: only n1's 30 s counts.
    "time_to_decision_p50_s": 30.0,
    "time_to_decision_p90_s": 30.0,
    "pending_now": 0,
    "oldest_pending_s": None,
    "sla_breaches": 0,
}
# op voted after 30, 60 and 120 s (median 60); admin once, after 600 s.
OP_VOTES = {"user": "op", "decisions": 3, "approvals": 3, "rejections": 0, "median_response_s": 60.0}
ADMIN_VOTES = {"user": "admin", "decisions": 1, "approvals": 0, "rejections": 1, "median_response_s": 600.0}
DAY_1 = {"date": "2026-03-02", "requests": 7, "decided": 4, "timed_out": 1}
DAY_2 = {"date": "2026-03-03", "requests": 1, "decided": 0, "timed_out": 0}
# Decided after 30 s (n1) and 60 s (a1, on the first bar's bound): "<= 1 min"; 120 s (a3): "1-5
# min"; a2 rejected after 600 s: "5-15 min". n2's timeout and n3's cancel are no decision.
HISTOGRAM = bars((2, 0), (1, 0), (0, 1))
HISTOGRAM_NIGHTLY = bars((1, 0))
HISTOGRAM_BILLING = bars((1, 0), (1, 0), (0, 1))
EVERYTHING = {
    "gates": [billing(), NIGHTLY],
    "approvers": [OP_VOTES, ADMIN_VOTES],
    "daily": [DAY_1, DAY_2],
    "time_to_decision_histogram": HISTOGRAM,
}
#: Of one DAG or task: its own votes and days.
OP_NIGHTLY = {**OP_VOTES, "decisions": 1, "approvals": 1, "median_response_s": 30.0}
OP_BILLING = {**OP_VOTES, "decisions": 2, "approvals": 2, "median_response_s": 90.0}
DAY_1_NIGHTLY = {"date": "2026-03-02", "requests": 3, "decided": 1, "timed_out": 1}
DAY_1_BILLING = {"date": "2026-03-02", "requests": 4, "decided": 3, "timed_out": 0}
#: Of the requests of day 1 (a4 waits; b1, of day 2, is left out).
DAY_1_ONLY = {
    "gates": [billing(requests=4, pending_now=1), NIGHTLY],
    "approvers": [OP_VOTES, ADMIN_VOTES],
    "daily": [DAY_1],
    "time_to_decision_histogram": HISTOGRAM,
}
#: Of the requests of day 2: b1 alone, waiting.
DAY_2_BILLING = billing(
    requests=1,
    approved=0,
    rejected=0,
    time_to_decision_p50_s=None,
    time_to_decision_p90_s=None,
    pending_now=1,
    oldest_pending_s="since day 2",
    sla_breaches=0,
)


def report(api: AirflowApi, user: str = "admin", **params: Any) -> dict[str, Any]:
    """``GET /analytics`` as ``user``: checked against the declared model, the oldest waits checked and named.

    A gate's ``oldest_pending_s`` is measured by the server's clock: it must lie between the
    waits of the gate's oldest waiting request (opened at ``START``, or a day later) seen just
    before and just after the call; it is then replaced by "since START" or "since day 2".
    """
    before = utcnow()
    response = api.client.get(ANALYTICS, params=params, headers=api.headers(user))
    after = utcnow()
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    AnalyticsResponse.model_validate(body)
    for gate in body["gates"]:
        oldest = gate["oldest_pending_s"]
        if oldest is None:
            continue
        for name, opened in (("since START", START), ("since day 2", START + dt.timedelta(days=1))):
            low, high = (before - opened).total_seconds(), (after - opened).total_seconds()
            if low - 0.001 <= oldest <= high + 0.001:
                gate["oldest_pending_s"] = name
                break
        else:
            pytest.fail(f"oldest_pending_s {oldest} of {gate['dag_id']} is no known request's wait")
    return body


class TestFigures:
    def test_every_figure_of_the_known_requests(self, api: AirflowApi, known: dict[str, str]) -> None:
        assert report(api) == EVERYTHING

    def test_the_histogram_counts_every_decision_once(self, api: AirflowApi, known: dict[str, str]) -> None:
        body = report(api)
        histogram = body["time_to_decision_histogram"]
        # The bars in order, each bounded by the next's lower end; the last one unbounded.
        assert [b["le_s"] for b in histogram] == [60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 259200.0, None]
        assert histogram[0]["label"] == "≤ 1 min" and histogram[-1]["label"] == "> 3 days"
        for outcome in ("approved", "rejected"):
            assert sum(b[outcome] for b in histogram) == sum(g[outcome] for g in body["gates"])

    def test_a_decision_made_over_the_rest_api_counts(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        opened = open_request(api_manager, dag_id="payroll", task_id="sign_off")
        response = api.client.post(
            f"/hitl/api/v1/approvals/{opened.id}/approve", json={"comment": "ok"}, headers=api.headers("op")
        )
        assert response.status_code == 200, response.text
        decided = api_manager.queries.get(opened.id)
        assert decided.decided_at is not None
        waited = round((decided.decided_at - decided.requested_at).total_seconds(), 3)

        body = report(api, dag_id="payroll")

        (gate,) = body["gates"]
        assert (gate["requests"], gate["approved"], gate["pending_now"]) == (1, 1, 0)
        # Rounded to the millisecond by the database from the exact interval, by Python here from a float.
        assert gate["time_to_decision_p50_s"] == gate["time_to_decision_p90_s"]
        assert gate["time_to_decision_p50_s"] == pytest.approx(waited, abs=0.0011)
        assert body["approvers"] == [
            {
                "user": "op",
                "decisions": 1,
                "approvals": 1,
                "rejections": 0,
                "median_response_s": pytest.approx(waited, abs=0.0011),
            }
        ]
        # One approval, in the bar its wait falls in.
        bar = next(i for i, (bound, _label) in enumerate(HISTOGRAM_BUCKETS) if bound is None or waited <= bound)
        assert body["time_to_decision_histogram"] == bars(*[(0, 0)] * bar, (1, 0))

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            pytest.param(
                {"dag_id": "nightly"},
                {
                    "gates": [NIGHTLY],
                    "approvers": [OP_NIGHTLY],
                    "daily": [DAY_1_NIGHTLY],
                    "time_to_decision_histogram": HISTOGRAM_NIGHTLY,
                },
                id="dag",
            ),
            pytest.param(
                {"task_id": "gate"},
                {
                    "gates": [billing()],
                    "approvers": [OP_BILLING, ADMIN_VOTES],
                    "daily": [DAY_1_BILLING, DAY_2],
                    "time_to_decision_histogram": HISTOGRAM_BILLING,
                },
                id="task",
            ),
            pytest.param({"dag_id": "billing", "task_id": "load"}, EMPTY, id="dag-and-task"),
            # Requests opened from noon on day 1: b1 alone (the SLA breach was a4's, on day 1).
            pytest.param(
                {"since": (START + dt.timedelta(hours=3)).isoformat()},
                {"gates": [DAY_2_BILLING], "approvers": [], "daily": [DAY_2], "time_to_decision_histogram": bars()},
                id="since",
            ),
            pytest.param({"until": (START + dt.timedelta(hours=3)).isoformat()}, DAY_1_ONLY, id="until"),
            # Another zone's offset names the same instants: 09:00 UTC is 10:00 in Paris, and every
            # request of day 1 was opened at that very instant.
            pytest.param(
                {"since": "2026-03-02T10:00:00+01:00", "until": "2026-03-02T10:00:00+01:00"},
                DAY_1_ONLY,
                id="one-instant-with-an-offset",
            ),
            pytest.param({"since": "2027-01-01T00:00:00Z"}, EMPTY, id="nothing-in-the-window"),
            # An empty text filter filters nothing, as in the approvals' lists.
            pytest.param({"dag_id": "", "task_id": ""}, EVERYTHING, id="empty-filters"),
        ],
    )
    def test_filters(
        self, api: AirflowApi, known: dict[str, str], params: dict[str, str], expected: dict[str, Any]
    ) -> None:
        assert report(api, **params) == expected


class TestAccess:
    @pytest.mark.parametrize("user", ["admin", "op", "viewer"])
    def test_a_reader_of_every_dag_sees_every_figure(self, api: AirflowApi, known: dict[str, str], user: str) -> None:
        assert [g["dag_id"] for g in report(api, user)["gates"]] == ["billing", "nightly"]

    def test_a_user_who_may_read_no_dag_sees_nothing(self, api: AirflowApi, known: dict[str, str]) -> None:
        assert report(api, "nobody") == EMPTY
        for table, columns in CSV_TABLES.items():
            response = api.client.get(CSV, params={"table": table}, headers=api.headers("nobody"))
            assert response.status_code == 200
            # The histogram's bars are fixed: there, each at 0.
            empty = [[csv_cell(b[c]) for c in columns] for b in bars()] if table == "histogram" else []
            assert list(csv.reader(io.StringIO(response.text))) == [list(columns), *empty]

    @pytest.mark.parametrize("path", [ANALYTICS, f"{CSV}?table=gates"])
    def test_without_a_token_it_is_401(self, api: AirflowApi, known: dict[str, str], path: str) -> None:
        response = api.client.get(path)
        assert response.status_code == 401
        assert response.json()["detail"]


def rows_of(response: Any) -> list[list[str]]:
    """The rows of a CSV answer, checked to be one."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return list(csv.reader(io.StringIO(response.text)))


class TestCsv:
    @pytest.mark.parametrize("table", list(CSV_TABLES))
    def test_each_table_as_the_json_has_it(self, api: AirflowApi, known: dict[str, str], table: str) -> None:
        json_rows = api.client.get(ANALYTICS, headers=api.headers("admin")).json()[REPORT_KEYS.get(table, table)]
        response = api.client.get(CSV, params={"table": table}, headers=api.headers("admin"))
        rows = rows_of(response)
        assert response.headers["content-disposition"] == f'attachment; filename="hitl-analytics-{table}.csv"'
        columns = CSV_TABLES[table]
        assert rows[0] == list(columns)
        assert len(rows) == 1 + len(json_rows) > 2
        # The one figure of the clock moved on between the two calls: a number, a little larger.
        clocked = columns.index("oldest_pending_s") if "oldest_pending_s" in columns else None
        for row, item in zip(rows[1:], json_rows, strict=True):
            expected = [csv_cell(item[c]) for c in columns]
            if clocked is not None and item["oldest_pending_s"] is not None:
                assert float(row[clocked]) >= item["oldest_pending_s"]
                row[clocked] = expected[clocked]
            assert row == expected

    def test_the_gates_table_in_full(self, api: AirflowApi, known: dict[str, str]) -> None:
        rows = rows_of(api.client.get(CSV, params={"table": "gates", "dag_id": "nightly"}, headers=api.headers("op")))
        assert rows == [
            [
                "dag_id",
                "task_id",
                "requests",
                "approved",
                "rejected",
                "timed_out",
                "cancelled",
                "escalated",
                "time_to_decision_p50_s",
                "time_to_decision_p90_s",
                "pending_now",
                "oldest_pending_s",
                "sla_breaches",
            ],
            ["nightly", "load", "3", "1", "0", "1", "1", "0", "30.0", "30.0", "0", "", "0"],
        ]

    @pytest.mark.parametrize(
        ("params", "counts"),
        [
            pytest.param({}, [("2", "0"), ("1", "0"), ("0", "1")], id="every-dag"),
            pytest.param({"dag_id": "nightly"}, [("1", "0")], id="dag"),
            pytest.param({"task_id": "gate"}, [("1", "0"), ("1", "0"), ("0", "1")], id="task"),
            pytest.param({"since": (START + dt.timedelta(hours=3)).isoformat()}, [], id="since"),
        ],
    )
    def test_the_histogram_table_in_full(
        self, api: AirflowApi, known: dict[str, str], params: dict[str, str], counts: list[tuple[str, str]]
    ) -> None:
        response = api.client.get(CSV, params={"table": "histogram", **params}, headers=api.headers("op"))
        assert response.headers["content-disposition"] == 'attachment; filename="hitl-analytics-histogram.csv"'
        rows = rows_of(response)
        padded = counts + [("0", "0")] * (8 - len(counts))
        labels = ["≤ 1 min", "1-5 min", "5-15 min", "15-60 min", "1-4 h", "4-24 h", "1-3 days", "> 3 days"]
        bounds = ["60.0", "300.0", "900.0", "3600.0", "14400.0", "86400.0", "259200.0", ""]
        assert rows == [
            ["le_s", "label", "approved", "rejected"],
            *([bound, label, *pair] for bound, label, pair in zip(bounds, labels, padded, strict=True)),
        ]

    def test_text_is_quoted_and_never_a_formula(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        hostile_dag = '=HYPERLINK("http://evil.example","click"),x'
        gate = open_request(api_manager, dag_id=hostile_dag, task_id="@SUM(A1)")
        for name in ("+cmd", "-2+3"):
            api_manager.approve(gate.id, user=Principal.of(name, ["op"]))
            gate = open_request(api_manager, dag_id=hostile_dag, task_id="@SUM(A1)", run_id=f"after-{name}")
        gates = rows_of(api.client.get(CSV, params={"table": "gates"}, headers=api.headers("admin")))
        assert gates[1][:2] == ["'" + hostile_dag, "'@SUM(A1)"]
        # Quoted as RFC 4180 says: the comma and the quotes stay inside the one cell.
        assert (
            '"\'=HYPERLINK(""http://evil.example"",""click""),x"'
            in api.client.get(CSV, params={"table": "gates"}, headers=api.headers("admin")).text
        )
        approvers = rows_of(api.client.get(CSV, params={"table": "approvers"}, headers=api.headers("admin")))
        assert sorted(row[0] for row in approvers[1:]) == ["'+cmd", "'-2+3"]
        # The JSON keeps the text as it is.
        assert api.client.get(ANALYTICS, headers=api.headers("admin")).json()["gates"][0]["dag_id"] == hostile_dag


class TestBadInput:
    @pytest.mark.parametrize(
        ("path", "params", "field"),
        [
            pytest.param(ANALYTICS, {"since": "2026-03-02T09:00:00"}, "since", id="since-without-a-zone"),
            pytest.param(ANALYTICS, {"until": "2026-03-02"}, "until", id="until-a-date"),
            pytest.param(ANALYTICS, {"since": "yesterday"}, "since", id="since-not-a-time"),
            pytest.param(ANALYTICS, {"until": "0001-01-01T00:00:00+14:00"}, "until", id="until-before-year-1-in-utc"),
            pytest.param(ANALYTICS, {"since": "9999-12-31T23:59:59-14:00"}, "since", id="since-after-year-9999-in-utc"),
            pytest.param(ANALYTICS, {"dag_id": "d" * 251}, "dag_id", id="dag-id-too-long"),
            pytest.param(ANALYTICS, {"task_id": "a\x00b"}, "task_id", id="task-id-with-nul"),
            pytest.param(CSV, {}, "table", id="csv-without-a-table"),
            pytest.param(CSV, {"table": "votes"}, "table", id="csv-unknown-table"),
            pytest.param(CSV, {"table": "time_to_decision_histogram"}, "table", id="csv-histogram-by-its-long-name"),
            pytest.param(CSV, {"table": "histogram", "until": "2026-03-02"}, "until", id="csv-histogram-until-a-date"),
            pytest.param(CSV, {"table": "gates", "since": "2026-03-02T09:00:00"}, "since", id="csv-naive-since"),
        ],
    )
    def test_a_wrong_parameter_is_a_422_naming_it(
        self, api: AirflowApi, api_manager: ApprovalManager, known: dict[str, str], path: str, params: Any, field: str
    ) -> None:
        before = snapshot(api_manager)
        response = api.client.get(path, params=params, headers=api.headers("admin"))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/json"
        assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
        assert snapshot(api_manager) == before

    @pytest.mark.parametrize(("path", "table"), [(ANALYTICS, {}), (CSV, {"table": "daily"})], ids=["json", "csv"])
    def test_until_before_since_is_a_422_naming_until(
        self, api: AirflowApi, api_manager: ApprovalManager, path: str, table: dict[str, str]
    ) -> None:
        params = {"since": START.isoformat(), "until": (START - dt.timedelta(seconds=1)).isoformat(), **table}
        response = api.client.get(path, params=params, headers=api.headers("admin"))
        assert response.status_code == 422, response.text
        assert "`until`" in response.json()["detail"]


def test_the_histogram_is_declared_in_the_openapi_document(api: AirflowApi) -> None:
    document = api.client.get("/hitl/openapi.json").json()
    schemas = document["components"]["schemas"]
    histogram = schemas["AnalyticsResponse"]["properties"]["time_to_decision_histogram"]
    assert histogram["items"] == {"$ref": "#/components/schemas/BucketFiguresResponse"}
    assert "time_to_decision_histogram" in schemas["AnalyticsResponse"]["required"]
    bar = schemas["BucketFiguresResponse"]
    assert set(bar["properties"]) == set(bar["required"]) == {"le_s", "label", "approved", "rejected"}
    (table,) = [p for p in document["paths"]["/api/v1/analytics.csv"]["get"]["parameters"] if p["name"] == "table"]
    assert table["schema"]["enum"] == ["gates", "approvers", "daily", "histogram"]

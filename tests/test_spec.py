"""spec: what a gate asks for (ApprovalSpec's checks), the list filters' SQL, the JSON helpers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from airflow_hitl.exceptions import InvalidApprovalConfig, InvalidInput
from airflow_hitl.limits import INT32_MAX, MAX_TIMEOUT_SECONDS
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import WAITING_STATES, ApprovalRequestRow
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.spec import (
    ApprovalFilter,
    ApprovalSpec,
    json_default,
    json_safe,
    replace_filter,
    utcnow,
    where_clauses,
)
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
LEVEL = EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=30))


def nested(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` objects deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def escalating(*levels: Any) -> dict[str, Any]:
    """The options of a gate that escalates to ``levels`` after an hour, then rejects."""
    return {
        "timeout": dt.timedelta(hours=1),
        "timeout_action": "escalate",
        "escalation_final_action": "reject",
        "escalation_targets": list(levels),
    }


def fields_of(value: ApprovalSpec) -> list[str]:
    """The fields ``value.problems()`` names, in the order found."""
    return [name for name, _ in value.problems().items]


class TestValidate:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            pytest.param({"title": ""}, "title", id="empty-title"),
            pytest.param({"required_approvals": 0}, "required_approvals", id="zero-approvals"),
            pytest.param({"timeout_action": "explode", "timeout": dt.timedelta(1)}, "timeout_action", id="bad-action"),
            pytest.param({"timeout_action": "approve"}, "timeout", id="action-without-timeout"),
            pytest.param({"require_all": True}, "require_all", id="require-all-without-list"),
            pytest.param(
                {"allowed_approvers": ["a"], "required_approvals": 2}, "required_approvals", id="quorum-too-big"
            ),
            pytest.param({"context": {"x": object()}}, "context", id="context-not-json"),
        ],
    )
    def test_invalid_spec_writes_nothing(self, mgr: ApprovalManager, overrides: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.create(spec(**overrides))
        assert err.value.field == field
        assert mgr.queries.list()[1] == 0

    def test_every_wrong_field_is_named_at_once(self) -> None:
        bad = spec(dag_id="", title="  ", approval_type="sometimes", on_reject="shrug", required_approvals=0)
        assert fields_of(bad) == ["dag_id", "title", "approval_type", "required_approvals", "on_reject"]
        with pytest.raises(InvalidInput) as err:
            bad.validate()
        assert type(err.value) is InvalidInput
        assert [name for name, _ in err.value.problems] == fields_of(bad)

    def test_the_operator_gets_its_own_error_and_place(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            spec(title="").validate(InvalidApprovalConfig, where="in task 'gate'")
        assert str(err.value).startswith("ApprovalOperator: invalid `title` in task 'gate':")

    @pytest.mark.parametrize(
        ("overrides", "field", "words"),
        [
            pytest.param({"title": "x" * 501}, "title", "at most 500", id="long-title"),
            pytest.param({"dag_id": 7}, "dag_id", "must be a string", id="dag-id-not-text"),
            pytest.param({"run_id": "a\x00b"}, "run_id", "NUL", id="nul-in-run-id"),
            pytest.param({"description": "\ud800"}, "description", "surrogates", id="lone-surrogate"),
            pytest.param({"timeout": 60}, "timeout", "datetime.timedelta", id="timeout-not-timedelta"),
            pytest.param({"timeout": dt.timedelta(0)}, "timeout", "positive", id="zero-timeout"),
            pytest.param(
                {"timeout": dt.timedelta(seconds=MAX_TIMEOUT_SECONDS + 1)}, "timeout", "ten years", id="over-ten-years"
            ),
            pytest.param(
                {"timeout": dt.timedelta(hours=1), "timeout_action": "escalate", "escalation_final_action": "approve"},
                "escalate_to",
                "is required",
                id="escalate-without-levels",
            ),
            pytest.param(
                {"timeout": dt.timedelta(hours=1), "timeout_action": "escalate", "escalation_targets": [LEVEL]},
                "escalation_final_action",
                "must be one of",
                id="escalate-without-final-action",
            ),
            pytest.param(
                {"timeout": dt.timedelta(hours=1), "timeout_action": "reject", "escalation_targets": [LEVEL]},
                "escalate_to",
                "only used with",
                id="levels-without-escalate",
            ),
            pytest.param(
                escalating(LEVEL, {"approvers": ["carol"], "timeout_seconds": 60}),
                "escalate_to[1]",
                "must be an EscalationLevel, got dict",
                id="level-not-a-level",
            ),
            pytest.param({"required_approvals": True}, "required_approvals", "positive integer", id="bool-quorum"),
            pytest.param(
                {"required_approvals": INT32_MAX + 1},
                "required_approvals",
                f"at most {INT32_MAX}",
                id="quorum-too-wide",
            ),
            pytest.param(
                {"allowed_approvers": ["alice", "alice"], "required_approvals": 2},
                "required_approvals",
                "names only 1 people",
                id="one-person-counts-once",
            ),
            pytest.param({"allowed_approvers": ["alice", 3]}, "allowed_approvers", "non-empty strings", id="approver"),
            pytest.param({"allowed_roles": [""]}, "allowed_roles", "non-empty strings", id="empty-role"),
            pytest.param({"allowed_roles": 5}, "allowed_roles", "non-empty strings", id="roles-not-a-list"),
            pytest.param({"allowed_approvers": True}, "allowed_approvers", "non-empty strings", id="approvers-bool"),
            pytest.param(
                {"timeout": dt.timedelta(hours=1), "timeout_action": "escalate", "escalation_targets": object()},
                "escalate_to",
                "must be a list",
                id="levels-not-a-list",
            ),
            pytest.param(
                escalating(EscalationLevel(approvers=("carol",), timeout=60)),  # type: ignore[arg-type]
                "escalate_to[0].timeout",
                "datetime.timedelta",
                id="level-timeout-not-timedelta",
            ),
            pytest.param(
                escalating(EscalationLevel(approvers=("carol",), timeout=dt.timedelta(-1))),
                "escalate_to[0].timeout",
                "positive",
                id="level-timeout-negative",
            ),
            pytest.param(
                escalating(EscalationLevel(approvers=("carol",), timeout=dt.timedelta(days=3_000_000))),
                "escalate_to[0].timeout",
                "ten years",
                id="level-timeout-past-year-9999",
            ),
            pytest.param(
                escalating(EscalationLevel(timeout=dt.timedelta(minutes=5))),
                "escalate_to[0]",
                "no approvers and no roles",
                id="level-names-nobody",
            ),
            pytest.param({"map_index": -2}, "map_index", "from -1", id="map-index-below"),
            pytest.param({"map_index": INT32_MAX + 1}, "map_index", "from -1", id="map-index-above"),
            pytest.param({"context": ["a"]}, "context", "must be a dict", id="context-not-dict"),
            pytest.param({"notify": {"at": object()}}, "notify", "JSON-serialisable", id="notify-not-json"),
            pytest.param({"metadata": {"x": float("nan")}}, "metadata", "finite", id="metadata-nan"),
            pytest.param({"metadata": nested(17)}, "metadata", "deeper than 16", id="metadata-too-deep"),
            pytest.param({"context": {"blob": "x" * 70_000}}, "context", "max_json_bytes", id="context-too-big"),
        ],
    )
    def test_each_problem_names_its_field(self, overrides: dict[str, Any], field: str, words: str) -> None:
        problems = dict(spec(**overrides).problems().items)
        assert field in problems
        assert words in problems[field]

    def test_one_name_is_a_one_item_list_not_its_letters(self, mgr: ApprovalManager) -> None:
        level = EscalationLevel(approvers="carol", roles="ops", timeout=dt.timedelta(minutes=5))  # type: ignore[arg-type]
        assert (level.approvers, level.roles) == (("carol",), ("ops",))
        gate = spec(
            allowed_approvers="alice",
            allowed_roles="release",
            timeout=dt.timedelta(hours=1),
            timeout_action="escalate",
            escalation_targets=[level],
            escalation_final_action="reject",
        )
        created = mgr.create(gate)
        assert (created.allowed_approvers, created.allowed_roles) == (("alice",), ("release",))
        assert created.escalation_targets[0].approvers == ("carol",)

    def test_roles_widen_the_circle_past_the_named_people(self) -> None:
        # With a role allowed, more approvals than named people can still be met.
        assert not spec(allowed_approvers=["alice"], allowed_roles=["ops"], required_approvals=3).problems()

    def test_a_complete_escalating_gate_is_valid(self) -> None:
        gate = spec(
            allowed_approvers=["bob"],
            timeout=dt.timedelta(minutes=10),
            timeout_action="escalate",
            escalation_targets=[LEVEL],
            escalation_final_action="reject",
            context={"at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "run": uuid.uuid4()},
        )
        assert not gate.problems()
        gate.validate()


class TestJson:
    def test_times_and_uuids_are_written_as_text(self) -> None:
        moment = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        assert json_default(moment) == "2026-11-30T09:00:00+00:00"
        assert json_default(dt.date(2026, 11, 30)) == "2026-11-30"
        assert json_default(ident) == "12345678-1234-5678-1234-567812345678"
        with pytest.raises(TypeError, match="set is not JSON-serialisable"):
            json_default({1})

    def test_json_safe_is_what_a_json_column_reads_back(self) -> None:
        moment = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)
        given = {"at": moment, "ids": (1, 2), "nested": {"n": None}}
        assert json_safe(given) == {"at": "2026-11-30T09:00:00+00:00", "ids": [1, 2], "nested": {"n": None}}
        assert given["ids"] == (1, 2)  # the caller's value is left alone


class TestFilters:
    """``where_clauses`` run as SQL on the store (SQLite and PostgreSQL)."""

    @staticmethod
    def matching(store: ApprovalStore, filters: ApprovalFilter) -> set[str]:
        with store.session() as session:
            return set(session.scalars(select(ApprovalRequestRow.id).where(*where_clauses(filters))))

    def test_each_field_narrows(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        ml = mgr.create(spec(dag_id="ml", run_id="r-ml", task_id="check", map_index=0))
        etl = mgr.create(spec(dag_id="etl", requested_by="dora"))
        api = mgr.create(spec(dag_id="etl", run_id=None, task_id=None, try_number=None), origin="api")
        mgr.approve(etl.id, user=ALICE)
        every = {ml.id, etl.id, api.id}
        assert self.matching(store, ApprovalFilter()) == every
        assert self.matching(store, ApprovalFilter(dag_id="ml")) == {ml.id}
        assert self.matching(store, ApprovalFilter(dag_ids=["ml", "nope"])) == {ml.id}
        assert self.matching(store, ApprovalFilter(dag_ids=[])) == set()  # no readable DAG: nothing
        assert self.matching(store, ApprovalFilter(run_id="r-ml")) == {ml.id}
        assert self.matching(store, ApprovalFilter(task_id="check")) == {ml.id}
        assert self.matching(store, ApprovalFilter(map_index=0)) == {ml.id}
        assert self.matching(store, ApprovalFilter(map_index=-1)) == {etl.id, api.id}
        assert self.matching(store, ApprovalFilter(origin="api")) == {api.id}
        assert self.matching(store, ApprovalFilter(requested_by="dora")) == {etl.id}
        assert self.matching(store, ApprovalFilter(decided_by="alice")) == {etl.id}
        assert self.matching(store, ApprovalFilter(ids=[ml.id, api.id])) == {ml.id, api.id}
        assert self.matching(store, ApprovalFilter(ids=[])) == set()
        assert self.matching(store, ApprovalFilter(states=["approved"])) == {etl.id}

    def test_waiting_means_pending_or_escalated(self, mgr: ApprovalManager, store: ApprovalStore, clock: Clock) -> None:
        waiting = mgr.create(spec())
        escalating = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[LEVEL],
                escalation_final_action="reject",
            )
        )
        done = mgr.create(spec())
        mgr.cancel(done.id, actor="admin", reason="not needed")
        clock.advance(minutes=1)
        assert mgr.apply_timeout(escalating.id).escalated
        assert self.matching(store, ApprovalFilter(states=WAITING_STATES)) == {waiting.id, escalating.id}
        assert self.matching(store, ApprovalFilter(states=["escalated"])) == {escalating.id}

    def test_since_and_until_read_the_decision_time_of_decided_states(
        self, mgr: ApprovalManager, store: ApprovalStore, clock: Clock
    ) -> None:
        start = clock.now
        early = mgr.create(spec())
        clock.advance(hours=1)
        late = mgr.create(spec())
        clock.advance(hours=1)
        mgr.approve(early.id, user=ALICE)
        cut = start + dt.timedelta(minutes=30)
        # Without decided states, the request time counts: only the later request.
        assert self.matching(store, ApprovalFilter(since=cut)) == {late.id}
        assert self.matching(store, ApprovalFilter(until=cut)) == {early.id}
        # For decided states, the decision time: the early request was decided after the cut.
        assert self.matching(store, ApprovalFilter(states=["approved"], since=cut)) == {early.id}
        assert self.matching(store, ApprovalFilter(states=["approved"], until=cut)) == set()

    def test_replace_filter_leaves_the_original(self) -> None:
        base = ApprovalFilter(dag_id="ml", states=["pending"])
        narrowed = replace_filter(base, states=["approved"], run_id="r1")
        assert (narrowed.dag_id, narrowed.states, narrowed.run_id) == ("ml", ["approved"], "r1")
        assert (base.states, base.run_id) == (["pending"], None)


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.utcoffset() == dt.timedelta(0)


def test_fields_that_hold_a_word_are_typed_with_its_literal() -> None:
    # mypy names a misspelt word in a gate's options, a filter or a decision.
    from enum import Enum
    from typing import get_type_hints

    from airflow_hitl import vocabulary as v
    from airflow_hitl.spec import Decision

    def words(cls: type, name: str) -> set[str]:
        # Every value the field's type admits, Literal args and enum members alike.
        found: set[str] = set()
        stack = [get_type_hints(cls)[name]]
        while stack:
            hint = stack.pop()
            if isinstance(hint, type) and issubclass(hint, Enum):
                found.update(m.value for m in hint)
            elif isinstance(hint, str):
                found.add(hint)
            else:
                stack.extend(getattr(hint, "__args__", ()))
        return found

    assert words(ApprovalSpec, "approval_type") == set(v.APPROVAL_TYPES)
    assert set(v.TIMEOUT_ACTIONS) <= words(ApprovalSpec, "timeout_action") <= set(v.Action)
    assert set(v.FINAL_ACTIONS) <= words(ApprovalSpec, "escalation_final_action") <= set(v.Action)
    assert words(ApprovalSpec, "on_reject") == set(v.ON_REJECT)
    assert words(ApprovalFilter, "states") == set(v.STATES)
    assert words(ApprovalFilter, "origin") == set(v.ORIGINS)
    assert set(v.ACTIONS) <= words(Decision, "action") <= set(v.Action)
    assert words(Decision, "source") == set(v.SOURCES)

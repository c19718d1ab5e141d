"""Form inputs: parsing a gate's Params, and the manager validating each decision's values.

The manager tests run on SQLite and PostgreSQL (the ``store`` fixture): the form is stored
with the request and checked under the row lock, so a refused value changes nothing.
"""

from __future__ import annotations

import pytest
from airflow.sdk import Param
from sqlalchemy import func, select, text

from airflow_hitl import queries as queries_module
from airflow_hitl.exceptions import InvalidApprovalConfig, InvalidInput
from airflow_hitl.forms import MAX_MESSAGE_LENGTH, TOO_COSTLY, parse_inputs, resolve_inputs
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalVoteRow
from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.policy import Principal
from airflow_hitl.records import decision_summary
from tests.helpers import spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])

FORM = {
    "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="How much traffic"),
    "ticket": Param(type="string", minLength=3),
    "region": Param("eu", enum=["eu", "us"]),
    "note": Param(None, type=["null", "string"]),
}


class TestParse:
    def test_params_become_their_stored_form(self) -> None:
        form = parse_inputs(FORM)
        assert form["rollout_percent"] == {
            "value": 10,
            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            "description": "How much traffic",
            "required": False,
        }
        assert form["ticket"]["required"] is True
        assert form["note"]["required"] is False  # a None default the schema accepts
        assert parse_inputs(form) == form  # the stored form parses back to itself

    def test_plain_value_is_wrapped(self) -> None:
        assert parse_inputs({"owner": "ml-team"})["owner"] == {
            "value": "ml-team",
            "schema": {},
            "description": None,
            "required": False,
        }

    def test_every_bad_input_is_named(self) -> None:
        with pytest.raises(InvalidInput) as err:
            parse_inputs(
                {
                    "not an identifier": Param(1),
                    "pct": Param(500, type="integer", maximum=100),
                    "kind": Param(type="no-such-type"),
                    "ok": Param(1, type="integer"),
                }
            )
        fields = [field for field, _ in err.value.problems]
        assert fields == ["inputs['not an identifier']", "inputs['pct']", "inputs['kind']"]
        assert "does not satisfy the schema" in str(err.value)
        assert "not valid JSON Schema" in str(err.value)

    def test_a_stored_forms_required_must_agree_with_its_value(self) -> None:
        assert parse_inputs({"note": {"schema": {}, "required": False}})["note"]["value"] is None
        with pytest.raises(InvalidInput) as err:
            parse_inputs(
                {
                    "ticket": {"schema": {"type": "string"}, "required": True, "value": "CHG-1"},
                    "pct": {"schema": {"type": "integer"}, "required": False},
                }
            )
        messages = dict(err.value.problems)
        assert "required input has no default" in messages["inputs['ticket']"]
        assert "optional input needs a `value`" in messages["inputs['pct']"]

    def test_inputs_must_be_a_dict(self) -> None:
        with pytest.raises(InvalidInput, match="inputs"):
            parse_inputs(["ticket"])


class TestResolve:
    form = parse_inputs(FORM)

    def test_defaults_fill_what_the_approver_left_out(self) -> None:
        assert resolve_inputs(self.form, {"ticket": "CHG-1"}, approving=True) == {
            "rollout_percent": 10,
            "ticket": "CHG-1",
            "region": "eu",
            "note": None,
        }

    def test_reject_requires_nothing_and_fills_nothing(self) -> None:
        assert resolve_inputs(self.form, None, approving=False) == {}
        assert resolve_inputs(self.form, {"rollout_percent": 5}, approving=False) == {"rollout_percent": 5}
        with pytest.raises(InvalidInput, match=r"inputs\.rollout_percent"):
            resolve_inputs(self.form, {"rollout_percent": 0}, approving=False)

    def test_a_value_the_store_cannot_keep_is_named(self) -> None:
        # What a link's form, a Slack modal or the CLI may parse from text: JSON's NaN, a NUL.
        form = parse_inputs({"pct": Param(1.0, type="number"), "note": Param("", type="string"), "any": {"schema": {}}})
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(form, {"pct": float("nan"), "note": "a\x00b", "any": {"x": float("inf")}}, approving=True)
        assert sorted(field for field, _ in err.value.problems) == ["inputs.any", "inputs.note", "inputs.pct"]
        assert "finite" in dict(err.value.problems)["inputs.pct"]

    def test_every_bad_value_is_named(self) -> None:
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(self.form, {"rollout_percent": "ten", "region": "mars", "colour": "red"}, approving=True)
        fields = sorted(field for field, _ in err.value.problems)
        assert fields == ["inputs.colour", "inputs.region", "inputs.rollout_percent", "inputs.ticket"]


class TestHostileSchemas:
    """A form's schema runs nothing a crafted value can make slow, and fetches nothing."""

    # Python's backtracking engine takes minutes on this value; RE2 answers in microseconds.
    CATASTROPHIC = {"type": "string", "pattern": "^(a+)+$"}

    def test_a_pattern_runs_on_re2_so_a_catastrophic_value_is_just_refused(self) -> None:
        form = parse_inputs({"code": Param(type="string", pattern="^(a+)+$")})
        with pytest.raises(InvalidInput, match="does not match"):
            resolve_inputs(form, {"code": "a" * 5000 + "!"}, approving=True)
        assert resolve_inputs(form, {"code": "aaaa"}, approving=True) == {"code": "aaaa"}

    def test_a_regex_value_is_checked_by_re2(self) -> None:
        form = parse_inputs({"expr": Param(type="string", format="regex")})
        assert resolve_inputs(form, {"expr": "^CHG-[0-9]+$"}, approving=True) == {"expr": "^CHG-[0-9]+$"}
        for bad in ("(unclosed", "(?=lookahead)"):
            with pytest.raises(InvalidInput, match="is not a 'regex'"):
                resolve_inputs(form, {"expr": bad}, approving=True)

    @pytest.mark.parametrize(
        ("schema", "reason"),
        [
            pytest.param({"type": "string", "pattern": "(?=a)b"}, "not supported", id="lookahead"),
            pytest.param({"type": "string", "pattern": r"(a)\1"}, "not supported", id="backreference"),
            pytest.param({"properties": {"x": {"pattern": "a{1001}"}}}, "not supported", id="nested-too-large"),
            pytest.param({"patternProperties": {"^a": {}}}, "patternProperties", id="pattern-properties"),
            pytest.param({"$ref": "http://127.0.0.1:9/schema.json"}, "must point inside", id="remote-ref"),
            pytest.param({"items": {"$ref": "#/$defs/missing"}}, "points at nothing", id="dangling-ref"),
            pytest.param({"$schema": 5}, "must be a string", id="dialect-not-a-string"),
            pytest.param({"allOf": [{"$ref": "#"}]}, "without end", id="endless-ref"),
        ],
    )
    def test_a_schema_that_could_hang_or_fetch_is_refused_naming_the_input(self, schema: dict, reason: str) -> None:
        with pytest.raises(InvalidInput) as err:
            parse_inputs({"ok": Param(1, type="integer"), "bad": {"schema": schema}})
        assert [field for field, _ in err.value.problems] == ["inputs['bad']"]
        assert reason in str(err.value)

    def test_a_local_ref_is_followed(self) -> None:
        schema = {"$defs": {"pct": {"type": "integer", "maximum": 100}}, "$ref": "#/$defs/pct"}
        form = parse_inputs({"pct": {"schema": schema, "value": 10}})
        with pytest.raises(InvalidInput, match=r"inputs\.pct"):
            resolve_inputs(form, {"pct": 101}, approving=True)

    def test_a_form_stored_before_these_checks_answers_a_422_not_a_crash(self) -> None:
        stored = {
            "lookahead": {"value": None, "schema": {"type": "string", "pattern": "(?=a)b"}, "required": True},
            "dangling": {"value": None, "schema": {"$ref": "#/nope"}, "required": True},
            "endless": {"value": None, "schema": {"$ref": "#"}, "required": True},
        }
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(stored, {"lookahead": "ab", "dangling": 1, "endless": 1}, approving=True)
        assert sorted(field for field, _ in err.value.problems) == [
            "inputs.dangling",
            "inputs.endless",
            "inputs.lookahead",
        ]

    def test_a_recursive_schema_that_walks_down_the_value_is_allowed(self) -> None:
        tree = {"type": "object", "properties": {"child": {"$ref": "#"}}}
        form = parse_inputs({"tree": {"schema": tree, "value": {}}})
        assert resolve_inputs(form, {"tree": {"child": {"child": {}}}}, approving=True) == {
            "tree": {"child": {"child": {}}}
        }


#: Issue 23's payloads: 4,000 distinct objects (49 KiB), a draft-04 enum of 3,000 objects.
DISTINCT_OBJECTS = [{"k": i} for i in range(4000)]
DRAFT4 = "http://json-schema.org/draft-04/schema#"
UNIQUE = {"type": "array", "uniqueItems": True}


def _doubling_refs(levels: int) -> dict:
    """A schema whose every level applies the next one twice: 2**levels checks of any value."""
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(levels)}
    return {"$defs": {**defs, f"d{levels}": {"type": "integer"}}, "$ref": "#/$defs/d0"}


class TestBoundedWork:
    """No form and no value may cost more than MAX_CHECK_STEPS: refused, naming the input, not checked for minutes."""

    def test_unique_items_over_thousands_of_objects_is_refused_as_a_value(self) -> None:
        form = parse_inputs({"rows": {"schema": UNIQUE, "value": []}})
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(form, {"rows": DISTINCT_OBJECTS}, approving=True)
        [(field, message)] = err.value.problems
        assert field == "inputs.rows"
        assert message == f"{TOO_COSTLY}: uniqueItems compares every pair of its 4000 items"
        # What is cheap to compare stays allowed: strings are sorted, a few hundred objects are fine.
        assert resolve_inputs(form, {"rows": [str(i) for i in range(4000)]}, approving=True)["rows"][-1] == "3999"
        assert len(resolve_inputs(form, {"rows": DISTINCT_OBJECTS[:300]}, approving=True)["rows"]) == 300

    @pytest.mark.parametrize(
        ("param", "says"),
        [
            pytest.param(
                Param(DISTINCT_OBJECTS, type="array", uniqueItems=True),
                "uniqueItems compares every pair of its 4000 items",
                id="unique-items-default",
            ),
            pytest.param(
                Param({"k": 1}, schema={"$schema": DRAFT4, "enum": [{"k": i} for i in range(3000)]}),
                "`enum` has 3000 members that are not all strings or numbers",
                id="draft-04-enum",
            ),
            pytest.param(
                Param(1, type="integer", **{"not": {"type": [{"k": i} for i in range(2000)]}}),
                "`type` has 2000 members",
                id="type-list-of-objects",
            ),
            pytest.param(Param(1, schema=_doubling_refs(30)), "references multiply the work", id="doubling-refs"),
        ],
    )
    def test_a_dags_param_too_costly_to_check_is_refused_naming_it(self, param: Param, says: str) -> None:
        with pytest.raises(InvalidInput) as err:
            parse_inputs({"ok": Param(1, type="integer"), "costly": param})
        [(field, message)] = err.value.problems
        assert field == "inputs['costly']" and says in message
        assert len(message) < 1000

    def test_the_operator_refuses_it_when_the_dag_is_parsed(self) -> None:
        with pytest.raises(InvalidApprovalConfig, match=r"inputs\['rows'\].*too costly"):
            ApprovalOperator(
                task_id="gate", title="Ship", inputs={"rows": Param(DISTINCT_OBJECTS, type="array", uniqueItems=True)}
            )

    def test_a_schema_times_a_value_is_bounded(self) -> None:
        # 300 alternatives for each of 4,000 items, the last one matching: 1.2 million checks, refused.
        alternatives = [*({"type": "string", "minLength": n} for n in range(299)), {"type": "integer"}]
        schema = {"type": "array", "items": {"anyOf": alternatives}}
        form = parse_inputs({"many": {"schema": schema, "value": []}})
        with pytest.raises(InvalidInput, match=r"inputs\.many.*too costly to check"):
            resolve_inputs(form, {"many": [1] * 4000}, approving=True)
        # A large value of a plain schema is well within it.
        plain = parse_inputs({"ids": {"schema": {"type": "array", "items": {"type": "integer"}}, "value": []}})
        assert len(resolve_inputs(plain, {"ids": list(range(20_000))}, approving=True)["ids"]) == 20_000

    def test_a_refusal_quoting_a_large_value_is_priced_too(self) -> None:
        # jsonschema quotes the whole value in each refused branch: 299 of them, a hundred times over,
        # for 72 KB of value took 10 s though few keywords ran.
        alternatives = [*([{"type": "string"}] * 299), {"type": "object"}]
        schema = {"$defs": {"a": {"anyOf": alternatives}}, "allOf": [{"$ref": "#/$defs/a"}] * 100}
        form = {"x": {"schema": schema, "value": None, "required": False}}  # as stored before the budget
        with pytest.raises(InvalidInput, match=r"inputs\.x.*too costly to check"):
            resolve_inputs(form, {"x": {f"key{i:05d}": "v" * 8 for i in range(3000)}}, approving=True)

    def test_one_budget_for_all_the_values_of_a_decision(self) -> None:
        # Each value alone is within the budget; both together are not: the second is named.
        rows = DISTINCT_OBJECTS[:350]
        form = parse_inputs({"a": {"schema": UNIQUE, "value": []}, "b": {"schema": UNIQUE, "value": []}})
        assert resolve_inputs(form, {"a": rows}, approving=True)["a"] == rows
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(form, {"a": rows, "b": rows}, approving=True)
        assert [field for field, _ in err.value.problems] == ["inputs.b"]

    def test_only_the_root_names_a_dialect_so_every_pattern_runs_on_re2(self) -> None:
        nested = {"properties": {"a": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": "^(a+)+$"}}}
        with pytest.raises(InvalidInput, match=r"only the schema's root may name a dialect"):
            parse_inputs({"x": {"schema": nested, "value": {}}})
        # A $ref to a root that names its dialect stays on RE2 too (jsonschema's own class would backtrack for
        # minutes), and so does a form stored before subschemas were refused a dialect.
        rooted = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"a": {"pattern": "^(a+)+$"}, "b": {"$ref": "#"}},
        }
        stored = {"value": None, "schema": nested, "required": True}
        form = {**parse_inputs({"x": {"schema": rooted, "value": {}}}), "y": stored}
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(form, {"x": {"b": {"a": "a" * 64 + "!"}}, "y": {"a": "a" * 64 + "!"}}, approving=True)
        assert all("does not match" in message for _, message in err.value.problems)

    def test_a_long_message_is_clipped_in_the_middle(self) -> None:
        form = parse_inputs({"code": Param(type="string", pattern="^[0-9]+$")})
        with pytest.raises(InvalidInput) as err:
            resolve_inputs(form, {"code": "x" * 50_000}, approving=True)
        [(_, message)] = err.value.problems
        assert len(message) <= MAX_MESSAGE_LENGTH + 3 and message.endswith("does not match '^[0-9]+$'")


class TestManager:
    @pytest.fixture
    def mgr(self, store: ApprovalStore) -> ApprovalManager:
        return ApprovalManager(store=store)

    def _votes(self, store: ApprovalStore, request_id: str) -> int:
        with store.session() as s:
            return s.scalar(select(func.count()).where(ApprovalVoteRow.request_id == request_id)) or 0

    @pytest.mark.postgres
    def test_values_are_checked_while_nobody_holds_the_request(
        self, pg_store: ApprovalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Issue 23: a costly value was checked under the row lock, and another approver's vote waited 15 s.
        mgr = ApprovalManager(store=pg_store)
        created = mgr.create(spec(inputs={"rows": {"schema": UNIQUE, "value": []}}))
        checked: list[dict] = []

        def lock_free_check(form: dict, given: dict | None, *, approving: bool) -> dict:
            if given:
                # Another approver takes the row at once, without waiting: nobody holds it.
                with pg_store.engine.connect() as other:
                    other.execute(
                        text("SELECT id FROM approval_requests WHERE id = :id FOR UPDATE NOWAIT"), {"id": created.id}
                    )
                    other.rollback()
                checked.append(dict(given))
            return resolve_inputs(form, given, approving=approving)

        # Given values are checked by the queries service, before the decision takes the row.
        monkeypatch.setattr(queries_module, "resolve_inputs", lock_free_check)
        done = mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api", inputs={"rows": [1, 2]}))
        assert checked == [{"rows": [1, 2]}]
        assert done.votes[0].inputs == {"rows": [1, 2]}

    def test_form_is_stored_with_the_request(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM))
        assert mgr.queries.get(created.id).inputs == parse_inputs(FORM)

    def test_bad_spec_inputs_are_refused_before_anything_is_written(self, mgr: ApprovalManager) -> None:
        with pytest.raises(InvalidInput, match=r"inputs\['pct'\]"):
            mgr.create(spec(inputs={"pct": Param(0, type="integer", minimum=1)}))
        assert mgr.queries.list()[1] == 0

    def test_approve_with_inputs(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM))
        decided = mgr.decide(
            created.id,
            Decision(action="approve", user=ALICE, source="api", inputs={"ticket": "CHG-7", "rollout_percent": 25}),
        )
        assert decided.state == "approved"
        assert decided.votes[0].inputs == {"rollout_percent": 25, "ticket": "CHG-7", "region": "eu", "note": None}
        summary = decision_summary(decided)
        assert summary["inputs"] == decided.votes[0].inputs
        assert summary["votes"][0]["inputs"] == decided.votes[0].inputs
        vote_event = next(e for e in mgr.audit.events(created.id) if e.event_type == "vote")
        assert vote_event.details["inputs"]["ticket"] == "CHG-7"

    @pytest.mark.parametrize(
        ("inputs", "field"),
        [
            pytest.param({}, "inputs.ticket", id="required-missing"),
            pytest.param({"ticket": "CHG-1", "rollout_percent": 101}, "inputs.rollout_percent", id="over-maximum"),
            pytest.param({"ticket": "CHG-1", "typo": 1}, "inputs.typo", id="unknown-name"),
            pytest.param({"ticket": None}, "inputs.ticket", id="null-not-allowed"),
            pytest.param({"ticket": "CHG\x00"}, "inputs.ticket", id="nul"),
        ],
    )
    def test_bad_inputs_are_refused_and_change_nothing(
        self, mgr: ApprovalManager, store: ApprovalStore, inputs: dict, field: str
    ) -> None:
        created = mgr.create(spec(inputs=FORM))
        with pytest.raises(InvalidInput) as err:
            mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api", inputs=inputs))
        assert err.value.field == field
        assert err.value.status_code == 422
        assert mgr.queries.get(created.id).state == "pending"
        assert self._votes(store, created.id) == 0

    def test_inputs_must_be_an_object(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM))
        with pytest.raises(InvalidInput, match="inputs"):
            mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api", inputs=["CHG-1"]))  # type: ignore[arg-type]

    def test_reject_keeps_valid_inputs_and_requires_none(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM))
        decided = mgr.decide(
            created.id,
            Decision(action="reject", user=ALICE, source="api", reason="not today", inputs={"ticket": "INC-9"}),
        )
        assert decided.state == "rejected"
        assert decided.votes[0].inputs == {"ticket": "INC-9"}
        assert decision_summary(decided)["inputs"] == {"ticket": "INC-9"}

    def test_quorum_decision_carries_the_deciding_vote(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM, required_approvals=2, allowed_approvers=["alice", "bob"]))
        mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api", inputs={"ticket": "A-1"}))
        decided = mgr.decide(created.id, Decision(action="approve", user=BOB, source="api", inputs={"ticket": "B-2"}))
        summary = decision_summary(decided)
        assert summary["inputs"]["ticket"] == "B-2"
        assert [v["inputs"]["ticket"] for v in summary["votes"]] == ["A-1", "B-2"]

    def test_request_without_inputs_refuses_any(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec())
        with pytest.raises(InvalidInput, match=r"inputs\.ticket"):
            mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api", inputs={"ticket": "X"}))
        assert mgr.decide(created.id, Decision(action="approve", user=ALICE, source="api")).votes[0].inputs == {}

    def test_automatic_approval_carries_the_defaults(self, mgr: ApprovalManager) -> None:
        created = mgr.create(spec(inputs=FORM))
        decided = mgr.decide_automatically(created.id, source="auto", comment="auto")
        assert decision_summary(decided)["inputs"] == {"rollout_percent": 10, "region": "eu", "note": None}

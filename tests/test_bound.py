"""Approve exactly this artifact (``bind``): stored, shown, digested, carried by the decision, verified downstream."""

from __future__ import annotations

import hashlib
import json

import pytest

import airflow_hitl
from airflow_hitl import ApprovalMismatch, verify_bound
from airflow_hitl.canonical import content_digest
from airflow_hitl.exceptions import ContentChanged, InvalidApprovalConfig, InvalidInput
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.operators.approval import ApprovalOperator
from airflow_hitl.policy import Principal
from airflow_hitl.records import SHOWN_FIELDS, decision_summary
from tests.helpers import spec

ALICE = Principal.of("alice", ["op"])
SHA = "9f2c" * 16


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_public_api() -> None:
    assert airflow_hitl.__all__ == ["ApprovalMismatch", "__version__", "verify_bound"]


class TestStored:
    def test_bound_values_are_kept_shown_and_digested(self, mgr: ApprovalManager) -> None:
        gate = mgr.create(spec(bound={"model": SHA}))
        item = mgr.queries.get(gate.id).to_dict()
        assert item["bound"] == {"model": SHA}
        shown = {name: item[name] for name in SHOWN_FIELDS} | {"bound": item["bound"]}
        assert item["content_digest"] == content_digest(shown)
        plain = mgr.create(spec()).to_dict()
        assert plain["bound"] == {}
        assert plain["content_digest"] == content_digest({name: plain[name] for name in SHOWN_FIELDS})

    def test_a_decision_on_the_content_without_the_bound_values_is_409(self, mgr: ApprovalManager) -> None:
        gate = mgr.create(spec(bound={"model": SHA}))
        unbound = content_digest({name: gate.to_dict()[name] for name in SHOWN_FIELDS})
        with pytest.raises(ContentChanged) as changed:
            mgr.decide(gate.id, Decision(action="approve", user=ALICE, source="api", content_digest=unbound))
        assert changed.value.status_code == 409
        decided = mgr.decide(
            gate.id, Decision(action="approve", user=ALICE, source="api", content_digest=gate.content_digest)
        )
        assert decision_summary(decided)["bound"] == {"model": sha256(SHA)}

    @pytest.mark.parametrize(
        ("bound", "field"),
        [({"not a name": "x"}, "bind"), ({"model": 3}, "bind['model']"), ({"model": "a\x00b"}, "bind['model']")],
    )
    def test_bad_bound_values_name_the_field(self, mgr: ApprovalManager, bound: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as refused:
            mgr.create(spec(bound=bound))
        assert field in [name for name, _ in refused.value.problems]


class TestVerifyBound:
    def decision(self, mgr: ApprovalManager, **bound: str) -> dict:
        gate = mgr.create(spec(bound=bound))
        return decision_summary(mgr.decide(gate.id, Decision(action="approve", user=ALICE, source="api")))

    def test_the_approved_value_passes_as_dict_or_json(self, mgr: ApprovalManager) -> None:
        decision = self.decision(mgr, model=SHA)
        verify_bound(decision, "model", SHA)
        verify_bound(json.dumps(decision), "model", SHA)

    def test_another_value_is_refused_naming_the_field(self, mgr: ApprovalManager) -> None:
        decision = self.decision(mgr, model=SHA)
        with pytest.raises(ApprovalMismatch, match="bound value 'model' differs") as refused:
            verify_bound(decision, "model", "0" * 64)
        assert refused.value.field == "model"
        with pytest.raises(ApprovalMismatch, match="'data' was not bound"):
            verify_bound(decision, "data", SHA)

    def test_a_rejected_decision_binds_nothing(self, mgr: ApprovalManager) -> None:
        gate = mgr.create(spec(bound={"model": SHA}))
        rejected = mgr.decide(gate.id, Decision(action="reject", user=ALICE, source="api", reason="no"))
        with pytest.raises(ApprovalMismatch, match="was not approved"):
            verify_bound(decision_summary(rejected), "model", SHA)


class TestOperator:
    def test_bind_is_templated_and_reaches_the_spec(self) -> None:
        gate = ApprovalOperator(task_id="g", title="t", bind={"model": "{{ ti.xcom_pull('train') }}"})
        assert "bind" in gate.template_fields
        assert dict(gate._spec(dag_id="d").bound) == {"model": "{{ ti.xcom_pull('train') }}"}

    def test_a_wrong_bind_fails_at_parse_time(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(task_id="g", title="t", bind={"model": 3})
        assert [field for field, _ in err.value.problems] == ["bind['model']"]

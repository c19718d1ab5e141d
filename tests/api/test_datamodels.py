"""Request and response bodies of the REST API (:mod:`airflow_hitl.api.datamodels`), validated directly.

Request bodies refuse unknown fields and values no store can keep, strip white space, and
read their limits from ``[hitl]`` when a body is validated (not at import). The same bodies
through the routes, with every user, are in ``test_bad_input.py`` and ``test_server_errors.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from airflow_hitl.api.datamodels import (
    MAX_BULK_IDS,
    MAX_ID_LENGTH,
    ApproveBody,
    BulkBody,
    CancelBody,
    CreateBody,
    DelegationBody,
    DelegationResponse,
    ErrorResponse,
    RejectBody,
    error_responses,
)
from airflow_hitl.limits import INT32_MAX, MAX_TIMEOUT_SECONDS

CREATE = {"dag_id": "billing", "title": "Load the extract"}


def refused(model: type[BaseModel], body: dict[str, Any]) -> dict[str, str]:
    """The fields ``model`` refuses in ``body``, each with its message."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return {".".join(str(p) for p in error["loc"]) or "body": error["msg"] for error in info.value.errors()}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


class TestEveryRequestBody:
    @pytest.mark.parametrize(
        ("model", "body"),
        [
            (ApproveBody, {}),
            (RejectBody, {"reason": "no"}),
            (CancelBody, {"reason": "gone"}),
            (BulkBody, {"ids": ["a"], "action": "approve"}),
            (CreateBody, CREATE),
            (DelegationBody, {"delegate": "bob", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2026-01-02T00:00Z"}),
        ],
        ids=lambda v: v.__name__ if isinstance(v, type) else "",
    )
    def test_an_unknown_field_is_refused_so_nobody_names_the_actor(self, model: type[BaseModel], body: dict) -> None:
        model.model_validate(body)
        assert "decided_by" in refused(model, {**body, "decided_by": "mallory"})

    @pytest.mark.parametrize(
        ("body", "said"),
        [
            pytest.param({"comment": "a\ud800b"}, "surrogate", id="lone-surrogate"),
            pytest.param({"comment": "a\x00b"}, "NUL", id="nul"),
            pytest.param({"metadata": {"x": float("nan")}}, "NaN", id="nan"),
        ],
    )
    def test_values_no_store_can_keep_are_refused(self, body: dict[str, Any], said: str) -> None:
        [(_, message)] = refused(ApproveBody, body).items()
        assert said.lower() in message.lower(), message

    def test_text_is_stripped_and_a_blank_comment_is_none(self) -> None:
        body = RejectBody.model_validate({"reason": "  too risky  ", "comment": "   "})
        assert (body.reason, body.comment) == ("too risky", None)
        assert ApproveBody.model_validate({"comment": ""}).comment is None


class TestLimitsFromConfig:
    def test_the_comment_limit_is_read_when_a_body_is_validated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_COMMENT_LENGTH", "10")
        assert ApproveBody.model_validate({"comment": "x" * 10}).comment == "x" * 10
        assert refused(ApproveBody, {"comment": "x" * 11}) == {
            "comment": "Value error, must be at most 10 characters (`[hitl] max_comment_length`)"
        }
        assert "reason" in refused(RejectBody, {"reason": "x" * 11})
        monkeypatch.setenv("AIRFLOW__HITL__MAX_COMMENT_LENGTH", "20")
        assert RejectBody.model_validate({"reason": "x" * 11}).reason == "x" * 11

    def test_the_openapi_schema_documents_the_configured_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_COMMENT_LENGTH", "123")
        assert RejectBody.model_json_schema()["properties"]["reason"]["maxLength"] == 123

    def test_json_depth_and_size_follow_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HITL__MAX_JSON_DEPTH", "3")
        assert ApproveBody.model_validate({"metadata": _nested(3)}).metadata == _nested(3)
        assert "metadata" in refused(ApproveBody, {"metadata": _nested(4)})
        assert "inputs" in refused(ApproveBody, {"inputs": _nested(4)})
        assert "context" in refused(CreateBody, {**CREATE, "context": _nested(4)})
        monkeypatch.setenv("AIRFLOW__HITL__MAX_JSON_BYTES", "50")
        assert "metadata" in refused(ApproveBody, {"metadata": {"notes": "x" * 60}})


class TestRejectAndCancel:
    @pytest.mark.parametrize("model", [RejectBody, CancelBody])
    def test_a_reason_is_required_and_not_blank(self, model: type[BaseModel]) -> None:
        assert refused(model, {})["reason"] == "Field required"
        assert refused(model, {"reason": "  "})["reason"] == "Value error, must not be blank"


class TestBulk:
    def test_approve_needs_no_reason_and_reject_and_cancel_do(self) -> None:
        assert BulkBody.model_validate({"ids": ["a"], "action": "approve"}).reason is None
        for action in ("reject", "cancel"):
            [(_, message)] = refused(BulkBody, {"ids": ["a"], "action": action, "reason": " "}).items()
            assert f"`reason` is required to {action}" in message

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            pytest.param({"ids": [], "action": "approve"}, "ids", id="no-ids"),
            pytest.param({"ids": ["a"] * (MAX_BULK_IDS + 1), "action": "approve"}, "ids", id="too-many-ids"),
            pytest.param({"ids": ["a" * (MAX_ID_LENGTH + 1)], "action": "approve"}, "ids.0", id="id-too-long"),
            pytest.param({"ids": ["a"], "action": "escalate"}, "action", id="unknown-action"),
        ],
    )
    def test_bounds(self, body: dict[str, Any], field: str) -> None:
        assert field in refused(BulkBody, body)

    def test_the_largest_call_is_accepted(self) -> None:
        body = BulkBody.model_validate({"ids": ["a" * MAX_ID_LENGTH] * MAX_BULK_IDS, "action": "approve"})
        assert len(body.ids) == MAX_BULK_IDS


class TestCreate:
    def test_defaults(self) -> None:
        body = CreateBody.model_validate(CREATE)
        assert (body.map_index, body.required_approvals, body.on_reject) == (-1, 1, "fail")
        assert (body.allowed_approvers, body.allowed_roles, body.context, body.escalate_to) == ([], [], {}, [])
        assert body.allow_self_approval is False and body.require_all is False

    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            pytest.param({"dag_id": " "}, "dag_id", id="blank-dag"),
            pytest.param({"title": ""}, "title", id="blank-title"),
            pytest.param({"title": "t" * 501}, "title", id="title-too-long"),
            pytest.param({"map_index": -2}, "map_index", id="map-index-below"),
            pytest.param({"map_index": INT32_MAX + 1}, "map_index", id="map-index-above"),
            pytest.param({"timeout_seconds": 0}, "timeout_seconds", id="timeout-zero"),
            pytest.param({"timeout_seconds": MAX_TIMEOUT_SECONDS + 1}, "timeout_seconds", id="timeout-too-long"),
            pytest.param({"required_approvals": 0}, "required_approvals", id="quorum-zero"),
            pytest.param({"allowed_approvers": ["  "]}, "allowed_approvers.0", id="blank-approver"),
            pytest.param({"allowed_roles": ["r" * 251]}, "allowed_roles.0", id="role-too-long"),
            pytest.param({"on_reject": "retry"}, "on_reject", id="unknown-on-reject"),
            pytest.param({"try_number": 1}, "try_number", id="try-number-is-the-operators"),
            pytest.param({"origin": "task"}, "origin", id="origin-is-the-callers"),
            pytest.param(
                {"escalate_to": [{"approvers": ["a"], "timeout_seconds": 60}] * 21}, "escalate_to", id="21-levels"
            ),
            pytest.param(
                {"escalate_to": [{"approvers": ["a"], "timeout_seconds": -1}]},
                "escalate_to.0.timeout_seconds",
                id="level-timeout",
            ),
        ],
    )
    def test_bounds(self, extra: dict[str, Any], field: str) -> None:
        assert field in refused(CreateBody, {**CREATE, **extra})

    @pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
    def test_a_number_that_is_not_finite_is_refused_naming_its_field(self, number: float) -> None:
        finite = "Value error, numbers must be finite (no NaN or Infinity)"
        assert refused(CreateBody, {**CREATE, "timeout_seconds": number}) == {"timeout_seconds": finite}
        assert refused(CreateBody, {**CREATE, "context": {"rows": [1, number]}}) == {"context": finite}
        level = {"approvers": ["a"], "timeout_seconds": number}
        assert refused(CreateBody, {**CREATE, "escalate_to": [level]}) == {"escalate_to": finite}

    def test_names_are_stripped(self) -> None:
        body = CreateBody.model_validate({**CREATE, "allowed_approvers": [" alice "], "allowed_roles": ["ops "]})
        assert (body.allowed_approvers, body.allowed_roles) == (["alice"], ["ops"])


class TestDelegationBodies:
    def test_a_period_with_its_zone(self) -> None:
        body = DelegationBody.model_validate(
            {"delegate": " bob ", "starts_at": "2026-01-01T08:00:00+01:00", "ends_at": "2026-01-02T00:00:00Z"}
        )
        assert body.delegate == "bob"
        assert body.starts_at == dt.datetime(2026, 1, 1, 7, tzinfo=dt.timezone.utc)
        assert body.dag_ids is None and body.delegator is None

    def test_an_empty_dag_list_is_refused_omitted_means_every_dag(self) -> None:
        period = {"delegate": "bob", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2026-01-02T00:00:00Z"}
        assert "dag_ids" in refused(DelegationBody, {**period, "dag_ids": []})

    def test_a_response_knows_only_the_four_states(self) -> None:
        answer = {
            "id": "d-1",
            "delegator": "alice",
            "delegate": "bob",
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2026-01-02T00:00:00Z",
            "created_by": "alice",
            "created_at": "2026-01-01T00:00:00Z",
        }
        for state in ("scheduled", "active", "expired", "ended"):
            assert DelegationResponse.model_validate({**answer, "state": state, "future": 1}).state == state
        assert "state" in refused(DelegationResponse, {**answer, "state": "paused"})


class TestErrorResponses:
    def test_each_status_has_the_error_body_and_its_description(self) -> None:
        responses = error_responses(401, 403, 404, 409, 413, 422, 503)
        assert list(responses) == [401, 403, 404, 409, 413, 422, 503]
        assert all(entry["model"] is ErrorResponse and entry["description"] for entry in responses.values())
        assert set(responses[503]["headers"]) == {"Retry-After"}
        assert all("headers" not in responses[code] for code in (401, 403, 404, 409, 413, 422))

    def test_each_call_is_a_fresh_dict(self) -> None:
        # A route may change its own copy (delegations say "No delegation with this id.").
        first = error_responses(404)
        first[404]["description"] = "changed"
        assert error_responses(404)[404]["description"] == "No approval request with this id."

    def test_an_undeclared_status_is_refused(self) -> None:
        with pytest.raises(KeyError):
            error_responses(418)

    def test_the_error_body_is_text_or_field_errors(self) -> None:
        assert ErrorResponse.model_validate({"detail": "nope"}).detail == "nope"
        field_error = {"loc": ["body", "reason"], "msg": "m", "type": "t", "ctx": {}}
        parsed = ErrorResponse.model_validate({"detail": [field_error]})
        assert not isinstance(parsed.detail, str)
        assert parsed.detail[0].loc == ["body", "reason"]

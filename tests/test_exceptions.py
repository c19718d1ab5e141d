"""exceptions: the messages that name every wrong field, and the HTTP status each error answers with."""

from __future__ import annotations

import pytest

from airflow_hitl.exceptions import (
    AlreadyVoted,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalNotPending,
    HitlError,
    InvalidApprovalConfig,
    InvalidInput,
    LinkAlreadyUsed,
    NotAllowed,
    StoreError,
    StoreOutcomeUnknown,
    StoreSchemaError,
    StoreUnavailable,
)


class TestInvalidInput:
    def test_one_problem_names_its_field(self) -> None:
        err = InvalidInput("title", "is required")
        assert str(err) == "invalid `title`: is required"
        assert (err.field, err.message, err.problems) == ("title", "is required", [("title", "is required")])

    def test_where_says_which_gate(self) -> None:
        err = InvalidInput("title", "is required", where="in task 'gate'")
        assert str(err) == "invalid `title` in task 'gate': is required"

    def test_every_problem_at_once(self) -> None:
        err = InvalidApprovalConfig.of([("title", "is required"), ("timeout", "must be positive")], where="of 'gate'")
        assert type(err) is InvalidApprovalConfig
        assert (err.field, err.message) == ("title", "is required")  # the first, for callers that show one
        assert str(err) == (
            "ApprovalOperator: invalid options of 'gate' (2 problems):\n"
            "  - `title`: is required\n"
            "  - `timeout`: must be positive"
        )

    def test_one_problem_through_of_reads_as_one(self) -> None:
        assert (
            str(InvalidApprovalConfig.of([("dag_id", "is required")]))
            == "ApprovalOperator: invalid `dag_id`: is required"
        )

    def test_it_is_a_value_error(self) -> None:
        # Code that validates with ValueError (Airflow's own, plain Python) catches ours too.
        with pytest.raises(ValueError):
            raise InvalidApprovalConfig("title", "is required")


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        pytest.param(InvalidInput("limit", "must be positive"), 422, "invalid `limit`: must be positive", id="invalid"),
        pytest.param(ApprovalNotFound("r1"), 404, "approval request 'r1' not found", id="not-found"),
        pytest.param(
            ApprovalNotPending("r1", "approved"), 409, "approval request r1 is approved, not pending", id="np"
        ),
        pytest.param(ApprovalNotPending("r1", "pending", "r1 has expired"), 409, "r1 has expired", id="np-detail"),
        pytest.param(
            AlreadyVoted("r1", "alice"), 409, "user 'alice' has already voted on approval request r1", id="av"
        ),
        pytest.param(NotAllowed("only ops may approve"), 403, "only ops may approve", id="not-allowed"),
        pytest.param(LinkAlreadyUsed("n1"), 410, "this link has already been used", id="link-used"),
        pytest.param(StoreSchemaError("run airflow hitl db migrate"), 503, "run airflow hitl db migrate", id="schema"),
        pytest.param(StoreUnavailable("down"), 503, "down", id="unavailable"),
        pytest.param(StoreOutcomeUnknown("lost while committing"), 503, "lost while committing", id="unknown"),
    ],
)
def test_status_and_message(error: HitlError, status: int, text: str) -> None:
    assert error.status_code == status
    assert str(error) == text


def test_the_families_callers_catch() -> None:
    # A retry loop catches StoreUnavailable; an outcome-unknown commit must not look like a plain
    # failure to anyone catching StoreError, and the conflicts share their 409.
    assert issubclass(StoreOutcomeUnknown, StoreUnavailable)
    assert issubclass(StoreUnavailable, StoreError)
    assert issubclass(StoreSchemaError, StoreError)
    assert not issubclass(StoreSchemaError, StoreUnavailable)  # retrying will not fix a schema
    assert issubclass(ApprovalNotPending, ApprovalConflict)
    assert issubclass(AlreadyVoted, ApprovalConflict)
    assert StoreUnavailable("down").retry_after == 5
    assert (ApprovalNotFound("r1").request_id, NotAllowed("no").reason) == ("r1", "no")

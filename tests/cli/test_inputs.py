"""``approvals approve --input NAME=VALUE``: the form inputs of a request from the command line.

Sent to the real api-server app (``served_api``) as the REST API's ``inputs``: the api-server
checks them against the request's form exactly as for any REST call.
"""

from __future__ import annotations

import pytest
from airflow.sdk import Param

from airflow_hitl.manager import ApprovalManager
from tests.cli.conftest import ServedApi
from tests.cli.test_approvals import cli, cli_error
from tests.helpers import spec

FORM = {"rollout_percent": Param(10, type="integer", minimum=1, maximum=100), "ticket": Param(type="string")}


@pytest.fixture(autouse=True)
def _alice(monkeypatch: pytest.MonkeyPatch, served_api: ServedApi) -> None:
    monkeypatch.setenv("AIRFLOW_HITL_TOKEN", served_api.token("alice"))


def test_approve_with_inputs(
    capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
) -> None:
    approval = api_store.create(spec(inputs=FORM))
    out = cli(
        capsys, "approvals", "approve", approval.id, "--api-url", served_api.url,
        "--input", "rollout_percent=25", "--input", "ticket=CHG-1",
    )  # fmt: skip
    assert "approved" in out
    assert api_store.queries.get(approval.id).votes[0].inputs == {"rollout_percent": 25, "ticket": "CHG-1"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        pytest.param([], "inputs.ticket", id="required-missing"),
        pytest.param(["--input", "ticket=X", "--input", "rollout_percent=500"], "inputs.rollout_percent", id="bad"),
        pytest.param(["--input", "ticket"], "NAME=VALUE", id="not-a-pair"),
    ],
)
def test_refused_inputs_are_an_error_naming_the_field(
    capsys: pytest.CaptureFixture[str],
    api_store: ApprovalManager,
    served_api: ServedApi,
    extra: list[str],
    named: str,
) -> None:
    approval = api_store.create(spec(inputs=FORM))
    message = cli_error(capsys, "approvals", "approve", approval.id, "--api-url", served_api.url, *extra)
    assert named in message
    assert api_store.queries.get(approval.id).state == "pending" and not api_store.queries.get(approval.id).votes


def test_reject_keeps_the_inputs_given_with_it(
    capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
) -> None:
    approval = api_store.create(spec(inputs=FORM))
    out = cli(
        capsys, "approvals", "reject", approval.id, "--api-url", served_api.url,
        "--reason", "wrong ticket", "--input", "ticket=CHG-2",
    )  # fmt: skip
    assert "rejected" in out
    vote = api_store.queries.get(approval.id).votes[0]
    assert (vote.vote, vote.inputs["ticket"]) == ("reject", "CHG-2")


def test_a_value_nested_past_any_parser_is_text_the_form_refuses(
    capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
) -> None:
    approval = api_store.create(spec(inputs=FORM))
    message = cli_error(
        capsys, "approvals", "approve", approval.id, "--api-url", served_api.url,
        "--input", "ticket=CHG-1", "--input", "rollout_percent=" + "[" * 5000,
    )  # fmt: skip
    assert "inputs.rollout_percent" in message
    assert not api_store.queries.get(approval.id).votes


class TestWhatTheApproverSaw:
    """``show`` prints the request's content digest; ``--content-digest`` decides only that content."""

    def test_show_prints_the_digest_reason_and_approvers(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec(reason="quarterly release", allowed_approvers=["alice", "bob"]))
        out = cli(capsys, "approvals", "show", approval.id, "--api-url", served_api.url, "--output", "plain")
        assert approval.content_digest in out
        assert "quarterly release" in out and "alice, bob" in out

    def test_the_digest_shown_decides(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec())
        cli(capsys, "approvals", "approve", approval.id, "--api-url", served_api.url,
            "--content-digest", approval.content_digest)  # fmt: skip
        vote = api_store.queries.get(approval.id).votes[0]
        assert (vote.user, vote.content_digest) == ("alice", approval.content_digest)

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_a_digest_of_other_content_is_a_conflict_and_records_nothing(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, action: str
    ) -> None:
        approval = api_store.create(spec())
        other = api_store.create(spec(title="another gate"))
        reason = ["--reason", "no"] if action == "reject" else []
        message = cli_error(
            capsys, "approvals", action, approval.id, "--api-url", served_api.url,
            *reason, "--content-digest", other.content_digest,
        )  # fmt: skip
        assert "409" in message and "changed since you opened it" in message
        assert api_store.queries.get(approval.id).votes == () and api_store.queries.get(approval.id).state == "pending"

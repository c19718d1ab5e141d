"""``approvals approve --input NAME=VALUE``: the form inputs of a request from the command line."""

from __future__ import annotations

import pytest
from airflow.sdk import Param

from airflow_hitl.manager import ApprovalManager
from tests.cli.test_approvals import cli, cli_error
from tests.helpers import spec

FORM = {"rollout_percent": Param(10, type="integer", minimum=1, maximum=100), "ticket": Param(type="string")}


def test_approve_with_inputs(capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
    approval = manager.create(spec(inputs=FORM))
    out = cli(
        capsys, manager, "approvals", "approve", approval.id, "--user", "alice",
        "--input", "rollout_percent=25", "--input", "ticket=CHG-1",
    )  # fmt: skip
    assert "approved" in out
    assert manager.get(approval.id).votes[0].inputs == {"rollout_percent": 25, "ticket": "CHG-1"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        pytest.param([], "inputs.ticket", id="required-missing"),
        pytest.param(["--input", "ticket=X", "--input", "rollout_percent=500"], "inputs.rollout_percent", id="bad"),
        pytest.param(["--input", "ticket"], "NAME=VALUE", id="not-a-pair"),
    ],
)
def test_refused_inputs_are_an_error_naming_the_field(
    capsys: pytest.CaptureFixture[str], manager: ApprovalManager, extra: list[str], named: str
) -> None:
    approval = manager.create(spec(inputs=FORM))
    message = cli_error(capsys, manager, "approvals", "approve", approval.id, "--user", "alice", *extra)
    assert named in message
    assert manager.get(approval.id).state == "pending" and not manager.get(approval.id).votes

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
    assert api_store.get(approval.id).votes[0].inputs == {"rollout_percent": 25, "ticket": "CHG-1"}


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
    assert api_store.get(approval.id).state == "pending" and not api_store.get(approval.id).votes

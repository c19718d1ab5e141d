"""`airflow-hitl approvals ...`: list, show and decide from the command line, on SQLite and PostgreSQL.

The console script's ``main()`` runs in-process against the real store (the ``store``
fixture); ``tests/cli/test_commands.py`` runs both CLIs as subprocesses.
"""

from __future__ import annotations

import getpass
import json

import pytest
import yaml

from airflow_hitl.cli.__main__ import main
from airflow_hitl.manager import ApprovalManager
from tests.helpers import spec


def cli(capsys: pytest.CaptureFixture[str], manager: ApprovalManager, *argv: str) -> str:
    """Run ``airflow-hitl <argv> --store-url <the test store>`` and return its stdout."""
    main([*argv, "--store-url", manager.store.url])
    return capsys.readouterr().out


def cli_error(capsys: pytest.CaptureFixture[str], manager: ApprovalManager, *argv: str) -> str:
    """Run a command that must fail; return its message."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--store-url", manager.store.url])
    assert exit_info.value.code not in (0, None)
    return str(exit_info.value.code)


class TestList:
    def test_filters_and_formats(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        waiting = manager.create(spec(dag_id="release", title="Ship it"))
        other = manager.create(spec(dag_id="cleanup"))
        manager.cancel(other.id, actor="admin", reason="not needed")

        rows = json.loads(cli(capsys, manager, "approvals", "list", "--output", "json"))
        assert {r["id"] for r in rows} == {waiting.id, other.id}

        pending = json.loads(cli(capsys, manager, "approvals", "list", "--state", "pending", "-o", "json"))
        assert [(r["id"], r["dag_id"], r["state"], r["approvals"]) for r in pending] == [
            (waiting.id, "release", "pending", "0/1")
        ]
        by_dag = yaml.safe_load(cli(capsys, manager, "approvals", "list", "--dag-id", "cleanup", "-o", "yaml"))
        assert [(r["id"], r["state"]) for r in by_dag] == [(other.id, "cancelled")]

        table = cli(capsys, manager, "approvals", "list", "--state", "pending")
        assert waiting.id in table and "Ship it" in table and other.id not in table
        assert "No data found" in cli(capsys, manager, "approvals", "list", "--dag-id", "nothing-here")

    def test_an_unknown_state_is_an_error_naming_it(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        assert "state" in cli_error(capsys, manager, "approvals", "list", "--state", "nonsense")


class TestShow:
    def test_every_field_and_the_votes(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        approval = manager.create(spec(required_approvals=2, description="new model"))
        cli(capsys, manager, "approvals", "approve", approval.id, "--user", "alice", "--comment", "fine")
        shown = json.loads(cli(capsys, manager, "approvals", "show", approval.id, "-o", "json"))
        assert isinstance(shown, list) and len(shown) == 1
        assert shown[0]["id"] == approval.id and shown[0]["description"] == "new model"
        assert [(v["user"], v["vote"], v["source"], v["comment"]) for v in shown[0]["votes"]] == [
            ("alice", "approve", "cli", "fine")
        ]
        table = cli(capsys, manager, "approvals", "show", approval.id)
        assert "alice approve via cli: fine" in table and "1/2" in table

    @pytest.mark.parametrize(
        ("approval_id", "message"),
        [("00000000-0000-0000-0000-000000000000", "not found"), ("not-a-uuid", "not a valid approval id")],
        ids=["unknown", "malformed"],
    )
    def test_a_bad_id_is_an_error(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager, approval_id: str, message: str
    ) -> None:
        assert message in cli_error(capsys, manager, "approvals", "show", approval_id)


class TestDecide:
    def test_self_approval_is_refused_then_another_user_approves(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        approval = manager.create(spec(requested_by="ricky"))
        message = cli_error(capsys, manager, "approvals", "approve", approval.id, "--user", "ricky")
        assert "cannot approve it yourself" in message
        assert manager.get(approval.id).state == "pending"
        assert manager.get(approval.id).votes == ()

        out = cli(capsys, manager, "approvals", "approve", approval.id, "--user", "alice", "--comment", "lgtm")
        assert f"approval request {approval.id} (release): approved, 1 of 1 approvals" in out
        decided = manager.get(approval.id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("approved", "alice", "cli")
        vote_event = next(e for e in manager.events(approval.id) if e.event_type == "vote")
        assert (vote_event.actor, vote_event.source, vote_event.comment) == ("alice", "cli", "lgtm")
        assert vote_event.details["os_user"] == getpass.getuser()
        assert vote_event.details["hostname"]
        assert manager.verify_audit_chain().ok

    def test_reject_needs_a_reason(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        assert "reason" in cli_error(capsys, manager, "approvals", "reject", approval.id, "--user", "alice")
        assert manager.get(approval.id).state == "pending"
        cli(capsys, manager, "approvals", "reject", approval.id, "--user", "ricky", "--reason", "metrics dropped")
        rejected = manager.get(approval.id)
        assert (rejected.state, rejected.decided_by, rejected.decision_source) == ("rejected", "ricky", "cli")
        assert "metrics dropped" in (rejected.comment or "")

    def test_cancel_records_the_user_and_the_os_user(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        approval = manager.create(spec())
        assert "reason" in cli_error(capsys, manager, "approvals", "cancel", approval.id, "--user", "admin")
        cli(capsys, manager, "approvals", "cancel", approval.id, "--user", "admin", "--reason", "superseded")
        cancelled = manager.get(approval.id)
        assert (cancelled.state, cancelled.decided_by) == ("cancelled", "admin")
        event = manager.events(approval.id)[-1]
        assert (event.actor, event.source, event.details["os_user"]) == ("admin", "cli", getpass.getuser())
        # A decided request cannot be decided again.
        assert "not pending" in cli_error(capsys, manager, "approvals", "approve", approval.id, "--user", "alice")

    def test_roles_come_from_role_options(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        approval = manager.create(spec(allowed_roles=["ml-leads"]))
        assert "not" in cli_error(capsys, manager, "approvals", "approve", approval.id, "--user", "carol")
        cli(
            capsys,
            manager,
            "approvals",
            "approve",
            approval.id,
            "--user",
            "carol",
            "--role",
            "viewer",
            "--role",
            "ml-leads",
        )
        assert manager.get(approval.id).votes[0].user_roles == ("ml-leads", "viewer")
        assert manager.get(approval.id).state == "approved"

    def test_roles_default_to_simple_auth_manager_users(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "dave:ml-leads,erin:viewer")
        approval = manager.create(spec(allowed_roles=["ml-leads"]))
        assert "not" in cli_error(capsys, manager, "approvals", "approve", approval.id, "--user", "erin")
        cli(capsys, manager, "approvals", "approve", approval.id, "--user", "dave")
        assert manager.get(approval.id).decided_by == "dave"

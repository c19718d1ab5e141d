"""`airflow-hitl approvals ...`: list, show and decide from the command line, on SQLite and PostgreSQL.

The console script's ``main()`` runs in-process. ``list`` and ``show`` read the store (the
``store`` fixture) or, given an api-server or a token, the REST API. Decisions go to Airflow's
real api-server app served on loopback (``served_api`` of tests/cli/conftest.py) with real
tokens of its SimpleAuthManager users: the api-server decides as the token's user (source
``cli``); nothing is decided as a name typed on the command line. The one decision that
goes straight to the store is a break-glass cancel. ``tests/cli/test_commands.py`` runs
both CLIs as subprocesses.
"""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import make_url, text

from airflow_hitl.cli.__main__ import main
from airflow_hitl.exceptions import NotAllowed
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.vocabulary import Source
from tests.airflow_api import snapshot
from tests.cli.conftest import ServedApi, resigned
from tests.e2e.harness import free_port
from tests.helpers import Clock, spec

#: What a refused decision tells the caller to do about their identity.
TOKEN_HINT = "set AIRFLOW_HITL_TOKEN, --token-file or --username"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``airflow-hitl <argv>`` and return its stdout."""
    main(list(argv))
    return capsys.readouterr().out


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail; return its message, which is one line (exit status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    message = exit_info.value.code
    assert isinstance(message, str), message  # SystemExit(str): one line on stderr, exit status 1
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


def on_store(manager: ApprovalManager) -> tuple[str, str]:
    return ("--store-url", manager.store.url)


def decide(served: ServedApi, *argv: str) -> tuple[str, ...]:
    """``argv`` sent to the served api-server."""
    return (*argv, "--api-url", served.url)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch, served_api: ServedApi) -> Callable[..., None]:
    """Set ``AIRFLOW_HITL_TOKEN`` to a user's real token (or to any text)."""

    def use(user: str | None = None, *, token: str | None = None) -> None:
        monkeypatch.setenv("AIRFLOW_HITL_TOKEN", token if token is not None else served_api.token(user or ""))

    return use


def escalated_request(manager: ApprovalManager, clock: Clock) -> str:
    """A request with a reason, a context, approvers and roles, one vote, escalated to its first level."""
    approval = manager.create(
        spec(
            reason="monthly retraining",
            context={"accuracy": 0.93, "notes": "n" * 200, "metrics": {"auc": 0.9, "f1": 0.8}},
            allowed_approvers=["bob"],
            allowed_roles=["Op"],
            required_approvals=2,
            timeout=dt.timedelta(minutes=10),
            timeout_action="escalate",
            escalation_targets=[
                EscalationLevel(approvers=("carol",), roles=("Admin",), timeout=dt.timedelta(minutes=30)),
                EscalationLevel(approvers=("dave",), timeout=dt.timedelta(hours=1)),
            ],
            escalation_final_action="reject",
        )
    )
    manager.approve(approval.id, user=Principal.of("bob"), comment="looks right", source="cli")
    clock.advance(minutes=10)
    assert manager.apply_timeout(approval.id).escalated
    return approval.id


def assert_shows_reason_context_and_deciders(table: str, plain: str) -> None:
    """What ``show`` prints of :func:`escalated_request`, in a table and in plain output."""
    rows = {line.split("|")[0].strip(): line for line in table.splitlines() if "|" in line}
    assert "monthly retraining" in rows["reason"]
    # The context, one key a line, the long value cut (json and yaml carry it whole).
    cut = "notes: " + "n" * 59 + "\N{HORIZONTAL ELLIPSIS}"
    for shown in ("accuracy: 0.93", cut, "metrics: {"):
        assert shown in table, table
    [metrics] = [line for line in table.splitlines() if "metrics: {" in line]
    assert '"auc": 0.9' in metrics and '"f1": 0.8' in metrics  # PostgreSQL's JSONB orders keys its way
    assert "n" * 60 not in table
    assert "bob, carol; roles Op, Admin" in rows["who_decides"]
    assert "level 1 of 2, added carol, role Admin; next adds dave when it expires" in rows["escalation"]
    assert "bob" in rows["approved_by"] and "bob approve via cli: looks right" in rows["votes"]
    assert "1/2" in rows["approvals"]
    # One line in plain output, for grep.
    [context] = [line for line in plain.splitlines() if "accuracy: 0.93" in line]
    assert context.split()[0] == "context" and cut in context and "metrics: {" in context
    assert context.count("; ") == 2


class TestListFromTheStore:
    def test_filters_and_formats(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        waiting = manager.create(spec(dag_id="release", title="Ship it"))
        other = manager.create(spec(dag_id="cleanup"))
        manager.cancel(other.id, actor="admin", reason="not needed")
        store = on_store(manager)

        rows = json.loads(cli(capsys, "approvals", "list", "--output", "json", *store))
        assert {r["id"] for r in rows} == {waiting.id, other.id}

        pending = json.loads(cli(capsys, "approvals", "list", "--state", "pending", "-o", "json", *store))
        assert [(r["id"], r["dag_id"], r["state"], r["approvals"]) for r in pending] == [
            (waiting.id, "release", "pending", "0/1")
        ]
        by_dag = yaml.safe_load(cli(capsys, "approvals", "list", "--dag-id", "cleanup", "-o", "yaml", *store))
        assert [(r["id"], r["state"]) for r in by_dag] == [(other.id, "cancelled")]

        table = cli(capsys, "approvals", "list", "--state", "pending", *store)
        assert waiting.id in table and "Ship it" in table and other.id not in table
        assert "No data found" in cli(capsys, "approvals", "list", "--dag-id", "nothing-here", *store)

    def test_a_command_leaves_no_connection_open(
        self, capsys: pytest.CaptureFixture[str], pg_store: ApprovalStore
    ) -> None:
        manager = ApprovalManager(store=pg_store)
        waiting = manager.create(spec(dag_id="release"))
        application = f"hitl-cli-test-{uuid.uuid4().hex[:8]}"
        url = make_url(pg_store.url).update_query_dict({"application_name": application}).render_as_string(False)

        def connections() -> int:
            with pg_store.engine.connect() as conn:
                query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
                return int(conn.execute(text(query), {"name": application}).scalar_one())

        assert waiting.id in cli(capsys, "approvals", "list", "--store-url", url)
        assert "error: " in cli_error(capsys, "approvals", "show", "no-such-id", "--store-url", url)
        assert connections() == 0

    def test_an_unknown_state_is_an_error_naming_it(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        assert "state" in cli_error(capsys, "approvals", "list", "--state", "nonsense", *on_store(manager))


class TestShowFromTheStore:
    def test_every_field_and_the_votes(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        approval = manager.create(spec(required_approvals=2, description="new model"))
        manager.approve(approval.id, user=Principal.of("alice"), comment="fine", source="cli")
        shown = json.loads(cli(capsys, "approvals", "show", approval.id, "-o", "json", *on_store(manager)))
        assert isinstance(shown, list) and len(shown) == 1
        assert shown[0]["id"] == approval.id and shown[0]["description"] == "new model"
        assert [(v["user"], v["vote"], v["source"], v["comment"]) for v in shown[0]["votes"]] == [
            ("alice", "approve", "cli", "fine")
        ]
        table = cli(capsys, "approvals", "show", approval.id, *on_store(manager))
        assert "alice approve via cli: fine" in table and "1/2" in table

    def test_reason_context_and_who_decides(
        self, capsys: pytest.CaptureFixture[str], mgr: ApprovalManager, clock: Clock
    ) -> None:
        approval_id = escalated_request(mgr, clock)
        table = cli(capsys, "approvals", "show", approval_id, *on_store(mgr))
        plain = cli(capsys, "approvals", "show", approval_id, "-o", "plain", *on_store(mgr))
        assert_shows_reason_context_and_deciders(table, plain)
        shown = json.loads(cli(capsys, "approvals", "show", approval_id, "-o", "json", *on_store(mgr)))
        assert shown[0]["context"]["notes"] == "n" * 200  # json is the item as it is

    @pytest.mark.parametrize(
        ("approval_id", "message"),
        [("00000000-0000-0000-0000-000000000000", "not found"), ("not-a-uuid", "not a valid approval id")],
        ids=["unknown", "malformed"],
    )
    def test_a_bad_id_is_an_error(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager, approval_id: str, message: str
    ) -> None:
        assert message in cli_error(capsys, "approvals", "show", approval_id, *on_store(manager))


class TestReadThroughTheApi:
    def test_list_and_show_as_the_tokens_user(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        waiting = api_store.create(spec(dag_id="release", title="Ship it", required_approvals=2))
        api_store.approve(waiting.id, user=Principal.of("alice"), comment="fine", source="cli")
        as_user("viewer")  # may read every DAG, decide none
        rows = json.loads(cli(capsys, "approvals", "list", "--api-url", served_api.url, "-o", "json"))
        assert [(r["id"], r["title"], r["approvals"]) for r in rows] == [(waiting.id, "Ship it", "1/2")]
        shown = json.loads(cli(capsys, "approvals", "show", waiting.id, "--api-url", served_api.url, "-o", "json"))
        # The API's item, with what the caller may do (Airflow's console prints every value as text).
        assert (shown[0]["id"], shown[0]["can_approve"]) == (waiting.id, "False")
        table = cli(capsys, "approvals", "show", waiting.id, "--api-url", served_api.url)
        assert "alice approve via cli: fine" in table

        as_user("nobody")  # may read no DAG: the API shows them nothing
        assert json.loads(cli(capsys, "approvals", "list", "--api-url", served_api.url, "-o", "json")) == []
        assert "403" in cli_error(capsys, "approvals", "show", waiting.id, "--api-url", served_api.url)

    def test_show_has_the_reason_context_and_who_decides(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        clock = Clock()
        approval_id = escalated_request(ApprovalManager(store=api_store.store, clock=clock), clock)
        as_user("viewer")
        table = cli(capsys, "approvals", "show", approval_id, "--api-url", served_api.url)
        plain = cli(capsys, "approvals", "show", approval_id, "--api-url", served_api.url, "-o", "plain")
        assert_shows_reason_context_and_deciders(table, plain)

    def test_a_token_in_the_environment_reads_through_the_configured_api_server(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        as_user,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        waiting = api_store.create(spec())
        monkeypatch.setenv("AIRFLOW__HITL__BASE_URL", served_api.url)
        as_user("viewer")
        rows = json.loads(cli(capsys, "approvals", "list", "-o", "json"))
        assert [r["id"] for r in rows] == [waiting.id]

    def test_the_api_server_and_the_store_together_are_an_error(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        message = cli_error(
            capsys, "approvals", "list", "--api-url", "http://127.0.0.1:9", "--store-url", manager.store.url
        )
        assert "--api-url" in message and "--store-url" in message


class TestDecideThroughTheApi:
    """Every decision is the api-server's, made as the Airflow user of the caller's token."""

    def test_approve_as_the_tokens_user_with_source_cli(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        approval = api_store.create(spec(requested_by="ricky"))
        as_user("alice")
        out = cli(capsys, *decide(served_api, "approvals", "approve", approval.id, "--comment", "lgtm"))
        assert f"approval request {approval.id} (release): approved, 1 of 1 approvals" in out
        decided = api_store.queries.get(approval.id)
        assert (decided.state, decided.decided_by, decided.decision_source) == ("approved", "alice", "cli")
        assert [(v.user, v.source, v.user_roles, v.comment) for v in decided.votes] == [
            ("alice", "cli", ("user",), "lgtm")
        ]
        vote_event = next(e for e in api_store.audit.events(approval.id) if e.event_type == "vote")
        assert (vote_event.actor, vote_event.source, vote_event.comment) == ("alice", "cli", "lgtm")
        assert (vote_event.details["os_user"], vote_event.details["hostname"]) == (
            getpass.getuser(),
            socket.gethostname(),
        )
        assert vote_event.details["client_address"] == "127.0.0.1"
        assert vote_event.details["user_agent"].startswith("airflow-hitl-cli/")
        assert api_store.audit.verify_audit_chain().ok

    def test_the_requests_policy_applies_to_the_tokens_user(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        approval = api_store.create(spec(requested_by="alice"))
        as_user("alice")
        message = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id))
        assert "403" in message and "cannot approve it yourself" in message
        assert api_store.queries.get(approval.id).votes == ()

    @pytest.mark.parametrize(
        ("user", "token_kind", "status"),
        [
            pytest.param("viewer", "real", "403", id="viewer-may-only-look"),
            pytest.param("nobody", "real", "403", id="no-dag-access"),
            pytest.param(None, "garbage", "401", id="garbage"),
            pytest.param("alice", "expired", "401", id="expired"),
            pytest.param("alice", "foreign", "401", id="signed-by-another-key"),
        ],
    )
    def test_a_refused_token_is_one_line_and_records_nothing(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        as_user,
        user: str | None,
        token_kind: str,
        status: str,
    ) -> None:
        approval = api_store.create(spec())
        tokens = {
            "real": lambda: served_api.token(user or ""),
            "garbage": lambda: "not-a-jwt",
            "expired": lambda: resigned(served_api.token(user or ""), expires_in=-dt.timedelta(hours=1)),
            "foreign": lambda: resigned(
                served_api.token(user or ""), expires_in=dt.timedelta(hours=1), key="another-key-" + "y" * 64
            ),
        }
        as_user(token=tokens[token_kind]())
        before = snapshot(api_store)
        message = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id))
        assert message.startswith(f"error: {status} "), message
        if status == "401":
            assert TOKEN_HINT in message
        else:
            assert "edit access" in message
        assert snapshot(api_store) == before

    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(["--user", "mallory"], id="user"),
            pytest.param(["--user", "viewer", "--role", "admin"], id="user-and-role"),
            pytest.param(["--role", "admin"], id="role"),
        ],
    )
    @pytest.mark.parametrize("action", ["approve", "reject", "cancel"])
    def test_a_named_user_or_role_is_an_error_explaining_the_token(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        as_user,
        identity: list[str],
        action: str,
    ) -> None:
        approval = api_store.create(spec())
        as_user("admin")  # even with a token that could decide, a typed name is refused
        before = snapshot(api_store)
        reason = [] if action == "approve" else ["--reason", "because"]
        message = cli_error(capsys, *decide(served_api, "approvals", action, approval.id, *reason, *identity))
        assert "decisions act as the Airflow user of your token" in message and TOKEN_HINT in message
        assert all(flag in message for flag in identity if flag.startswith("--"))
        assert snapshot(api_store) == before

    def test_without_a_token_nothing_is_sent(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec())
        message = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id))
        assert "needs your own Airflow token" in message and TOKEN_HINT in message
        assert api_store.queries.get(approval.id).state == "pending"

    def test_username_with_the_password_on_stdin(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        approval = api_store.create(spec())
        monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-password\n"))
        message = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id, "--username", "alice"))
        assert "logging in as 'alice'" in message and "401" in message
        monkeypatch.setattr(sys, "stdin", io.StringIO(served_api.password("alice") + "\n"))
        out = cli(capsys, *decide(served_api, "approvals", "approve", approval.id, "--username", "alice"))
        assert "approved" in out
        assert (api_store.queries.get(approval.id).decided_by, api_store.queries.get(approval.id).decision_source) == (
            "alice",
            "cli",
        )

    def test_token_file(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, tmp_path: Path
    ) -> None:
        approval = api_store.create(spec())
        token_file = tmp_path / "token"
        token_file.write_text(served_api.token("bob") + "\n")
        argv = decide(served_api, "approvals", "approve", approval.id, "--token-file", str(token_file))
        assert "approved" in cli(capsys, *argv)
        assert api_store.queries.get(approval.id).decided_by == "bob"
        missing = decide(served_api, "approvals", "show", approval.id, "--token-file", str(tmp_path / "nope"))
        assert "No such file" in cli_error(capsys, *missing)

    def test_reject_needs_a_reason_and_records_it(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        approval = api_store.create(spec())
        as_user("op")
        assert "--reason is required" in cli_error(capsys, *decide(served_api, "approvals", "reject", approval.id))
        assert api_store.queries.get(approval.id).state == "pending"
        cli(capsys, *decide(served_api, "approvals", "reject", approval.id, "--reason", "metrics dropped"))
        rejected = api_store.queries.get(approval.id)
        assert (rejected.state, rejected.decided_by, rejected.decision_source) == ("rejected", "op", "cli")
        assert "metrics dropped" in (rejected.comment or "")

    def test_a_decided_request_is_a_conflict_and_an_unknown_one_not_found(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        approval = api_store.create(spec(required_approvals=2))
        as_user("alice")
        cli(capsys, *decide(served_api, "approvals", "approve", approval.id))
        again = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id))
        assert "409" in again and "already voted" in again
        api_store.cancel(approval.id, actor="admin", reason="done")
        closed = cli_error(capsys, *decide(served_api, "approvals", "approve", approval.id))
        assert "409" in closed and "not pending" in closed
        unknown = cli_error(capsys, *decide(served_api, "approvals", "approve", "00000000-0000-4000-8000-000000000000"))
        assert "404" in unknown and "not found" in unknown

    def test_an_unreachable_api_server_is_one_line_and_records_nothing(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, as_user
    ) -> None:
        approval = api_store.create(spec())
        as_user(token="any-token")
        nowhere = f"http://127.0.0.1:{free_port()}"
        message = cli_error(capsys, "approvals", "approve", approval.id, "--api-url", nowhere)
        assert f"cannot reach the api-server at {nowhere}" in message and "nothing was recorded" in message
        assert api_store.queries.get(approval.id).votes == ()
        assert "http" in cli_error(capsys, "approvals", "approve", approval.id, "--api-url", "localhost:8080")

    def test_cancel_through_the_api_server(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi, as_user
    ) -> None:
        approval = api_store.create(spec())
        as_user("viewer")
        assert "403" in cli_error(capsys, *decide(served_api, "approvals", "cancel", approval.id, "--reason", "x"))
        as_user("op")
        assert "--reason is required" in cli_error(capsys, *decide(served_api, "approvals", "cancel", approval.id))
        out = cli(capsys, *decide(served_api, "approvals", "cancel", approval.id, "--reason", "superseded"))
        assert "cancelled" in out
        cancelled = api_store.queries.get(approval.id)
        assert (cancelled.state, cancelled.decided_by, cancelled.decision_source) == ("cancelled", "op", "cli")
        event = api_store.audit.events(approval.id)[-1]
        assert (event.actor, event.source, event.details["os_user"]) == ("op", "cli", getpass.getuser())

    def test_the_store_without_break_glass_is_an_error(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, as_user
    ) -> None:
        approval = api_store.create(spec())
        as_user("op")
        message = cli_error(
            capsys, "approvals", "cancel", approval.id, "--reason", "x", "--store-url", api_store.store.url
        )
        assert "--store-url only go with --break-glass" in message
        assert api_store.queries.get(approval.id).state == "pending"


class TestBreakGlass:
    """``cancel --break-glass``: straight to the store, as ``<os user>@<host>``; it can only cancel."""

    def test_cancel_records_the_os_user_at_the_host(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager
    ) -> None:
        approval = manager.create(spec())
        actor = f"{getpass.getuser()}@{socket.gethostname()}"
        argv = ("approvals", "cancel", approval.id, "--break-glass", *on_store(manager))
        assert "--reason is required" in cli_error(capsys, *argv)
        out = cli(capsys, *argv, "--reason", "api-server down, stop the deploy")
        assert f"cancelled by {actor} (break-glass)" in out
        cancelled = manager.queries.get(approval.id)
        assert (cancelled.state, cancelled.decided_by, cancelled.decision_source) == (
            "cancelled",
            actor,
            Source.BREAK_GLASS,
        )
        assert cancelled.comment == "api-server down, stop the deploy"
        event = manager.audit.events(approval.id)[-1]
        assert (event.event_type, event.actor, event.source) == ("cancelled", actor, Source.BREAK_GLASS)
        assert (event.details["os_user"], event.details["hostname"]) == (getpass.getuser(), socket.gethostname())
        assert manager.audit.verify_audit_chain().ok
        # Shown like any other ending: the store's JSON form, as the API and pages get it.
        assert (
            json.loads(cli(capsys, "approvals", "show", approval.id, "-o", "json", *on_store(manager)))[0][
                "decision_source"
            ]
            == Source.BREAK_GLASS
        )
        assert "not pending" in cli_error(capsys, *argv, "--reason", "again")

    def test_the_api_shows_a_break_glass_ending(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec())
        cli(capsys, "approvals", "cancel", approval.id, "--break-glass", "--reason", "down", *on_store(api_store))
        response = served_api.airflow_api.client.get(
            f"/hitl/api/v1/approvals/{approval.id}", headers=served_api.airflow_api.headers("viewer")
        )
        assert response.status_code == 200
        assert (response.json()["state"], response.json()["decision_source"]) == ("cancelled", Source.BREAK_GLASS)

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_break_glass_can_never_approve_or_reject(
        self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager, action: str
    ) -> None:
        approval = manager.create(spec())
        # The command line offers no such thing...
        with pytest.raises(SystemExit) as exit_info:
            main(["approvals", action, approval.id, "--break-glass", "--reason", "x", *on_store(manager)])
        assert exit_info.value.code == 2
        # ...and the manager refuses it from anyone who builds the decision by hand.
        decision = Decision(action=action, user=Principal.of("root@host"), source=Source.BREAK_GLASS, reason="x")
        before = snapshot(manager)
        with pytest.raises(NotAllowed, match="can only cancel"):
            manager.decide(approval.id, decision)
        with pytest.raises(NotAllowed, match="can only cancel"):
            manager.approve(approval.id, user=Principal.of("root@host"), source=Source.BREAK_GLASS)
        assert snapshot(manager) == before

    def test_break_glass_takes_no_token(self, capsys: pytest.CaptureFixture[str], manager: ApprovalManager) -> None:
        approval = manager.create(spec())
        argv = ("approvals", "cancel", approval.id, "--break-glass", "--reason", "x", *on_store(manager))
        assert "drop --api-url" in cli_error(capsys, *argv, "--api-url", "http://127.0.0.1:9")
        assert manager.queries.get(approval.id).state == "pending"

"""The ``hitl`` command table of :mod:`airflow_hitl.cli.definition` and the two CLIs built from it.

The table names each command's function in :mod:`airflow_hitl.cli.commands` and its
arguments; :func:`get_hitl_cli_commands` turns it into the provider CLI (``airflow hitl``),
``airflow_hitl.cli.__main__`` into the ``airflow-hitl`` script. Both are parsed in-process
here; ``test_commands.py`` runs them as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from airflow_hitl.cli import commands
from airflow_hitl.cli.__main__ import build_parser
from airflow_hitl.cli.definition import ARGS, COMMANDS, Command, get_hitl_cli_commands, run_command
from airflow_hitl.manager import ApprovalManager
from tests.helpers import spec

EVERY_COMMAND = [(group, command) for group, (_, table) in COMMANDS.items() for command in table]
IDS = [f"{group}-{command.name}" for group, command in EVERY_COMMAND]


def _help_texts() -> list[str]:
    """Every help text of the table."""
    texts = [group_help for group_help, _ in COMMANDS.values()]
    texts += [command.help for _, command in EVERY_COMMAND]
    texts += [kwargs["help"] for _, kwargs in ARGS.values()]
    return texts


class TestTable:
    @pytest.mark.parametrize(("group", "command"), EVERY_COMMAND, ids=IDS)
    def test_every_command_names_a_function_of_the_commands_module(self, group: str, command: Command) -> None:
        assert callable(getattr(commands, command.func, None)), f"hitl {group} {command.name}: {command.func}"
        assert command.func == f"{group}_{command.name.replace('-', '_')}"

    @pytest.mark.parametrize(("group", "command"), EVERY_COMMAND, ids=IDS)
    def test_every_argument_is_declared_once_in_args(self, group: str, command: Command) -> None:
        assert set(command.args) <= set(ARGS), set(command.args) - set(ARGS)
        assert len(set(command.args)) == len(command.args)

    def test_every_declared_argument_is_used(self) -> None:
        used = {name for _, command in EVERY_COMMAND for name in command.args}
        assert used == set(ARGS)

    @pytest.mark.parametrize(("group", "command"), EVERY_COMMAND, ids=IDS)
    def test_store_commands_name_a_store_and_decisions_an_api_server(self, group: str, command: Command) -> None:
        store, api = {"conn_id", "store_url"}, {"api_url", "token_file", "username"}
        if group in ("db", "audit"):
            assert store <= set(command.args)
        if group == "approvals":
            # list and show read either; a decision goes to the api-server (cancel: or --break-glass).
            assert api <= set(command.args)
            assert (store <= set(command.args)) == (command.name in ("list", "show", "cancel"))

    def test_help_texts_have_no_square_brackets(self) -> None:
        # Airflow renders help with rich, which takes [...] for markup and drops it.
        texts = _help_texts()
        assert all(text and "[" not in text and "]" not in text for text in texts), texts

    def test_run_command_calls_the_function_by_name(
        self, sqlite_manager: ApprovalManager, capsys: pytest.CaptureFixture[str]
    ) -> None:
        gate = sqlite_manager.create(spec())
        args = argparse.Namespace(approval_id=gate.id, output="json", conn_id=None, store_url=sqlite_manager.store.url)
        run_command("approvals_show", args)
        assert json.loads(capsys.readouterr().out)[0]["id"] == gate.id
        with pytest.raises(AttributeError):
            run_command("no_such_command", args)


class TestProviderCli:
    """What Airflow's CLI gets from the provider's ``cli`` entry."""

    def test_one_hitl_group_of_the_tables_groups_and_commands(self) -> None:
        [hitl] = get_hitl_cli_commands()
        assert hitl.name == "hitl"
        assert [(g.name, g.help) for g in hitl.subcommands] == [(name, h) for name, (h, _) in COMMANDS.items()]
        for group in hitl.subcommands:
            table = COMMANDS[group.name][1]
            assert [(c.name, c.help) for c in group.subcommands] == [(c.name, c.help) for c in table]
            for action, command in zip(group.subcommands, table, strict=True):
                assert action.func.__name__ == command.func
                assert [arg.flags for arg in action.args] == [ARGS[name][0] for name in command.args]

    def test_airflows_own_parser_parses_and_runs_a_hitl_command(
        self, sqlite_manager: ApprovalManager, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from airflow.cli import cli_parser

        gate = sqlite_manager.create(spec())
        parser = cli_parser.get_parser()
        args = parser.parse_args(
            ["hitl", "approvals", "list", "--state", "pending", "-o", "json", "--store-url", sqlite_manager.store.url]
        )
        assert (args.state, args.output, args.limit, args.conn_id) == ("pending", "json", 100, None)
        args.func(args)
        assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [gate.id]


class TestScriptParser:
    """The ``airflow-hitl`` script's parser, built from the same table."""

    @pytest.mark.parametrize(("group", "command"), EVERY_COMMAND, ids=IDS)
    def test_every_command_is_there_with_its_function(self, group: str, command: Command) -> None:
        argv = [group, command.name]
        if "approval_id" in command.args:
            argv.append("00000000-0000-4000-8000-000000000000")
        args = build_parser().parse_args(argv)
        assert (args.group, args.action) == (group, command.name)
        assert args.func.args == (command.func,)

    def test_defaults_types_and_repeated_options(self) -> None:
        parser = build_parser()
        listed = parser.parse_args(["approvals", "list", "--limit", "5"])
        assert (listed.limit, listed.output) == (5, "table")
        inputs = ["--input", "n=3", "--input", 'ticket="T-1"']
        approve = parser.parse_args(["approvals", "approve", "some-id", "--username", "alice", *inputs])
        assert (approve.username, approve.token_file, approve.api_url) == ("alice", None, None)
        assert approve.input == ["n=3", 'ticket="T-1"']
        cancel = parser.parse_args(["approvals", "cancel", "some-id", "--reason", "r"])
        assert cancel.break_glass is False
        assert parser.parse_args(["approvals", "cancel", "some-id", "--break-glass"]).break_glass is True

    def test_db_check_checks_once_unless_told_to_wait(self) -> None:
        parser = build_parser()
        assert parser.parse_args(["db", "check"]).wait == 0
        assert parser.parse_args(["db", "check", "--wait", "600"]).wait == 600

    def test_user_and_role_still_parse_but_are_not_offered(self, capsys: pytest.CaptureFixture[str]) -> None:
        # Kept only so that an old command line gets the error explaining the token (commands.py).
        parser = build_parser()
        roles = ["--role", "op", "--role", "admin"]
        approve = parser.parse_args(["approvals", "approve", "some-id", "--user", "alice", *roles])
        assert (approve.user, approve.role) == ("alice", ["op", "admin"])
        with pytest.raises(SystemExit):
            parser.parse_args(["approvals", "approve", "--help"])
        shown = capsys.readouterr().out
        flags = set(re.findall(r"--[a-z-]+", shown))
        assert "--username" in flags and not {"--user", "--role"} & flags

    @pytest.mark.parametrize(
        "argv",
        [
            pytest.param(["approvals", "approve", "some-id", "--break-glass"], id="break-glass-approve"),
            pytest.param(["approvals", "reject", "some-id", "--break-glass"], id="break-glass-reject"),
            pytest.param(["approvals", "approve", "some-id", "--store-url", "sqlite://"], id="store-for-approve"),
            pytest.param(["approvals", "list", "-o", "xml"], id="unknown-output"),
            pytest.param(["approvals", "list", "--limit", "many"], id="limit-not-a-number"),
            pytest.param(["approvals", "cancel", "some-id", "--input", "n=1"], id="input-on-cancel"),
            pytest.param(["db"], id="group-without-command"),
            pytest.param(["db", "check", "--wait", "-1"], id="negative-wait"),
            pytest.param(["db", "check", "--wait", "soon"], id="wait-not-a-number"),
        ],
    )
    def test_bad_command_lines_are_refused(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        assert "error:" in capsys.readouterr().err

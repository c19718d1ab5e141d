"""The CLI as a person at a terminal meets it: tables that keep ids whole, and a mistyped option.

Tables are printed by Airflow's console, which takes its width from the terminal (``COLUMNS``)
and prints 200 columns wide when stdout is not a terminal; so the commands run here as
subprocesses whose stdout is a real pseudo-terminal of 100 or 300 columns. A mistyped option
is reported by the command's own parser: its usage and the error, exit status 2, both under
Airflow's parser (``airflow hitl ...``) and the ``airflow-hitl`` script.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from airflow_hitl.cli.__main__ import main
from airflow_hitl.cli.definition import COMMANDS, Command
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import Principal
from tests.helpers import spec

BIN = Path(sys.executable).parent
#: rich's colours and styles on a terminal.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(argv: list[str], *, columns: int, home: Path) -> list[str]:
    """Run ``argv`` with stdout on a pseudo-terminal ``columns`` wide; its lines, without colours."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "AIRFLOW_HOME": str(home), "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("AIRFLOW_HITL_STORE_URL", None)
    process = subprocess.Popen(argv, stdout=terminal, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err.decode()[-2000:]
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n").splitlines()


def long_requests(manager: ApprovalManager, count: int = 3) -> list[str]:
    """Requests whose every column is long: a table of them is wider than 300 columns."""
    ids = []
    for n in range(count):
        approval = manager.create(
            spec(
                dag_id=f"nightly_model_retraining_and_release_pipeline_{n}",
                run_id=f"scheduled__2025-06-0{n + 1}T02:00:00.123456+00:00",
                task_id="approve_the_release_of_the_retrained_model",
                title="Release the retrained fraud model to production after the offline evaluation " * 2,
                requested_by="a.very.long.user.name@example.com",
            )
        )
        ids.append(approval.id)
    manager.approve(ids[0], user=Principal.of("alice"), source="cli")
    return ids


def assert_whole_on_one_line(lines: list[str], ids: list[str], columns: int) -> None:
    """Each id on exactly one line (its row's), never split; no line wider than the terminal."""
    assert lines, "nothing printed"
    assert max(len(line.rstrip()) for line in lines) <= columns, "\n".join(lines)
    for approval_id in ids:
        assert len([line for line in lines if approval_id in line]) == 1, "\n".join(lines)
        head = approval_id[:8]
        assert all(approval_id in line for line in lines if head in line), "\n".join(lines)


class TestTablesAtATerminal:
    @pytest.mark.parametrize("columns", [100, 300])
    def test_list_keeps_every_id_whole_on_its_row(
        self, sqlite_manager: ApprovalManager, tmp_path: Path, columns: int
    ) -> None:
        ids = long_requests(sqlite_manager)
        argv = [str(BIN / "airflow-hitl"), "approvals", "list", "--store-url", sqlite_manager.store.url]
        lines = in_terminal(argv, columns=columns, home=tmp_path)
        assert_whole_on_one_line(lines, ids, columns)
        # One line per request: the other columns are cut with an ellipsis rather than wrapped.
        rows = [line for line in lines if any(i in line for i in ids)]
        assert len(rows) == 3 and all("\N{HORIZONTAL ELLIPSIS}" in row for row in rows), "\n".join(lines)
        assert lines[0].startswith("id ")

    @pytest.mark.parametrize("columns", [100, 300])
    def test_show_keeps_the_id_whole(self, sqlite_manager: ApprovalManager, tmp_path: Path, columns: int) -> None:
        [approval_id] = long_requests(sqlite_manager, count=1)
        argv = [str(BIN / "airflow-hitl"), "approvals", "show", approval_id, "--store-url", sqlite_manager.store.url]
        lines = in_terminal(argv, columns=columns, home=tmp_path)
        assert_whole_on_one_line(lines, [approval_id], columns)
        # The long title wraps in the value column rather than being cut: every word is there.
        assert "offline evaluation" in "\n".join(lines)

    @pytest.mark.slow
    def test_airflows_own_cli_at_100_columns(self, sqlite_manager: ApprovalManager, tmp_path: Path) -> None:
        ids = long_requests(sqlite_manager)
        argv = [str(BIN / "airflow"), "hitl", "approvals", "list", "--store-url", sqlite_manager.store.url]
        assert_whole_on_one_line(in_terminal(argv, columns=100, home=tmp_path), ids, 100)

    def test_not_a_terminal_keeps_ids_whole_too(
        self, sqlite_manager: ApprovalManager, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Piped, Airflow's console prints 200 columns wide, whatever COLUMNS says.
        ids = long_requests(sqlite_manager)
        main(["approvals", "list", "--store-url", sqlite_manager.store.url])
        assert_whole_on_one_line(capsys.readouterr().out.splitlines(), ids, 200)


# ---------------------------------------------------------------------------- a mistyped option

#: Every command of the table.
EVERY_COMMAND = [
    pytest.param(group, command, id=f"{group}-{command.name}")
    for group, (_, table) in COMMANDS.items()
    for command in table
]
#: Under Airflow's parser the command's own parser is reached through its arguments
#: (``Arg.add_to_parser``): a command without any (``evidence keygen``) keeps Airflow's report.
WITH_ARGUMENTS = [param for param in EVERY_COMMAND if param.values[1].args]


def _argv(group: str, command: Command) -> list[str]:
    positional = ["00000000-0000-4000-8000-000000000000"] if "approval_id" in command.args else []
    return [group, command.name, *positional, "--stat", "pending"]


def assert_own_usage(err: str, prog: str) -> None:
    """The command's usage line, then ``<prog>: error: unrecognized arguments``; nothing else."""
    assert re.match(rf"usage: {re.escape(prog)}( |$)", err, re.I), err
    # (``evidence verify`` takes "pending" for its FILE.)
    assert f"{prog}: error: unrecognized arguments: --stat" in err, err
    assert len(err.strip().splitlines()) < 15, err  # not Airflow's whole help
    assert "GROUP_OR_COMMAND" not in err and "Traceback" not in err


class TestAMistypedOption:
    @pytest.mark.parametrize(("group", "command"), EVERY_COMMAND)
    def test_the_script_prints_the_commands_usage(
        self, group: str, command: Command, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(_argv(group, command))
        assert exit_info.value.code == 2
        assert_own_usage(capsys.readouterr().err, f"airflow-hitl {group} {command.name}")

    @pytest.mark.parametrize(("group", "command"), WITH_ARGUMENTS)
    def test_airflows_parser_prints_the_commands_usage(
        self, group: str, command: Command, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from airflow.cli import cli_parser

        with pytest.raises(SystemExit) as exit_info:
            cli_parser.get_parser().parse_args(["hitl", *_argv(group, command)])
        assert exit_info.value.code == 2
        assert_own_usage(capsys.readouterr().err, f"airflow hitl {group} {command.name}")

    def test_an_abbreviated_option_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        # --stat would be --state by argparse's default: silently, and another option once one is added.
        with pytest.raises(SystemExit) as exit_info:
            main(["approvals", "list", "--stat", "pending"])
        assert exit_info.value.code == 2
        with pytest.raises(SystemExit):
            main(["approvals", "list", "--state", "pending", "-o", "xml"])
        err = capsys.readouterr().err
        assert "airflow-hitl approvals list: error: argument -o/--output: invalid choice: 'xml'" in err

    @pytest.mark.slow
    @pytest.mark.parametrize("cli", ["airflow hitl", "airflow-hitl"])
    def test_as_run_from_a_shell(self, cli: str, tmp_path: Path) -> None:
        program, *group = cli.split()
        result = subprocess.run(
            [str(BIN / program), *group, "approvals", "list", "--stat", "pending"],
            env={**os.environ, "AIRFLOW_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert_own_usage(result.stderr, f"{cli} approvals list")
        assert result.stdout == ""

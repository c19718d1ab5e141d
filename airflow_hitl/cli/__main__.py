"""``airflow-hitl``: the same commands as ``airflow hitl``, for Airflow 3.1 (no provider CLI)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

from airflow_hitl.cli.definition import ARGS, COMMANDS, own_usage_errors, run_command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``airflow-hitl`` script, from the table ``airflow hitl`` uses too."""
    parser = argparse.ArgumentParser(prog="airflow-hitl", description="Human-in-the-loop approval gates")
    groups = parser.add_subparsers(dest="group", required=True)
    for group, (group_help, commands) in COMMANDS.items():
        sub = groups.add_parser(group, help=group_help).add_subparsers(dest="action", required=True)
        for command in commands:
            cmd = sub.add_parser(command.name, help=command.help)
            own_usage_errors(cmd)
            for name in command.args:
                flags, kwargs = ARGS[name]
                cmd.add_argument(*flags, **kwargs)
            cmd.set_defaults(func=functools.partial(run_command, command.func))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

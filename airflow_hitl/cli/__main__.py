"""``airflow-hitl``: the same commands as ``airflow hitl``, for Airflow 3.1 (no provider CLI)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from airflow_hitl.cli import commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``airflow-hitl`` script."""
    parser = argparse.ArgumentParser(prog="airflow-hitl", description="Human-in-the-loop approval gates")
    groups = parser.add_subparsers(dest="group", required=True)
    table = {
        "db": {"migrate": commands.db_migrate, "check": commands.db_check},
        "audit": {"verify": commands.audit_verify},
    }
    for group, actions in table.items():
        sub = groups.add_parser(group).add_subparsers(dest="action", required=True)
        for action, func in actions.items():
            cmd = sub.add_parser(action, help=(func.__doc__ or "").splitlines()[0])
            cmd.add_argument("--conn-id", help="Connection of the approval store (default: [hitl] conn_id)")
            cmd.add_argument("--store-url", help="SQLAlchemy URL of the store, instead of a connection")
            cmd.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

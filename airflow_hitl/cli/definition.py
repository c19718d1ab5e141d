"""The ``hitl`` command table, shared by ``airflow hitl`` and the ``airflow-hitl`` script.

One table of arguments and commands; :func:`get_hitl_cli_commands` turns it into Airflow's
``GroupCommand``/``ActionCommand`` objects (the provider's ``cli`` entry, Airflow >= 3.2),
and ``airflow_hitl.cli.__main__`` into an ``argparse`` parser (every version, 3.1 included).
Help texts avoid square brackets: Airflow renders help with rich, which eats ``[...]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_STORE_ARGS = ("conn_id", "store_url")
_OUTPUT_CHOICES = ("table", "json", "yaml", "plain")

#: argument name -> (flags, argparse/Airflow ``Arg`` keyword arguments)
ARGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "conn_id": (
        ("--conn-id",),
        {
            "help": "Airflow connection of the approval store (default: option conn_id of the hitl config "
            "section, hitl_default). A connection named here must exist."
        },
    ),
    "store_url": (("--store-url",), {"help": "SQLAlchemy URL of the store, instead of a connection"}),
    "output": (
        ("-o", "--output"),
        {
            "help": "Output format: table, json, yaml or plain (default: table)",
            "choices": _OUTPUT_CHOICES,
            "default": "table",
            "metavar": "(table, json, yaml, plain)",
        },
    ),
    "state": (
        ("--state",),
        {"help": "Only requests in this state (pending, escalated, approved, rejected, timeout, cancelled)"},
    ),
    "dag_id": (("--dag-id",), {"help": "Only requests of this DAG"}),
    "limit": (
        ("--limit",),
        {"help": "Show at most this many, newest first (default: 100)", "type": int, "default": 100},
    ),
    "approval_id": (("approval_id",), {"help": "Id of the approval request"}),
    "user": (
        ("--user",),
        {"help": "Airflow user the decision is made as; the request's policy applies to them", "required": True},
    ),
    "role": (
        ("--role",),
        {
            "help": "A role of that user (repeat for several). Default: what SimpleAuthManager's users and "
            "option role_members of the hitl section say",
            "action": "append",
        },
    ),
    "comment": (("--comment",), {"help": "Comment recorded with the decision"}),
    "reason": (("--reason",), {"help": "Why (required to reject or cancel)"}),
    "input": (
        ("--input",),
        {
            "help": "A form input of the request as NAME=VALUE (repeat for several); VALUE is read as JSON "
            '(25, true, "text") and otherwise taken as text',
            "action": "append",
            "metavar": "NAME=VALUE",
        },
    ),
}


@dataclass(frozen=True)
class Command:
    """One ``hitl`` sub-command: its function in :mod:`airflow_hitl.cli.commands` and arguments."""

    name: str
    func: str
    help: str
    args: tuple[str, ...] = field(default=_STORE_ARGS)


_DECISION_ARGS = ("approval_id", "user", "role", "comment", "reason", *_STORE_ARGS)

#: group -> (help, commands)
COMMANDS: dict[str, tuple[str, tuple[Command, ...]]] = {
    "db": (
        "Manage the approval store",
        (
            Command("migrate", "db_migrate", "Migrate the approval store to this version"),
            Command("check", "db_check", "Check the approval store's schema version (never creates a store)"),
        ),
    ),
    "audit": ("Inspect the audit trail", (Command("verify", "audit_verify", "Verify the audit trail's hash chain"),)),
    "approvals": (
        "List, show and decide approval requests",
        (
            Command(
                "list", "approvals_list", "List approval requests", ("state", "dag_id", "limit", "output", *_STORE_ARGS)
            ),
            Command("show", "approvals_show", "Show one approval request", ("approval_id", "output", *_STORE_ARGS)),
            Command(
                "approve",
                "approvals_approve",
                "Approve a request as --user (--input for its form)",
                (*_DECISION_ARGS, "input"),
            ),
            Command("reject", "approvals_reject", "Reject a request as --user (--reason required)", _DECISION_ARGS),
            Command(
                "cancel", "approvals_cancel", "Cancel a waiting request as --user (--reason required)", _DECISION_ARGS
            ),
        ),
    ),
}


def run_command(name: str, args: Any) -> None:
    """Run ``airflow_hitl.cli.commands.<name>``; imported only now, so Airflow's CLI starts fast."""
    from airflow_hitl.cli import commands

    getattr(commands, name)(args)


def _lazy(name: str) -> Any:
    def command(args: Any) -> None:
        run_command(name, args)

    command.__name__ = name
    return command


def get_hitl_cli_commands() -> list[Any]:
    """Return the ``hitl`` group for Airflow's CLI: ``db``, ``audit`` and ``approvals``."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    args = {name: Arg(flags, **kwargs) for name, (flags, kwargs) in ARGS.items()}
    return [
        GroupCommand(
            name="hitl",
            help="Human-in-the-loop approval gates (airflow-hitl)",
            subcommands=[
                GroupCommand(
                    name=group,
                    help=group_help,
                    subcommands=[
                        ActionCommand(
                            name=command.name,
                            help=command.help,
                            func=_lazy(command.func),
                            args=tuple(args[a] for a in command.args),
                        )
                        for command in commands
                    ],
                )
                for group, (group_help, commands) in COMMANDS.items()
            ],
        )
    ]

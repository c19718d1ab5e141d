"""The ``hitl`` command table, shared by ``airflow hitl`` and the ``airflow-hitl`` script.

One table of arguments and commands; :func:`get_hitl_cli_commands` turns it into Airflow's
``GroupCommand``/``ActionCommand`` objects (the provider's ``cli`` entry, Airflow >= 3.2),
and ``airflow_hitl.cli.__main__`` into an ``argparse`` parser (every version, 3.1 included).
Help texts avoid square brackets: Airflow renders help with rich, which eats ``[...]``.

Both parsers report a mistyped command line the same way, through :func:`own_usage_errors`:
the command's own usage and the error, exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

_STORE_ARGS = ("conn_id", "store_url")
#: How the command line reaches the api-server as the caller's own Airflow user.
_API_ARGS = ("api_url", "token_file", "username")
_OUTPUT_CHOICES = ("table", "json", "yaml", "plain")


def seconds(value: str) -> int:
    """A whole number of seconds, 0 or more (``--wait``); anything else is a usage error naming it."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds, 0 or more")
    return number


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
    "wait": (
        ("--wait",),
        {
            "help": "Wait up to this many seconds for the store to be reachable and migrated to this version, "
            "checking every few seconds; exit 1 as without --wait when the time is up (default: 0, check once). "
            "For an init container that waits for the migration job",
            "type": seconds,
            "default": 0,
            "metavar": "SECONDS",
        },
    ),
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
    # Removed: a decision is made as the Airflow user of the caller's token. Still parsed, and
    # hidden, so that an old command line gets an error explaining the token, not argparse's.
    "user": (("--user",), {"help": argparse.SUPPRESS}),
    "role": (("--role",), {"help": argparse.SUPPRESS, "action": "append"}),
    "api_url": (
        ("--api-url",),
        {
            "help": "URL of the Airflow api-server to call (default: option base_url of the hitl config "
            "section when set, else base_url of the api section, else http://localhost:8080)",
            "metavar": "URL",
        },
    ),
    "token_file": (
        ("--token-file",),
        {
            "help": "File holding your Airflow token, a JWT from POST /auth/token (default: the environment "
            "variable AIRFLOW_HITL_TOKEN)",
            "metavar": "PATH",
        },
    ),
    "username": (
        ("--username",),
        {
            "help": "Log in as this Airflow user for this command: the password is prompted for, or read from the "
            "first line of stdin when it is not a terminal, and exchanged for a token at /auth/token",
            "metavar": "NAME",
        },
    ),
    "break_glass": (
        ("--break-glass",),
        {
            "help": "Cancel straight in the store, without the api-server or a token (when it is down): recorded "
            "as OS user@host with source break-glass; needs the store's credentials and --reason. It can only "
            "cancel",
            "action": "store_true",
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
    "content_digest": (
        ("--content-digest",),
        {
            "help": "Decide only if the request is still exactly what you reviewed: its content_digest as "
            "approvals show printed it. A request that changed since is refused (409), nothing recorded",
            "metavar": "HEX",
        },
    ),
    "evidence_file": (
        ("evidence_file",),
        {
            "help": "File holding the evidence: the JWS, or the JSON answer of the evidence endpoint; - or "
            "nothing reads stdin",
            "nargs": "?",
            "default": "-",
            "metavar": "FILE",
        },
    ),
    "jwks_url": (
        ("--jwks-url",),
        {
            "help": "URL of the public keys, e.g. https://airflow.example.com/hitl/api/v1/evidence/jwks.json",
            "metavar": "URL",
        },
    ),
    "jwks_file": (
        ("--jwks-file",),
        {"help": "File holding the public keys (a JWKS), instead of --jwks-url", "metavar": "PATH"},
    ),
    # Standing approvals: the same flags as the REST API's fields, with help of their own.
    "approver": (
        ("--approver",),
        {"help": "Admins: only the standing approvals of this user (others see only their own)", "metavar": "NAME"},
    ),
    "standing_state": (
        ("--state",),
        {"help": "Only standing approvals in this state (scheduled, active, expired, used_up, revoked)"},
    ),
    "standing_dag_filter": (("--dag-id",), {"help": "Only standing approvals of this DAG"}),
    "standing_dag_id": (
        ("--dag-id",),
        {"help": "The DAG whose gates you approve ahead (required); you must be able to decide them"},
    ),
    "standing_task_id": (
        ("--task-id",),
        {"help": "Only the gates of this task of the DAG (default: every gate of the DAG)"},
    ),
    "valid_from": (
        ("--valid-from",),
        {
            "help": "When it starts: ISO 8601 with a time zone, e.g. 2026-12-01T09:00:00Z (default: now)",
            "metavar": "TIME",
        },
    ),
    "valid_until": (
        ("--valid-until",),
        {
            "help": "When it ends (required): ISO 8601 with a time zone, e.g. 2026-12-05T18:00:00+01:00; "
            "at most the days of option standing_approval_max_days of the hitl config section after it starts",
            "metavar": "TIME",
        },
    ),
    "max_uses": (
        ("--max-uses",),
        {
            "help": "Vote on at most this many gates, 1 or more (default: no limit within the window)",
            "type": int,
            "metavar": "N",
        },
    ),
    "standing_comment": (
        ("--comment",),
        {"help": "Why you approve ahead (required): recorded, and the comment of every vote it casts"},
    ),
    "standing_id": (
        ("standing_id",),
        # Optional to argparse so that a missing id is the command's one-line error, as for --reason.
        {"help": "Id of the standing approval, as standing list prints it", "nargs": "?", "metavar": "ID"},
    ),
}


@dataclass(frozen=True)
class Command:
    """One ``hitl`` sub-command: its function in :mod:`airflow_hitl.cli.commands` and arguments."""

    name: str
    func: str
    help: str
    args: tuple[str, ...] = field(default=_STORE_ARGS)


#: Every decision: the request, who asks (the token's user), and the removed --user/--role.
_DECISION_ARGS = ("approval_id", *_API_ARGS, "user", "role")

#: group -> (help, commands)
COMMANDS: dict[str, tuple[str, tuple[Command, ...]]] = {
    "db": (
        "Manage the approval store",
        (
            Command("migrate", "db_migrate", "Migrate the approval store to this version"),
            Command(
                "check",
                "db_check",
                "Check the approval store's schema version, or wait for it with --wait (never creates a store)",
                (*_STORE_ARGS, "wait"),
            ),
        ),
    ),
    "audit": ("Inspect the audit trail", (Command("verify", "audit_verify", "Verify the audit trail's hash chain"),)),
    "approvals": (
        "List, show and decide approval requests",
        (
            Command(
                "list",
                "approvals_list",
                "List approval requests, from the store, or through the api-server when it or a token is named",
                ("state", "dag_id", "limit", "output", *_STORE_ARGS, *_API_ARGS),
            ),
            Command(
                "show",
                "approvals_show",
                "Show one approval request, from the store, or through the api-server when it or a token is named",
                ("approval_id", "output", *_STORE_ARGS, *_API_ARGS),
            ),
            Command(
                "approve",
                "approvals_approve",
                "Approve a request through the api-server as the Airflow user of your token (--input for its form)",
                (*_DECISION_ARGS, "comment", "input", "content_digest"),
            ),
            Command(
                "reject",
                "approvals_reject",
                "Reject a request through the api-server as the Airflow user of your token (--reason required)",
                (*_DECISION_ARGS, "reason", "comment", "input", "content_digest"),
            ),
            Command(
                "cancel",
                "approvals_cancel",
                "Cancel a waiting request through the api-server as the Airflow user of your token, or with "
                "--break-glass straight in the store (--reason required)",
                (*_DECISION_ARGS, "reason", "break_glass", *_STORE_ARGS),
            ),
        ),
    ),
    "standing": (
        "Standing approvals: your vote given ahead for a DAG's gates, scoped, expiring and counted",
        (
            Command(
                "list",
                "standing_list",
                "List standing approvals through the api-server: your own; an admin's lists everyone's",
                ("approver", "standing_dag_filter", "standing_state", "limit", "output", *_API_ARGS),
            ),
            Command(
                "create",
                "standing_create",
                "Approve ahead, as the Airflow user of your token, the gates of a DAG that open in a window",
                (
                    "standing_dag_id",
                    "standing_task_id",
                    "valid_from",
                    "valid_until",
                    "max_uses",
                    "standing_comment",
                    "output",
                    *_API_ARGS,
                ),
            ),
            Command(
                "revoke",
                "standing_revoke",
                "Revoke a standing approval now (yours, or any as an admin): it casts no vote from then on",
                ("standing_id", "output", *_API_ARGS),
            ),
        ),
    ),
    "evidence": (
        "Signed evidence of approval requests",
        (
            Command("keygen", "evidence_keygen", "Print a new Ed25519 key for option evidence_signing_key", ()),
            Command(
                "verify",
                "evidence_verify",
                "Verify a request's evidence against the public keys, offline (exit 1 when it does not verify)",
                ("evidence_file", "jwks_url", "jwks_file"),
            ),
        ),
    ),
}


class _OwnUsageErrors(argparse.ArgumentParser):
    """A command's parser that reports errors itself: its usage line and the error, exit status 2.

    Mixed in before the parser's own class. argparse hands a sub-command's unknown arguments up
    to the top parser, which reports them with its usage; Airflow's parser (``DefaultHelpParser``)
    prints its whole help for any error, about 50 lines in which the error is the last.
    """

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; argparse calls it so
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse the command's arguments; an unknown one is this command's error, not its parent's."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """argparse's own report (usage, then ``<prog>: error: <message>``), not the parser class's."""
        argparse.ArgumentParser.error(self, message)


# One subclass per parser class, made once: Airflow's DefaultHelpParser, or argparse's own.
_OWN_USAGE_ERRORS_CLASSES: dict[type[argparse.ArgumentParser], type[argparse.ArgumentParser]] = {}


def own_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser``, one command's, report a bad command line with its own usage; no abbreviations.

    Idempotent (Airflow calls it once per argument). The parser's class stays in the lineage,
    so what it checks (Airflow's legacy command names, its help formatter) is kept. Abbreviated
    options are refused: ``--stat`` for ``--state`` would silently mean another option once
    one is added, and a mistyped option is then always an error.
    """
    parser.allow_abbrev = False
    if not isinstance(parser, _OwnUsageErrors):
        # The parser is built by Airflow (or by argparse for its sub-commands): its class is
        # swapped for a subclass rather than the parser rebuilt.
        base = type(parser)
        if base not in _OWN_USAGE_ERRORS_CLASSES:
            _OWN_USAGE_ERRORS_CLASSES[base] = type(f"HitlCommand{base.__name__}", (_OwnUsageErrors, base), {})
        parser.__class__ = _OWN_USAGE_ERRORS_CLASSES[base]


def run_command(name: str, args: Any) -> None:
    """Run ``airflow_hitl.cli.commands.<name>``; imported only now, so Airflow's CLI starts fast."""
    from airflow_hitl.cli import commands

    try:
        getattr(commands, name)(args)
    finally:
        commands.close_stores()


def _lazy(name: str) -> Any:
    def command(args: Any) -> None:
        run_command(name, args)

    command.__name__ = name
    return command


def get_hitl_cli_commands() -> list[Any]:
    """Return the ``hitl`` group for Airflow's CLI: ``db``, ``audit``, ``approvals``, ``standing``, ``evidence``."""
    from airflow_hitl.seam.cli import action_command, argument, group_command

    args = {name: argument(flags, on_parser=own_usage_errors, **kwargs) for name, (flags, kwargs) in ARGS.items()}
    return [
        group_command(
            name="hitl",
            help="Human-in-the-loop approval gates (airflow-hitl)",
            subcommands=[
                group_command(
                    name=group,
                    help=group_help,
                    subcommands=[
                        action_command(
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

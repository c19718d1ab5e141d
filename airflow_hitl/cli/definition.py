"""The ``airflow hitl`` command group, registered through the provider's ``cli`` entry."""

from __future__ import annotations

from typing import Any


def _lazy(name: str) -> Any:
    # Airflow's CLI imports definitions at start-up; import the command bodies only when run.
    def command(args: Any) -> None:
        from airflow_hitl.cli import commands

        getattr(commands, name)(args)

    command.__name__ = name
    return command


def get_hitl_cli_commands() -> list[Any]:
    """Return the ``hitl`` group: ``db migrate``, ``db check``, ``audit verify``."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    conn_id = Arg(("--conn-id",), help="Connection of the approval store (default: [hitl] conn_id)")
    store_url = Arg(("--store-url",), help="SQLAlchemy URL of the store, instead of a connection")
    args = (conn_id, store_url)
    return [
        GroupCommand(
            name="hitl",
            help="Human-in-the-loop approval gates (airflow-hitl)",
            subcommands=[
                GroupCommand(
                    name="db",
                    help="Manage the approval store",
                    subcommands=[
                        ActionCommand(
                            name="migrate",
                            help="Migrate the approval store to this version",
                            func=_lazy("db_migrate"),
                            args=args,
                        ),
                        ActionCommand(
                            name="check",
                            help="Check the approval store's schema version",
                            func=_lazy("db_check"),
                            args=args,
                        ),
                    ],
                ),
                GroupCommand(
                    name="audit",
                    help="Inspect the audit trail",
                    subcommands=[
                        ActionCommand(
                            name="verify",
                            help="Verify the audit trail's hash chain",
                            func=_lazy("audit_verify"),
                            args=args,
                        ),
                    ],
                ),
            ],
        )
    ]

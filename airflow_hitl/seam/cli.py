"""Airflow's CLI command classes and its console: how a provider adds ``airflow hitl ...``.

A provider's ``get_provider_info()["cli"]`` names functions returning Airflow's own command
objects (``GroupCommand``, ``ActionCommand``, ``Arg`` of ``airflow.cli.cli_config``), and
Airflow's commands print tables with ``AirflowConsole``; neither module is on Airflow's
"Public Interface" page. See the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def argument(flags: tuple[str, ...], **kwargs: Any) -> Any:
    """An argument of an Airflow CLI command (``Arg``): argparse's flags and keyword arguments."""
    from airflow.cli.cli_config import Arg

    return Arg(flags, **kwargs)


def action_command(*, name: str, help: str, func: Callable[[Any], None], args: Sequence[Any]) -> Any:
    """An Airflow CLI command that runs ``func`` with the parsed arguments (``ActionCommand``)."""
    from airflow.cli.cli_config import ActionCommand

    return ActionCommand(name=name, help=help, func=func, args=tuple(args))


def group_command(*, name: str, help: str, subcommands: Sequence[Any]) -> Any:
    """A group of Airflow CLI commands (``GroupCommand``)."""
    from airflow.cli.cli_config import GroupCommand

    return GroupCommand(name=name, help=help, subcommands=list(subcommands))


def print_rows(data: list[dict[str, Any]], *, output: str) -> None:
    """Print ``data`` as Airflow's commands print theirs (``--output table|json|yaml|plain``)."""
    from airflow.cli.simple_table import AirflowConsole

    AirflowConsole().print_as(data=data, output=output)

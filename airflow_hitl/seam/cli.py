"""Airflow's CLI command classes and its console: how a provider adds ``airflow hitl ...``.

A provider's ``get_provider_info()["cli"]`` names functions returning Airflow's own command
objects (``GroupCommand``, ``ActionCommand``, ``Arg`` of ``airflow.cli.cli_config``), and
Airflow's commands print tables with ``AirflowConsole``; neither module is on Airflow's
"Public Interface" page. See the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

#: Called with the argparse parser of the command an argument was added to.
ParserHook = Callable[[argparse.ArgumentParser], None]


@functools.cache
def _hooked_arg_class() -> type:
    from airflow.cli.cli_config import Arg

    class HookedArg(Arg):
        """An ``Arg`` that also hands Airflow's parser of its command to a hook, once added to it."""

        def __init__(self, flags: tuple[str, ...], *, on_parser: ParserHook, **kwargs: Any) -> None:
            super().__init__(flags, **kwargs)  # type: ignore[no-untyped-call]  # Airflow's Arg is untyped
            self.on_parser = on_parser

        def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
            super().add_to_parser(parser)
            self.on_parser(parser)

    return HookedArg


def argument(flags: tuple[str, ...], *, on_parser: ParserHook | None = None, **kwargs: Any) -> Any:
    """An argument of an Airflow CLI command (``Arg``): argparse's flags and keyword arguments.

    ``on_parser`` is called with the command's own parser each time Airflow adds the argument
    to it (``Arg.add_to_parser``): the one place a provider reaches the parser of its command.
    """
    if on_parser is not None:
        return _hooked_arg_class()(flags, on_parser=on_parser, **kwargs)
    from airflow.cli.cli_config import Arg

    return Arg(flags, **kwargs)  # type: ignore[no-untyped-call]


def action_command(*, name: str, help: str, func: Callable[[Any], None], args: Sequence[Any]) -> Any:
    """An Airflow CLI command that runs ``func`` with the parsed arguments (``ActionCommand``)."""
    from airflow.cli.cli_config import ActionCommand

    return ActionCommand(name=name, help=help, func=func, args=tuple(args))


def group_command(*, name: str, help: str, subcommands: Sequence[Any]) -> Any:
    """A group of Airflow CLI commands (``GroupCommand``)."""
    from airflow.cli.cli_config import GroupCommand

    return GroupCommand(name=name, help=help, subcommands=list(subcommands))


@functools.cache
def _console_class() -> type:
    from airflow.cli.simple_table import AirflowConsole, SimpleTable

    class HitlConsole(AirflowConsole):
        """Airflow's console, whose tables keep some columns whole and may keep every row on one line."""

        def __init__(self, *, whole: Collection[str], one_line: bool) -> None:
            super().__init__()
            self.whole = frozenset(whole)
            self.one_line = one_line

        def _cell(self, text: str, *, whole: bool) -> Any:
            # rich's Text, made by the console: a str would have "[...]" in a title or a reason
            # read as rich's markup (and ":name:" as an emoji).
            # Set on the Text it returns: its highlighter makes a new one, without them.
            cut = self.one_line and not whole
            cell = self.render_str(text, markup=False, emoji=False)
            cell.no_wrap = whole or cut
            cell.overflow = "ellipsis" if cut else None
            return cell

        def print_as_table(self, data: list[dict[str, Any]]) -> None:
            """Airflow's table (``SimpleTable``), with whole columns never wrapped nor cut (ids).

            rich narrows the wrappable columns first and a ``no_wrap`` one only when nothing
            else is left to narrow; a one-line cell is cut with an ellipsis where a plain one
            would wrap.
            """
            if not data:
                self.print("No data found")
                return
            table = SimpleTable(show_header=self.show_header)  # type: ignore[no-untyped-call]
            for column in data[0]:
                table.add_column(self._cell(column, whole=column in self.whole), no_wrap=column in self.whole)
            for row in data:
                table.add_row(*(self._cell(str(value), whole=key in self.whole) for key, value in row.items()))
            self.print(table)

    return HitlConsole


def print_rows(data: list[dict[str, Any]], *, output: str, whole: Collection[str] = (), one_line: bool = False) -> None:
    """Print ``data`` as Airflow's commands print theirs (``--output table|json|yaml|plain``).

    In a table, the columns named in ``whole`` (ids) are never wrapped nor cut: the others
    narrow first. With ``one_line``, every other cell stays on one line, cut with an ellipsis
    when its column is too narrow, instead of wrapping. json, yaml and plain are Airflow's.
    The width is Airflow's: the terminal's (``COLUMNS``), 200 when not printing to a terminal.
    """
    _console_class()(whole=whole, one_line=one_line).print_as(data=data, output=output)

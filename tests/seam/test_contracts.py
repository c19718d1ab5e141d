"""The seam's contracts: the Airflow behaviour airflow-hitl relies on outside Airflow's public interface.

One test (or a few) per entry of the table in :mod:`airflow_hitl.seam`, against the installed
Airflow: a real metadata DB (SQLite, migrated by Airflow, from the ``airflow_api`` fixture),
real tokens, real argparse, real console output. The unit lane runs them on Airflow 3.3 and
``scripts/test-airflow-versions.sh`` on 3.1 and 3.2; when one fails after an upgrade, the fix
is in ``airflow_hitl/seam/`` and its table.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import datetime as dt
import inspect
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import airflow
import pytest
from packaging.version import Version

import airflow_hitl.seam
from airflow_hitl.seam import auth, cli, providers, smtp, stats, task_instances
from airflow_hitl.spec import utcnow
from airflow_hitl.triggers.approval import ApprovalTrigger
from tests.airflow_api import known_dags
from tests.standins import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "airflow_hitl" / "seam"
STATIC = ROOT / "airflow_hitl" / "ui" / "static"
_AIRFLOW = Version(Version(airflow.__version__).base_version)
#: Whether the installed Airflow is 3.2 or later, 3.3 or later.
SINCE_3_2, SINCE_3_3 = _AIRFLOW.release[:2] >= (3, 2), _AIRFLOW.release[:2] >= (3, 3)


# ------------------------------------------------------------------------------ the table itself


def _table_modules(heading: str) -> set[str]:
    """The modules named by the entries (lines starting ````airflow...````) under one heading of the docstring."""
    doc = airflow_hitl.seam.__doc__ or ""
    sections = re.split(r"\n(?=[^\n]+\n=+\n)", doc)
    section = next(s for s in sections if s.startswith(heading))
    return set(re.findall(r"^``(airflow[\w.]*)``", section, re.M))


def _seam_imports() -> set[str]:
    """Every ``airflow.*`` module imported by code under ``airflow_hitl/seam/`` (not for type checking only)."""
    found: set[str] = set()
    for path in SEAM.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            # The seam imports a module itself as ``import airflow.x.y as z``, names of a module
            # as ``from airflow.x.y import name``: either way the module is spelled out.
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "airflow":
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "airflow")
    return found


def test_the_table_lists_exactly_the_internal_modules_the_seam_imports() -> None:
    internal = _table_modules("Internal names relied on")
    public = _table_modules("Judged public")
    imported = _seam_imports()
    assert len(internal) >= 10
    assert not internal & public
    assert imported - public == internal, (
        f"imported but not in the table: {sorted(imported - public - internal)}; "
        f"in the table but not imported: {sorted(internal - imported)}"
    )


def test_every_entry_names_its_version_and_a_contract_test_that_exists() -> None:
    doc = airflow_hitl.seam.__doc__ or ""
    here = {name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    entries = re.split(r"\n(?=``airflow)", doc.split("Internal names relied on")[1].split("The pages:")[0])[1:]
    assert len(entries) >= 10
    for entry in entries:
        module = entry.split("``")[1]
        assert re.search(r"Since: 3\.[123]", entry), f"{module}: no 'Since: 3.x'"
        named = set(re.findall(r"``(test_\w+)``", entry))
        assert named, f"{module}: no contract test named"
        assert named <= here, f"{module}: {sorted(named - here)} not in {__file__}"


def test_airflow_theme_script_names_what_it_reads() -> None:
    # The one script that reads the Airflow UI: every key and CSS variable it uses is named in
    # its header and in the seam's table; the pages' own script uses none.
    script = (STATIC / "airflow-theme.js").read_text()
    header, code = script.split("*/", 1)
    keys = set(re.findall(r'_KEY = "([^"]+)"', code))
    variables = set(re.findall(r'"(--chakra-[\w-]+)"', code))
    assert keys == {"theme", "timezone"}
    assert len(variables) == 5
    doc = airflow_hitl.seam.__doc__ or ""
    for name in keys:
        assert f'localStorage "{name}"' in header
        assert f"``{name}``" in doc
    for name in variables:
        assert name in header
        assert f"``{name}``" in doc
    pages = (STATIC / "hitl.js").read_text()
    assert "localStorage" not in pages.replace("localStorage keys", "")
    assert "--chakra" not in pages
    base = (ROOT / "airflow_hitl" / "ui" / "templates" / "base.html").read_text()
    assert base.index("airflow-theme.js") < base.index("hitl.js"), "loaded before the script that applies it"


# ------------------------------------------------------------------------------ task instances


def _task_key() -> task_instances.TaskKey:
    return task_instances.TaskKey(
        dag_id="seam_dag", run_id=f"seam__{uuid.uuid4().hex[:8]}", task_id="gate", map_index=-1
    )


@pytest.fixture
def task_instance(airflow_api: object) -> Iterator[Callable[..., task_instances.TaskKey]]:
    """Write a task instance (optionally deferred on an approval trigger) into Airflow's real metadata DB."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert

    runs, tis, triggers = DagRun.__table__, TaskInstance.__table__, Trigger.__table__
    written: list[tuple[task_instances.TaskKey, int | None]] = []

    def write(*, state: str, try_number: int = 1, deferred_on: ApprovalTrigger | None = None) -> task_instances.TaskKey:
        key = _task_key()
        with create_session() as session:
            run = {"dag_id": key.dag_id, "run_id": key.run_id, "run_type": "manual", "run_after": utcnow()}
            session.execute(insert(runs).values(**run))
            trigger_id = None
            if deferred_on is not None:
                trigger = Trigger.from_object(deferred_on)
                session.add(trigger)
                session.flush()
                trigger_id = trigger.id
            session.execute(
                insert(tis).values(
                    # A UUID column on 3.2 and later, a string one on 3.1.
                    id=uuid.uuid4() if getattr(tis.c.id.type, "as_uuid", False) else str(uuid.uuid4()),
                    dag_id=key.dag_id,
                    run_id=key.run_id,
                    task_id=key.task_id,
                    map_index=key.map_index,
                    try_number=try_number,
                    pool="default_pool",
                    pool_slots=1,
                    state=state,
                    trigger_id=trigger_id,
                )
            )
        written.append((key, trigger_id))
        return key

    yield write
    with create_session() as session:
        for key, trigger_id in written:
            session.execute(delete(tis).where(tis.c.run_id == key.run_id))
            session.execute(delete(runs).where(runs.c.run_id == key.run_id))
            if trigger_id is not None:
                session.execute(delete(triggers).where(triggers.c.id == trigger_id))


def _row(key: task_instances.TaskKey) -> tuple[str | None, int | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(TaskInstance.state, TaskInstance.trigger_id).where(TaskInstance.run_id == key.run_id)
        ).one()
    return (None if row.state is None else str(getattr(row.state, "value", row.state)), row.trigger_id)


def test_task_instance_columns_we_read_and_lock(
    task_instance: Callable[..., task_instances.TaskKey],
) -> None:
    from airflow.models.taskinstance import TaskInstance

    table = TaskInstance.__table__
    assert table.name == "task_instance"
    for column in ("dag_id", "run_id", "task_id", "map_index", "state", "try_number", "id", "trigger_id"):
        assert column in table.c, f"task_instance.{column}"
    # One row per (dag_id, run_id, task_id, map_index): what a key names is one task instance.
    unique = [
        {c.name for c in constraint.columns}
        for constraint in [*table.constraints, *table.indexes]
        if getattr(constraint, "unique", True) and hasattr(constraint, "columns")
    ]
    assert {"dag_id", "run_id", "task_id", "map_index"} in unique

    running, deferred = task_instance(state="running", try_number=2), task_instance(state="deferred")
    absent = _task_key()
    found = task_instances.task_tries([running, deferred, absent], batch=2)
    assert {key: (t.state, t.try_number) for key, t in found.items()} == {
        running: ("running", 2),
        deferred: ("deferred", 1),
    }
    # The try's id as the canonical text of a UUID, whatever the column's type (a UUID, or text on 3.1).
    assert found[running].id == _ti_id(running) and found[deferred].id == _ti_id(deferred)
    with task_instances.hold_task_instance(deferred) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        assert (held.state, held.try_number, held.trigger_id, held.trigger()) == ("deferred", 1, None, None)
    with task_instances.hold_task_instance(absent) as held:
        assert held == task_instances.MISSING


def _ti_id(key: task_instances.TaskKey) -> str:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.scalar(select(TaskInstance.id).where(TaskInstance.run_id == key.run_id))
    return str(uuid.UUID(str(found)))


def test_a_task_instance_has_a_new_id_for_every_try(task_instance: Callable[..., task_instances.TaskKey]) -> None:
    # A request records the task instance try that opened it: ``ti.id`` on the worker (the Task
    # SDK's public protocol), the row's id in the metadata DB. Airflow gives the row a new id where
    # it starts a new try (a clear, a retry, the scheduler's reset of an orphan), and a DAG run
    # created again has new rows: only the try that opened a request has its id.
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.types import RuntimeTaskInstanceProtocol
    from airflow.utils.session import create_session
    from sqlalchemy import select

    assert "id" in RuntimeTaskInstanceProtocol.__annotations__
    assert TaskInstance.__table__.c.id.primary_key
    key = task_instance(state="awaiting_input")
    first = task_instances.task_tries([key], batch=1)[key].id
    assert first == _ti_id(key)
    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.run_id == key.run_id)).one()
        ti.state = "scheduled"  # resumed: still the same try, the same id
        session.flush()
        assert str(uuid.UUID(str(ti.id))) == first
        ti.prepare_db_for_next_try(session)
    assert task_instances.task_tries([key], batch=1)[key].id not in {first, None}


def test_dag_run_key_we_read(task_instance: Callable[..., task_instances.TaskKey]) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    table = DagRun.__table__
    assert table.name == "dag_run" and {"dag_id", "run_id"} <= set(table.c.keys())
    unique = [
        {c.name for c in constraint.columns} for constraint in table.constraints if hasattr(constraint, "columns")
    ]
    assert {"dag_id", "run_id"} in unique, "one run per (dag_id, run_id)"
    # Deleting a run deletes its task instances: a request whose task instance is gone may ask about its run.
    to_runs = [fk for fk in TaskInstance.__table__.foreign_key_constraints if fk.referred_table.name == "dag_run"]
    assert [(sorted(c.name for c in fk.columns), fk.ondelete) for fk in to_runs] == [(["dag_id", "run_id"], "CASCADE")]

    live = task_instance(state="running")
    gone = task_instances.RunKey(dag_id=live.dag_id, run_id=f"seam__gone_{uuid.uuid4().hex[:8]}")
    assert task_instances.existing_runs([live.run, gone], batch=1) == {live.run}
    assert task_instances.existing_runs([], batch=1) == set()


def test_handle_event_submit_signature() -> None:
    from airflow.models.trigger import handle_event_submit

    parameters = inspect.signature(handle_event_submit).parameters
    assert list(parameters)[:1] == ["event"]
    for name in ("task_instance", "session"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_handle_event_submit_ends_a_deferred_task(task_instance: Callable[..., task_instances.TaskKey]) -> None:
    # Skipped: Airflow ends it without a callback to a DAG file this metadata DB lacks (a
    # success or failure asks the DAG's file for its callbacks; the e2e suites cover those).
    from airflow.triggers.base import TaskSkippedEvent

    trigger = ApprovalTrigger(request_id="seam-contract", end_task=True)
    key = task_instance(state="deferred", deferred_on=trigger)
    before = _row(key)
    with task_instances.hold_task_instance(key) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        found = held.trigger()
        assert found is not None
        assert found.classpath == trigger.serialize()[0]
        assert found.kwargs["request_id"] == "seam-contract" and found.kwargs["end_task"] is True
        assert held.still_deferred_on(before[1])
        held.bound_statements(lock_timeout_ms=5_000, statement_timeout_ms=10_000)
        held.submit_event(TaskSkippedEvent())
        held.commit()
        assert not held.still_deferred_on(before[1])
    assert before == ("deferred", before[1]) and before[1] is not None
    assert _row(key) == ("skipped", None)


def test_create_session_commits_and_rolls_back(task_instance: Callable[..., task_instances.TaskKey]) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    key = task_instance(state="scheduled")
    with create_session() as session:
        session.execute(update(TaskInstance.__table__).where(TaskInstance.run_id == key.run_id).values(state="queued"))
    assert _row(key)[0] == "queued"
    with pytest.raises(RuntimeError), create_session() as session:
        session.execute(update(TaskInstance.__table__).where(TaskInstance.run_id == key.run_id).values(state="running"))
        raise RuntimeError("rolled back")
    assert _row(key)[0] == "queued"


def test_sdk_task_instance_states_are_the_stored_values() -> None:
    from airflow.sdk import TaskInstanceState
    from airflow.utils.state import TaskInstanceState as Stored

    for state in ("deferred", "running", "queued", "scheduled", "success", "skipped", "failed"):
        assert TaskInstanceState(state).value == Stored(state).value == state


# ------------------------------------------------------------------------------ auth


def test_get_auth_manager_returns_the_instance_or_raises(airflow_api: object) -> None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager

    manager = auth.auth_manager()
    assert isinstance(manager, BaseAuthManager)
    assert auth.auth_manager() is manager
    # A process where no api-server made one (a worker, the CLI): it raises, and identity's
    # lookups fall back to [hitl] configuration.
    child = subprocess.run(
        [sys.executable, "-c", "from airflow_hitl.seam.auth import auth_manager; auth_manager()"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode != 0
    assert "RuntimeError" in child.stderr


def test_get_user_token_parameter() -> None:
    from airflow.api_fastapi.core_api.security import get_user

    parameters = inspect.signature(get_user).parameters
    assert {"request", "bearer_credentials", auth.oauth_token_param(get_user)} <= set(parameters)
    assert ("_oauth_token" in parameters) == SINCE_3_3


def _request(cookies: dict[str, str] | None = None) -> Any:
    from starlette.requests import Request

    cookie = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    headers = [(b"cookie", cookie.encode())] if cookie else []
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": headers})


def test_get_user_resolves_a_real_token(airflow_api: Any) -> None:
    from fastapi import HTTPException
    from fastapi.security import HTTPAuthorizationCredentials

    token = airflow_api.tokens["alice"]
    bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    assert asyncio.run(auth.user_from_request(_request(), bearer)).get_name() == "alice"
    # The UI's cookie, when no bearer token is sent.
    assert asyncio.run(auth.user_from_request(_request({"_token": token}), None)).get_name() == "alice"
    forged = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token[:-4] + "AAAA")
    for request, credentials in ((_request(), forged), (_request(), None)):
        with pytest.raises(HTTPException) as refused:
            asyncio.run(auth.user_from_request(request, credentials))
        assert refused.value.status_code in (401, 403)


def test_dag_team_mapping(airflow_api: object) -> None:
    from airflow.configuration import conf
    from airflow.models.dag import DagModel

    if not hasattr(DagModel, "get_dag_id_to_team_name_mapping"):
        # Airflow 3.1: no teams, and no multi-team mode that would make identity ask.
        assert not SINCE_3_2
        assert not conf.getboolean("core", "multi_team", fallback=False)
        return
    assert "dag_ids" in inspect.signature(DagModel.get_dag_id_to_team_name_mapping).parameters
    teams = auth.dag_teams(["seam_absent_dag"])
    assert set(teams) <= {"seam_absent_dag"}
    assert all(team is None or isinstance(team, str) for team in teams.values())


def test_filter_authorized_dag_ids_signature() -> None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager

    parameters = inspect.signature(BaseAuthManager.filter_authorized_dag_ids).parameters
    for name in ("dag_ids", "user", "method"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert ("team_name" in parameters) == SINCE_3_2


# ------------------------------------------------------------------------------ stats


def test_stats_client_counts_gauges_and_times() -> None:
    client = stats.stats_client()
    for method in ("incr", "gauge", "timing"):
        assert callable(getattr(client, method))
    assert {"stat", "count"} <= set(inspect.signature(client.incr).parameters)
    assert {"stat", "value"} <= set(inspect.signature(client.gauge).parameters)
    assert {"stat", "dt"} <= set(inspect.signature(client.timing).parameters)


def test_stats_copies_are_initialised_through_factory() -> None:
    if not SINCE_3_3:
        # One Stats, set up on first use: the seam must take it from where this Airflow keeps it
        # (3.2: airflow.sdk.observability.stats; 3.1: airflow.stats). Airflow 3.2 has the SDK's
        # _shared module already, but without 3.3's initialize and _factory.
        if SINCE_3_2:
            from airflow.sdk.observability.stats import Stats
        else:
            from airflow.stats import Stats

        assert stats.stats_client() is Stats
        if SINCE_3_2:
            import airflow.sdk._shared.observability.metrics.stats as sdk_stats

            assert not hasattr(sdk_stats, "initialize")
            # Set up from [metrics] where Airflow did not (here, a test process).
            assert type.__getattribute__(Stats, "factory") is not None
            import airflow.sdk.observability.metrics.stats_utils as stats_utils

            assert list(inspect.signature(stats_utils.get_stats_factory).parameters) == ["stats_cls"]
        return
    from airflow._shared.observability.metrics import stats as core_stats
    from airflow.sdk._shared.observability.metrics import stats as sdk_stats
    from airflow.sdk.observability.metrics import stats_utils

    for module in (core_stats, sdk_stats):
        assert hasattr(module, "_factory")
        assert {"factory", "export_legacy_names"} <= set(inspect.signature(module.initialize).parameters)
    assert callable(stats_utils.get_stats_factory())
    client = stats.stats_client()
    assert client in (core_stats, sdk_stats)
    assert getattr(client, "_factory", None) is not None, "the copy chosen is initialised"


# ------------------------------------------------------------------------------ CLI, providers


def test_cli_command_classes() -> None:
    from airflow.cli.cli_config import ActionCommand, GroupCommand

    from airflow_hitl.cli.definition import get_hitl_cli_commands

    (group,) = get_hitl_cli_commands()
    assert isinstance(group, GroupCommand) and group.name == "hitl"
    actions = [action for sub in group.subcommands for action in sub.subcommands]
    assert actions and all(isinstance(action, ActionCommand) for action in actions)
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    for action in actions:
        assert callable(action.func) and action.help
        command = subparsers.add_parser(f"{action.name}-{uuid.uuid4().hex[:4]}")
        for arg in action.args:
            arg.add_to_parser(command)  # what Airflow's parser does with each Arg
    listing = cli.argument(("--limit",), type=int, default=100, help="at most")
    probe = argparse.ArgumentParser()
    listing.add_to_parser(probe)
    assert probe.parse_args(["--limit", "7"]).limit == 7


def test_airflow_console_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    cli.print_rows([{"id": "a1", "state": "pending"}], output="json")
    assert json.loads(capsys.readouterr().out) == [{"id": "a1", "state": "pending"}]
    cli.print_rows([{"id": "a1", "state": "pending"}], output="plain")
    assert "a1" in capsys.readouterr().out


def test_arg_reaches_the_parser_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    from airflow.cli import cli_parser

    if SINCE_3_2:
        parser = cli_parser.get_parser()  # Airflow's own, with the provider's hitl group
    else:
        # Airflow 3.1 reads no provider's cli entry: the group is added as get_parser adds each.
        from airflow.cli.cli_config import DefaultHelpParser, core_commands

        from airflow_hitl.cli.definition import get_hitl_cli_commands

        parser = DefaultHelpParser(prog="airflow")
        subparsers = parser.add_subparsers(dest="subcommand")
        [version] = [command for command in core_commands if command.name == "version"]
        for command in (*get_hitl_cli_commands(), version):
            cli_parser._add_command(subparsers, command)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["hitl", "approvals", "list", "--sate", "pending"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # The command's parser reported it (the hook reached it through Arg.add_to_parser)...
    assert re.search(r"^usage: airflow hitl approvals list ", err, re.I | re.M), err
    assert "airflow hitl approvals list: error: unrecognized arguments: --sate pending" in err
    assert "GROUP_OR_COMMAND" not in err and len(err.splitlines()) < 15, err
    # ...while Airflow's own commands keep DefaultHelpParser's report: the whole help, then the error.
    with pytest.raises(SystemExit):
        parser.parse_args(["version", "--sate"])
    err = capsys.readouterr().err
    assert "airflow command error: unrecognized arguments: --sate, see help above" in err, err

    seen: list[argparse.ArgumentParser] = []
    probe = argparse.ArgumentParser(prog="probe")
    cli.argument(("--limit",), type=int, default=100, help="at most", on_parser=seen.append).add_to_parser(probe)
    assert seen == [probe] and probe.parse_args(["--limit", "7"]).limit == 7


def test_airflow_console_tables_keep_whole_columns(capsys: pytest.CaptureFixture[str]) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    long = "x" * 60
    rows = [{"id": i, **{f"column_{n}": f"{long} [b]{n}[/b]" for n in range(8)}} for i in ids]
    cli.print_rows(rows, output="table", whole=("id",), one_line=True)
    lines = capsys.readouterr().out.splitlines()
    # Not a terminal: Airflow's console is 200 columns wide, far too narrow for these rows.
    assert max(len(line.rstrip()) for line in lines) <= 200
    for approval_id in ids:
        [line] = [line for line in lines if approval_id in line]  # whole, and on one line
        assert line.count("\N{HORIZONTAL ELLIPSIS}") == 8, line
    cli.print_rows([{"field": "title", "value": f"{long} [b]bold[/b] :smile: {long} {long} {long}"}], output="table")
    shown = capsys.readouterr().out
    assert "[b]bold[/b] :smile:" in shown and len([line for line in shown.splitlines() if long in line]) > 1
    cli.print_rows([], output="table")
    assert "No data found" in capsys.readouterr().out


def test_provider_configuration_declares_hitl_options() -> None:
    from airflow.configuration import conf

    providers.load_provider_configuration()
    providers.load_provider_configuration()  # cached: a second call is harmless
    conf.__dict__.pop("sensitive_config_values", None)
    assert ("hitl", "signing_key") in conf.sensitive_config_values


def test_smtp_hook_keeps_its_logged_in_client(smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_SEAM_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "extra": {"disable_ssl": True, "disable_tls": True},
            }
        ),
    )
    with SmtpHook(smtp_conn_id="seam_smtp") as hook:
        client = smtp.logged_in_client(hook)
        assert client is not None
        assert client.noop()[0] == 250
        client.sendmail("a@example.com", ["b@example.com"], "Subject: seam\r\n\r\nbody")
    assert [str(m["Subject"]) for m in smtp_server.wait(1)] == ["seam"]
    assert smtp.logged_in_client(SmtpHook(smtp_conn_id="seam_smtp")) is None  # not entered: no session


def test_private_attributes_are_read_only_in_the_seam() -> None:
    # ruff's banned-api sees imports, not attributes: the private attributes the table lists are
    # looked for in every module of the package outside the seam.
    outside = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "airflow_hitl").rglob("*.py")
        if SEAM not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "_smtp_client" in line
    ]
    assert outside == []


# ------------------------------------------------------------------------------ dags


def test_dag_exists_reads_the_dag_table(airflow_api: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.settings
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_hitl.seam import dags

    assert DagModel.__table__.name == "dag"
    assert DagModel.__table__.c.dag_id.primary_key
    dag_id = f"seam_dag_{uuid.uuid4().hex[:8]}"
    assert dags.dag_exists(dag_id) is False
    with known_dags(dag_id):
        assert dags.dag_exists(dag_id) is True
        assert dags.dag_exists(dag_id.upper()) is False  # a DAG id is matched exactly
        # A process where Airflow set up no session (create_session raises RuntimeError): it cannot tell.
        monkeypatch.setattr(airflow.settings, "Session", None)
        assert dags.dag_exists(dag_id) is None
        monkeypatch.undo()
        assert dags.dag_exists(dag_id) is True
    with create_session() as session:
        assert session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id)) is None
    assert dags.dag_exists(dag_id) is False


def test_dag_being_defined_names_the_open_dag() -> None:
    from airflow.sdk import DAG

    from airflow_hitl.seam import dags

    assert dags.dag_being_defined() is None
    with DAG(dag_id="seam_outer", schedule=None):
        assert dags.dag_being_defined() == "seam_outer"
        with DAG(dag_id="seam_inner", schedule=None) as inner:
            assert dags.dag_being_defined() == "seam_inner"
        assert dags.dag_being_defined() == "seam_outer"
        assert dags.dag_being_defined(inner) == "seam_inner"  # an explicit dag= wins
    assert dags.dag_being_defined() is None


# ------------------------------------------------------------------------------ parking (Airflow 3.3+)


def _parked_row(key: task_instances.TaskKey) -> dict[str, Any]:
    """The columns of ``key``'s task instance that parking reads and writes."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    ti = TaskInstance
    with create_session() as session:
        row = session.execute(
            select(
                ti.id, ti.state, ti.try_number, ti.trigger_id, ti.trigger_timeout, ti.next_method, ti.next_kwargs
            ).where(ti.run_id == key.run_id)
        ).one()
    found = dict(row._mapping)
    found["state"] = None if row.state is None else str(getattr(row.state, "value", row.state))
    return found


def _trigger_rows() -> int:
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(session.scalar(select(func.count()).select_from(Trigger)) or 0)


@pytest.fixture
def parked_task_instance(
    task_instance: Callable[..., task_instances.TaskKey],
) -> Callable[..., task_instances.TaskKey]:
    """Write a task instance parked in ``awaiting_input`` as Airflow's Execution API leaves one."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    def write(
        *, request_id: str | None, deadline: dt.datetime | None, method_name: str = "execute_complete"
    ) -> task_instances.TaskKey:
        key = task_instance(state="running")
        kwargs = {} if request_id is None else {"request_id": request_id, "follow": None}
        with create_session() as session:
            session.execute(
                update(TaskInstance)
                .where(TaskInstance.run_id == key.run_id)
                .values(
                    state=task_instances.AWAITING_INPUT,
                    trigger_id=None,
                    next_method=method_name,
                    next_kwargs=kwargs,
                    trigger_timeout=deadline,
                )
            )
        return key

    return write


def test_a_task_parks_in_awaiting_input_without_a_trigger(
    task_instance: Callable[..., task_instances.TaskKey], dag_row: str
) -> None:
    from airflow_hitl.seam import parking
    from airflow_hitl.version_compat import HAS_AWAITING_INPUT

    assert HAS_AWAITING_INPUT == SINCE_3_3
    if not SINCE_3_3:
        # No such state before 3.3: the gate defers to its trigger, and the Task SDK has no exception for it.
        assert parking.can_park() is False
        import airflow.sdk.exceptions

        assert not hasattr(airflow.sdk.exceptions, "TaskAwaitingInput")
        return
    from airflow.sdk import TaskInstanceState
    from airflow.sdk.exceptions import TaskAwaitingInput
    from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor
    from airflow.sdk.execution_time.task_runner import _await_input_task

    assert TaskInstanceState.AWAITING_INPUT.value == task_instances.AWAITING_INPUT
    assert parking.can_park() is True, "a process with no in-process runner (a worker's task) parks"
    key = task_instance(state="running")
    follow = {"approve": ["deploy"], "reject": []}
    with pytest.raises(TaskAwaitingInput) as raised:
        parking.park(
            method_name="execute_complete",
            kwargs={"request_id": "seam-park", "follow": follow},
            timeout=dt.timedelta(minutes=5),
        )
    assert not issubclass(TaskAwaitingInput, Exception), "an operator's `except Exception` cannot swallow it"
    # What the task runner makes of it, sent to the Execution API as a worker's supervisor sends it.
    ti = _parked_row(key)
    runtime_ti = type("RuntimeTI", (), {"dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id})()
    message, state = _await_input_task(raised.value, runtime_ti, _quiet_log())  # type: ignore[arg-type]
    assert state == TaskInstanceState.AWAITING_INPUT
    triggers = _trigger_rows()
    before = utcnow()
    InProcessTestSupervisor._api_client().task_instances.await_input(ti["id"], message)
    row = _parked_row(key)
    assert (row["state"], row["trigger_id"], row["next_method"]) == ("awaiting_input", None, "execute_complete")
    assert row["next_kwargs"] == {"request_id": "seam-park", "follow": follow}, "stored as given"
    assert before + dt.timedelta(minutes=4) < row["trigger_timeout"] < utcnow() + dt.timedelta(minutes=6)
    assert _trigger_rows() == triggers, "no trigger row: no triggerer slot"
    # What the api-server reads of it: the light look of every parked gate, and the locked row.
    [parked] = [p for p in task_instances.parked_tasks(method_name="execute_complete") if p.key == key]
    assert parked == task_instances.ParkedTask(
        key=key, try_number=1, request_id="seam-park", backstop=row["trigger_timeout"]
    )
    with task_instances.hold_task_instance(key) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        assert held.state == "awaiting_input" and held.trigger() is None
        assert held.parked() == task_instances.ParkedRequest(
            method_name="execute_complete", request_id="seam-park", follow=follow
        )


@pytest.fixture
def dag_row(airflow_api: object) -> Iterator[str]:
    """A ``dag`` row for ``seam_dag``, as the dag processor writes one (the Execution API joins it)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    bundle = f"seam_bundle_{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        session.add(DagBundleModel(name=bundle))
        session.flush()
        session.add(
            DagModel(
                dag_id="seam_dag",
                bundle_name=bundle,
                max_active_tasks=1,
                max_consecutive_failed_dag_runs=0,
                has_task_concurrency_limits=False,
            )
        )
    yield "seam_dag"
    with create_session() as session:
        session.execute(delete(DagModel.__table__).where(DagModel.__table__.c.dag_id == "seam_dag"))
        session.execute(delete(DagBundleModel.__table__).where(DagBundleModel.__table__.c.name == bundle))


def _quiet_log() -> Any:
    import structlog

    return structlog.get_logger("seam-contract")


def test_the_in_process_runner_of_dags_test_never_parks(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_hitl.seam import parking

    if not SINCE_3_3:
        assert parking.can_park() is False
        return
    from airflow.sdk.execution_time import supervisor, task_runner

    # dag.test() runs each task through InProcessTestSupervisor, whose comms stand in for the
    # worker's socket (airflow.sdk.definitions.dag: it runs a trigger inline, never resumes a parked task).
    comms = object.__new__(supervisor.InProcessSupervisorComms)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    assert parking.can_park() is False
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
    assert parking.can_park() is True


def test_handle_event_submit_ends_a_parked_task(
    parked_task_instance: Callable[..., task_instances.TaskKey],
) -> None:
    # Skipped: Airflow ends it without a callback to a DAG file this metadata DB lacks (as above).
    from airflow.triggers.base import TaskSkippedEvent

    if not SINCE_3_3:
        return  # nothing parks before 3.3 (test_a_task_parks_in_awaiting_input_without_a_trigger)
    key = parked_task_instance(request_id="seam-end", deadline=utcnow() + dt.timedelta(hours=1))
    with task_instances.hold_task_instance(key) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        assert held.parked() == task_instances.ParkedRequest(
            method_name="execute_complete", request_id="seam-end", follow=None
        )
        assert held.still_deferred_on(None), "parked: still waiting"
        held.submit_event(TaskSkippedEvent())
        held.commit()
        assert not held.still_deferred_on(None)
    row = _parked_row(key)
    assert (row["state"], row["trigger_id"], row["try_number"]) == ("skipped", None, 1), "ended in place"
    assert not [p for p in task_instances.parked_tasks(method_name="execute_complete") if p.key == key]


def test_the_sweep_resumes_a_parked_task_past_its_deadline_with_a_timeout_event(
    parked_task_instance: Callable[..., task_instances.TaskKey],
) -> None:
    # Airflow's scheduler: check_awaiting_input_timeouts, every [scheduler] trigger_timeout_check_interval.
    import logging
    from types import SimpleNamespace

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    from airflow_hitl.seam import parking

    if not SINCE_3_3:
        assert not hasattr(SchedulerJobRunner, "check_awaiting_input_timeouts")
        return
    due = parked_task_instance(request_id="seam-due", deadline=utcnow() - dt.timedelta(seconds=1))
    ahead = parked_task_instance(request_id="seam-ahead", deadline=utcnow() + dt.timedelta(hours=1))
    never = parked_task_instance(request_id="seam-never", deadline=None)
    SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("seam.sweep")))  # type: ignore[arg-type]
    resumed = _parked_row(due)
    # No hitl_detail row (ours never has one): not failed, but resumed on a worker, same try,
    # with what it parked with and the sweep's timeout event.
    assert (resumed["state"], resumed["try_number"], resumed["next_method"]) == ("scheduled", 1, "execute_complete")
    kwargs = dict(resumed["next_kwargs"])
    event = kwargs.pop("event")
    assert kwargs == {"request_id": "seam-due", "follow": None}
    assert parking.is_timeout_event(event), event
    for waiting in (ahead, never):
        assert _parked_row(waiting)["state"] == "awaiting_input"


def test_trigger_timeout_is_the_parked_deadline(
    parked_task_instance: Callable[..., task_instances.TaskKey],
    task_instance: Callable[..., task_instances.TaskKey],
) -> None:
    import logging
    from types import SimpleNamespace

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance

    from airflow_hitl.seam import parking

    assert "trigger_timeout" in TaskInstance.__table__.c
    assert parking.backstop_deadline(None) is None
    expires = utcnow()
    assert parking.backstop_deadline(expires) == expires + parking.BACKSTOP_GRACE
    assert parking.backstop_timeout(expires - dt.timedelta(hours=1), now=expires) == parking.BACKSTOP_GRACE
    if not SINCE_3_3:
        return
    key = parked_task_instance(request_id="seam-move", deadline=utcnow() + dt.timedelta(hours=1))
    running = task_instance(state="running")
    earlier = utcnow() - dt.timedelta(seconds=1)
    moves = [
        task_instances.BackstopMove(key=key, try_number=2, deadline=earlier),  # another try: left alone
        task_instances.BackstopMove(key=running, try_number=1, deadline=earlier),  # not parked: left alone
    ]
    assert task_instances.move_backstops(moves) == 0
    assert _parked_row(running)["trigger_timeout"] is None
    assert task_instances.move_backstops([task_instances.BackstopMove(key=key, try_number=1, deadline=earlier)]) == 1
    [parked] = [p for p in task_instances.parked_tasks(method_name="execute_complete") if p.key == key]
    assert parked.backstop == earlier
    # The sweep acts on the moved deadline: the column is the one it reads.
    SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("seam.sweep")))  # type: ignore[arg-type]
    assert _parked_row(key)["state"] == "scheduled"


def test_tasks_parked_by_others_are_not_ours(parked_task_instance: Callable[..., task_instances.TaskKey]) -> None:
    if not SINCE_3_3:
        return
    # Airflow's own HITL operators park in execute_complete too, with no arguments of ours.
    native = parked_task_instance(request_id=None, deadline=None)
    other_method = parked_task_instance(request_id="seam-other", deadline=None, method_name="resume_here")
    found = {p.key for p in task_instances.parked_tasks(method_name="execute_complete")}
    assert native not in found and other_method not in found
    with task_instances.hold_task_instance(native) as held:
        assert isinstance(held, task_instances.HeldTaskInstance)
        parked = held.parked()
        assert parked is not None and parked.request_id is None

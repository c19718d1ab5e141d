"""The CLI: `airflow hitl ...` (provider CLI) and the `airflow-hitl` console script, run as users would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import migrate, schema_status
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from tests.cli.conftest import ServedApi
from tests.e2e.harness import create_database, drop_database, free_port
from tests.helpers import spec

BIN = Path(sys.executable).parent


def run(args: list[str], home: Path, *, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **env}
    full_env.pop("AIRFLOW_HITL_STORE_URL", None)
    return subprocess.run(
        args, env=full_env, capture_output=True, text=True, timeout=180, input=stdin if stdin is not None else ""
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failed command's error: exit status 1, one ``error:`` line on stderr, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


class TestConsoleScript:
    def test_migrate_twice_check_and_verify(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        script = str(BIN / "airflow-hitl")
        first = run([script, "db", "migrate", "--store-url", url], tmp_path)
        assert first.returncode == 0, first.stderr
        head = schema_status(ApprovalStore(url=f"sqlite:///{tmp_path / 'head.db'}")).head
        assert f"migrated from empty to {head}" in first.stdout
        second = run([script, "db", "migrate", "--store-url", url], tmp_path)
        assert f"already at revision {head}" in second.stdout
        assert run([script, "db", "check", "--store-url", url], tmp_path).returncode == 0

        manager = ApprovalManager(store=ApprovalStore(url=url))
        approval = manager.create(spec())
        manager.approve(approval.id, user=Principal.of("alice"))
        ok = run([script, "audit", "verify", "--store-url", url], tmp_path)
        assert ok.returncode == 0
        verdict = json.loads(ok.stdout)
        assert {k: verdict[k] for k in ("ok", "checked", "first_bad_seq", "problem")} == {
            "ok": True,
            "checked": 3,
            "first_bad_seq": None,
            "problem": None,
        }
        with manager.store.engine.begin() as conn:
            conn.execute(text("UPDATE approval_events SET actor = 'mallory' WHERE event_type = 'vote'"))
        bad = run([script, "audit", "verify", "--store-url", url], tmp_path)
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["first_bad_seq"] == 2

    def test_check_on_an_empty_store_fails_and_says_what_to_run(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'e.db'}"
        ApprovalStore(url=url).ping()  # an empty database file, never migrated
        result = run([str(BIN / "airflow-hitl"), "db", "check", "--store-url", url], tmp_path)
        assert result.returncode == 1
        assert "airflow hitl db migrate" in result.stderr

    @pytest.mark.parametrize("command", ["db check", "audit verify", "approvals list"], ids=lambda c: c.split()[0])
    def test_no_command_but_migrate_creates_a_store(self, tmp_path: Path, command: str) -> None:
        # The wrong AIRFLOW_HOME must be reported, not answered with a fresh empty store.
        result = run([str(BIN / "airflow-hitl"), *command.split()], tmp_path)
        assert result.returncode == 1
        assert f"there is no approval store at {tmp_path / 'hitl.db'}" in result.stderr
        assert f"AIRFLOW_HOME ({tmp_path})" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "hitl.db").exists()

    def test_a_conn_id_that_does_not_exist_fails_naming_it(self, tmp_path: Path) -> None:
        result = run([str(BIN / "airflow-hitl"), "db", "check", "--conn-id", "approvals_pg"], tmp_path)
        assert result.returncode == 1
        assert "connection 'approvals_pg' is not defined" in result.stderr
        assert not (tmp_path / "hitl.db").exists()

    def test_a_remote_executor_refuses_the_sqlite_fallback(self, tmp_path: Path) -> None:
        result = run([str(BIN / "airflow-hitl"), "db", "migrate"], tmp_path, AIRFLOW__CORE__EXECUTOR="CeleryExecutor")
        assert result.returncode == 1
        assert "'hitl_default' is not defined, and the executor CeleryExecutor" in result.stderr
        assert not (tmp_path / "hitl.db").exists()


def until_waiting(process: subprocess.Popen[str]) -> str:
    """The line ``db check --wait`` prints once it has found the store not ready (stderr, read as it comes)."""
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("waiting up to "):
            return line
    raise AssertionError(f"it never waited: exit status {process.wait()}")


class TestDbCheckWait:
    """``db check --wait SECONDS``: what an init container runs until the migration job is done."""

    @pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
    def test_waits_until_the_store_is_migrated(self, tmp_path: Path, backend: str) -> None:
        # SQLite: not even the file exists yet. PostgreSQL: an empty database.
        url = f"sqlite:///{tmp_path / 'later.db'}" if backend == "sqlite" else create_database("hitl_cliwait")
        try:
            env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
            env.pop("AIRFLOW_HITL_STORE_URL", None)
            waiting = subprocess.Popen(
                [str(BIN / "airflow-hitl"), "db", "check", "--wait", "170", "--store-url", url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                line = until_waiting(waiting)
                assert line.startswith("waiting up to 170 s for the approval store: "), line
                expected = "there is no approval store at" if backend == "sqlite" else "revision empty"
                assert expected in line and "airflow hitl db migrate" in line, line
                store = ApprovalStore(url=url)
                head = migrate(store).current
                store.dispose()
                out, err = waiting.communicate(timeout=120)
            finally:
                if waiting.poll() is None:
                    waiting.kill()
            assert waiting.returncode == 0, err
            assert f"revision {head}, code head {head}" in out
            assert "Traceback" not in err
        finally:
            if backend == "postgres":
                drop_database(url)

    def test_when_the_time_is_up_it_fails_as_the_check_does(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        ApprovalStore(url=url).ping()  # an empty database file, never migrated
        script = str(BIN / "airflow-hitl")
        once = run([script, "db", "check", "--store-url", url], tmp_path)
        waited = run([script, "db", "check", "--wait", "3", "--store-url", url], tmp_path)
        assert once.returncode == waited.returncode == 1
        assert waited.stdout == once.stdout and "revision empty" in once.stdout
        [said] = [line for line in waited.stderr.splitlines() if line.startswith("waiting up to")]
        assert said.startswith("waiting up to 3 s for the approval store: ")
        assert [line for line in waited.stderr.splitlines() if line != said] == once.stderr.splitlines()

    @pytest.mark.parametrize("wait", [[], ["--wait", "2"]], ids=["once", "waiting"])
    def test_an_unreachable_store_is_one_line(self, tmp_path: Path, wait: list[str]) -> None:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
        result = run([str(BIN / "airflow-hitl"), "db", "check", *wait, "--store-url", url], tmp_path)
        line = one_error_line(result)
        assert line.startswith("error: cannot reach the approval store ApprovalStore(postgresql+psycopg://"), line
        assert "refused" in line.lower()

    def test_a_store_that_names_nothing_is_not_waited_for(self, tmp_path: Path) -> None:
        # A connection that does not exist will not come into being: the error is at once.
        result = run([str(BIN / "airflow-hitl"), "db", "check", "--wait", "600", "--conn-id", "nope"], tmp_path)
        assert "connection 'nope' is not defined" in one_error_line(result)
        assert "waiting up to" not in result.stderr


@pytest.mark.slow
class TestAirflowCli:
    def test_provider_cli_uses_the_sqlite_fallback(self, tmp_path: Path) -> None:
        result = run([str(BIN / "airflow"), "hitl", "db", "migrate"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp_path / "hitl.db").exists()
        again = run([str(BIN / "airflow"), "hitl", "db", "check"], tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        for output in (result.stdout + result.stderr, again.stdout + again.stderr):
            # Alembic's INFO chatter ("Context impl SQLiteImpl", "Running upgrade") stays out.
            assert "Context impl" not in output
            assert "alembic" not in output

    def test_provider_cli_help_names_the_default_and_approvals_commands_run(
        self, tmp_path: Path, api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        help_text = run([str(BIN / "airflow"), "hitl", "db", "check", "--help"], tmp_path).stdout
        assert "(default: option conn_id of the hitl config section, hitl_default)" in " ".join(help_text.split())
        approve_help = " ".join(
            run([str(BIN / "airflow"), "hitl", "approvals", "approve", "--help"], tmp_path).stdout.split()
        )
        assert "option base_url of the hitl config section when set, else base_url of the api section" in approve_help
        approval = api_store.create(spec(requested_by="alice"))
        approve = [str(BIN / "airflow"), "hitl", "approvals", "approve", approval.id, "--api-url", served_api.url]
        refused = run(approve, tmp_path, AIRFLOW_HITL_TOKEN=served_api.token("alice"))
        assert "cannot approve it yourself" in one_error_line(refused)
        approved = run(approve, tmp_path, AIRFLOW_HITL_TOKEN=served_api.token("bob"))
        assert approved.returncode == 0, approved.stderr[-2000:]
        listed = run(
            [str(BIN / "airflow"), "hitl", "approvals", "list", "-o", "json", "--store-url", api_store.store.url],
            tmp_path,
        )
        assert [(r["id"], r["state"], r["decided_by"]) for r in json.loads(listed.stdout)] == [
            (approval.id, "approved", "bob")
        ]

    def test_provider_cli_refuses_a_named_user_in_one_line(
        self, tmp_path: Path, api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec())
        argv = [str(BIN / "airflow"), "hitl", "approvals", "approve", approval.id, "--user", "mallory"]
        line = one_error_line(run([*argv, "--api-url", served_api.url], tmp_path))
        assert "decisions act as the Airflow user of your token" in line
        assert api_store.queries.get(approval.id).votes == ()


@pytest.mark.slow
class TestDecisionsFromAShell:
    """The console script as a script runs it: the password on stdin, errors as one line."""

    def test_username_with_the_password_on_stdin(
        self, tmp_path: Path, api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        approval = api_store.create(spec())
        argv = [str(BIN / "airflow-hitl"), "approvals", "approve", approval.id, "--username", "alice"]
        result = run([*argv, "--api-url", served_api.url], tmp_path, stdin=served_api.password("alice") + "\n")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "approved, 1 of 1 approvals" in result.stdout
        decided = api_store.queries.get(approval.id)
        assert (decided.decided_by, decided.decision_source) == ("alice", "cli")

    @pytest.mark.parametrize(
        ("token", "expected"),
        [
            pytest.param("garbage", "401 Unauthorized", id="garbage-token"),
            pytest.param("viewer", "403 Forbidden", id="viewer"),
            pytest.param(None, "needs your own Airflow token", id="no-token"),
        ],
    )
    def test_a_refusal_is_one_line_and_records_nothing(
        self,
        tmp_path: Path,
        api_store: ApprovalManager,
        served_api: ServedApi,
        token: str | None,
        expected: str,
    ) -> None:
        approval = api_store.create(spec())
        env = {} if token is None else {"AIRFLOW_HITL_TOKEN": served_api.token(token) if token == "viewer" else token}
        argv = [str(BIN / "airflow-hitl"), "approvals", "approve", approval.id, "--api-url", served_api.url]
        assert expected in one_error_line(run(argv, tmp_path, **env))
        assert api_store.queries.get(approval.id).votes == ()

    def test_provider_cli_uses_the_connection(self, tmp_path: Path) -> None:
        target = tmp_path / "via_conn.db"
        result = run(
            [str(BIN / "airflow"), "hitl", "db", "migrate"],
            tmp_path,
            AIRFLOW_CONN_HITL_DEFAULT=json.dumps({"conn_type": "sqlite", "host": str(target)}),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert target.exists()
        assert not (tmp_path / "hitl.db").exists()

    @pytest.mark.postgres
    def test_provider_cli_uses_a_connection_stored_in_the_metadata_db(self, tmp_path: Path, pg_url: str) -> None:
        """`airflow connections add hitl_default`, then `airflow hitl db migrate`, as docs/deployment.md says."""
        from sqlalchemy import create_engine, inspect, make_url

        env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}"}
        airflow = str(BIN / "airflow")
        assert run([airflow, "db", "migrate"], tmp_path, **env).returncode == 0
        uri = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        added = run([airflow, "connections", "add", "hitl_default", "--conn-uri", uri], tmp_path, **env)
        assert added.returncode == 0, added.stderr[-2000:]
        result = run([airflow, "hitl", "db", "migrate"], tmp_path, **env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert str(make_url(pg_url).database) in result.stdout
        assert not (tmp_path / "hitl.db").exists()
        engine = create_engine(pg_url)
        try:
            assert "approval_requests" in inspect(engine).get_table_names()
        finally:
            engine.dispose()


class TestAuditCommands:
    """`audit verify` names the first row that differs from the audit trail; `db check` warns without a key."""

    KEY = "a long random audit key"

    def test_verify_names_a_rewritten_vote_and_needs_the_key(self, tmp_path: Path) -> None:
        from airflow_hitl.models.schema import migrate

        url = f"sqlite:///{tmp_path / 'audit.db'}"
        manager = ApprovalManager(store=ApprovalStore(url=url), audit_key=self.KEY)
        migrate(manager.store)
        approval = manager.create(spec())
        manager.approve(approval.id, user=Principal.of("alice"))
        verify = [str(BIN / "airflow"), "hitl", "audit", "verify", "--store-url", url]
        ok = run(verify, tmp_path, AIRFLOW__HITL__AUDIT_KEY=self.KEY)
        assert ok.returncode == 0, ok.stderr[-2000:]
        verdict = json.loads(ok.stdout)
        assert (verdict["ok"], verdict["keyed_from"], verdict["requests_verified"]) == (True, 1, 1)
        assert verdict["row"] is None

        with manager.store.engine.begin() as conn:
            conn.execute(text("""UPDATE approval_votes SET "user" = 'carol' WHERE "user" = 'alice'"""))
            vote_id = conn.execute(text("SELECT id FROM approval_votes")).scalar_one()
        bad = run(verify, tmp_path, AIRFLOW__HITL__AUDIT_KEY=self.KEY)
        assert bad.returncode == 1
        verdict = json.loads(bad.stdout)
        assert verdict["row"] == {
            "table": "approval_votes",
            "id": vote_id,
            "request_id": approval.id,
            "field": "user",
            "store": "carol",
            "chain": "alice",
            "seq": 2,
        }
        assert verdict["ok"] is False and f"approval_votes row {vote_id}: user" in verdict["problem"]

        without = run(verify, tmp_path, AIRFLOW__HITL__AUDIT_KEY="")
        assert without.returncode == 1
        assert "set [hitl] audit_key" in json.loads(without.stdout)["problem"]

    def test_db_check_warns_without_a_key_and_keeps_its_exit_status(self, tmp_path: Path) -> None:
        from airflow_hitl.models.schema import migrate

        url = f"sqlite:///{tmp_path / 'check.db'}"
        migrate(ApprovalStore(url=url))
        check = [str(BIN / "airflow"), "hitl", "db", "check", "--store-url", url]
        unkeyed = run(check, tmp_path, AIRFLOW__HITL__AUDIT_KEY="")
        assert unkeyed.returncode == 0, unkeyed.stderr[-2000:]
        [warning] = [line for line in unkeyed.stderr.splitlines() if "audit_key" in line]
        assert warning.startswith("warning: [hitl] audit_key is not set")
        keyed = run(check, tmp_path, AIRFLOW__HITL__AUDIT_KEY=self.KEY)
        assert keyed.returncode == 0 and "audit_key" not in keyed.stderr

"""`airflow-hitl standing list|create|revoke`: standing approvals from the command line, through the api-server.

The console script's ``main()`` runs in-process against Airflow's real api-server app served
on loopback (``served_api`` of tests/cli/conftest.py), deciding on the test's store (SQLite
and PostgreSQL), with real tokens of its SimpleAuthManager users: the approver of what
``create`` makes is the token's user, and the api-server decides what each user may list
and revoke. The DAGs a standing approval names are rows of Airflow's metadata DB
(``known_dags``). A refused command prints one line and changes nothing: the standing
approvals and the audit trail are compared before and after.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_hitl.cli.__main__ import main
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.vocabulary import STANDING_STATES
from tests.api.routes.test_standing import known_dags
from tests.cli.conftest import ServedApi
from tests.cli.test_approvals import TOKEN_HINT, cli, cli_error

#: The DAGs Airflow knows in these tests.
DAGS = ("billing", "nightly")
#: How a refusal of the api-server's for a field begins (``{url}``: the served api-server's).
UNPROCESSABLE = "error: 422 Unprocessable Entity from {url}: "


@pytest.fixture
def dags(served_api: ServedApi) -> Iterator[tuple[str, ...]]:
    """``billing`` and ``nightly`` are DAGs of the served api-server's metadata DB, for this test."""
    with known_dags(*DAGS):
        yield DAGS


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch, served_api: ServedApi) -> Callable[[str], None]:
    """Set ``AIRFLOW_HITL_TOKEN`` to a user's real token."""

    def use(user: str) -> None:
        monkeypatch.setenv("AIRFLOW_HITL_TOKEN", served_api.token(user))

    return use


def at(days: float) -> str:
    """A time ``days`` from now, as ISO 8601 in UTC with a ``Z``."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def on_api(served: ServedApi, *argv: str) -> tuple[str, ...]:
    """``argv`` sent to the served api-server."""
    return (*argv, "--api-url", served.url)


def create(capsys: pytest.CaptureFixture[str], served: ServedApi, *options: str) -> dict[str, Any]:
    """``standing create`` with ``options`` (a week, a comment, unless given): the record it prints."""
    argv = ["standing", "create", "--dag-id", "billing", "--comment", "nightly loads are fine", "-o", "json"]
    argv += ["--valid-until", at(7)]
    [record] = json.loads(cli(capsys, *on_api(served, *argv, *options)))
    assert isinstance(record, dict)
    return record


def listed(capsys: pytest.CaptureFixture[str], served: ServedApi, *options: str) -> list[dict[str, Any]]:
    """``standing list -o json`` with ``options``: the records it prints."""
    records = json.loads(cli(capsys, *on_api(served, "standing", "list", "-o", "json", *options)))
    assert isinstance(records, list)
    return records


def as_printed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as Airflow's console prints json and yaml: every value a text but null."""
    return {key: None if value is None else str(value) for key, value in record.items()}


def written(manager: ApprovalManager) -> tuple[Any, ...]:
    """Everything a standing command could write: the standing approvals and the audit trail."""
    standing, total = manager.standing.list(limit=10_000)
    return standing, total, [(e.seq, e.event_type) for e in manager.audit.events()]


class TestCreate:
    def test_as_the_tokens_user_through_the_api_server(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
    ) -> None:
        as_user("alice")
        record = create(capsys, served_api, "--task-id", "gate", "--max-uses", "3")
        assert (record["approver"], record["dag_id"], record["task_id"], record["state"]) == (
            "alice",
            "billing",
            "gate",
            "active",
        )
        # Numbers are texts, as in every json of Airflow's CLI.
        assert (record["max_uses"], record["uses_left"], record["comment"]) == ("3", "3", "nightly loads are fine")
        stored = api_store.standing.get(record["id"])
        assert (stored.approver, stored.max_uses, stored.valid_until.isoformat()) == (
            "alice",
            3,
            record["valid_until"],
        )
        # Audited as the command line's, with where it ran.
        event = api_store.audit.events()[-1]
        assert (event.event_type, event.actor, event.source) == ("standing_created", "alice", "cli")
        assert event.details["standing_approval_id"] == record["id"]
        assert event.details["hostname"] == socket.gethostname()

    def test_a_later_window_without_limit_and_the_table(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
    ) -> None:
        as_user("bob")
        # Any ISO 8601 offset: the window is kept as given, in UTC.
        starts = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).replace(microsecond=0)
        local = starts.astimezone(dt.timezone(dt.timedelta(hours=2)))
        argv = ["standing", "create", "--dag-id", "nightly", "--comment", "release week", "--valid-from"]
        table = cli(capsys, *on_api(served_api, *argv, local.isoformat(), "--valid-until", at(3)))
        [stored], _ = api_store.standing.list()
        assert (stored.approver, stored.dag_id, stored.task_id, stored.max_uses) == ("bob", "nightly", None, None)
        assert stored.valid_from == starts
        [row] = [line for line in table.splitlines() if stored.id in line]
        for shown in ("bob", "nightly", "every gate", "scheduled", "no limit", "release week"):
            assert shown in row, table

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            pytest.param(("--dag-id", ""), "error: --dag-id is required", id="no-dag"),
            pytest.param(("--comment", " "), "error: --comment is required", id="no-comment"),
            pytest.param(
                ("--valid-until", "next friday"),
                "error: --valid-until 'next friday' is not a date and time",
                id="valid-until-not-a-time",
            ),
            pytest.param(
                ("--valid-until", "2030-01-01T09:00:00"),
                "error: --valid-until '2030-01-01T09:00:00' has no time zone: add one, e.g. 2030-01-01T09:00:00Z",
                id="no-time-zone",
            ),
            pytest.param(
                ("--valid-from", "2030-01-01"),
                "error: --valid-from '2030-01-01' has no time zone",
                id="valid-from-a-day",
            ),
            pytest.param(
                ("--valid-until", "2020-01-01T00:00:00Z"),
                UNPROCESSABLE + "invalid `valid_until`: must be in the future",
                id="window-over",
            ),
            pytest.param(
                # A day longer than the maximum: the minutes a loaded machine takes change nothing.
                ("--valid-until", at(31)),
                UNPROCESSABLE + "invalid `valid_until`: must be at most 30 days after valid_from",
                id="longer-than-the-maximum",
            ),
            pytest.param(
                ("--max-uses", "0"),
                UNPROCESSABLE + "max_uses",
                id="no-uses",
            ),
            pytest.param(
                ("--dag-id", "no_such_dag"),
                UNPROCESSABLE + "invalid `dag_id`: no DAG 'no_such_dag' is known to Airflow",
                id="unknown-dag",
            ),
        ],
    )
    def test_bad_input_is_one_line_naming_it_and_writes_nothing(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
        options: tuple[str, ...],
        message: str,
    ) -> None:
        as_user("alice")
        given = dict(zip(options[::2], options[1::2], strict=True))
        fields = {"--dag-id": "billing", "--comment": "why", "--valid-until": at(7), **given}
        argv = ["standing", "create", *(part for pair in fields.items() for part in pair)]
        before = written(api_store)
        refused = cli_error(capsys, *on_api(served_api, *argv))
        assert refused.startswith(message.format(url=served_api.url)), refused
        assert written(api_store) == before

    @pytest.mark.parametrize("user", ["viewer", "nobody"])
    def test_who_could_not_decide_the_dags_gates_may_not_approve_them_ahead(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
        user: str,
    ) -> None:
        as_user(user)
        before = written(api_store)
        argv = ["standing", "create", "--dag-id", "billing", "--comment", "c", "--valid-until", at(1)]
        refused = cli_error(capsys, *on_api(served_api, *argv))
        assert refused.startswith(f"error: 403 Forbidden from {served_api.url}: "), refused
        assert "billing" in refused
        assert written(api_store) == before

    def test_without_a_token_nothing_is_sent(
        self, capsys: pytest.CaptureFixture[str], api_store: ApprovalManager, served_api: ServedApi
    ) -> None:
        argv = ["standing", "create", "--dag-id", "billing", "--comment", "c", "--valid-until", at(1)]
        assert TOKEN_HINT in cli_error(capsys, *on_api(served_api, *argv))
        assert written(api_store) == ([], 0, [])

    def test_a_count_that_is_not_a_number_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(["standing", "create", "--dag-id", "billing", "--max-uses", "many"])
        assert exit_info.value.code == 2
        assert "airflow-hitl standing create: error: argument --max-uses: invalid int value: 'many'" in (
            capsys.readouterr().err
        )


class TestList:
    def test_yours_and_an_admins_everyones(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
    ) -> None:
        as_user("alice")
        billing = create(capsys, served_api)
        nightly = create(capsys, served_api, "--dag-id", "nightly", "--max-uses", "2")
        as_user("bob")
        bobs = create(capsys, served_api)

        # Newest first; the records whole in json.
        assert [r["id"] for r in listed(capsys, served_api)] == [bobs["id"]]
        as_user("alice")
        mine = listed(capsys, served_api)
        assert [r["id"] for r in mine] == [nightly["id"], billing["id"]]
        assert mine[0] == as_printed(api_store.standing.get(nightly["id"]).to_dict(dt.datetime.now(dt.timezone.utc)))
        assert [r["id"] for r in listed(capsys, served_api, "--dag-id", "billing")] == [billing["id"]]
        assert [r["id"] for r in listed(capsys, served_api, "--limit", "1")] == [nightly["id"]]
        assert listed(capsys, served_api, "--approver", "alice") == mine
        refused = cli_error(capsys, *on_api(served_api, "standing", "list", "--approver", "bob"))
        assert refused.startswith(f"error: 403 Forbidden from {served_api.url}: only an admin"), refused

        as_user("admin")
        assert {r["id"] for r in listed(capsys, served_api)} == {billing["id"], nightly["id"], bobs["id"]}
        assert [r["id"] for r in listed(capsys, served_api, "--approver", "bob")] == [bobs["id"]]
        in_yaml = yaml.safe_load(
            cli(capsys, *on_api(served_api, "standing", "list", "--approver", "bob", "-o", "yaml"))
        )
        assert [(r["id"], r["approver"], r["uses_left"]) for r in in_yaml] == [(bobs["id"], "bob", None)]

        # The table: one line each, the id whole.
        table = cli(capsys, *on_api(served_api, "standing", "list", "--approver", "alice"))
        [row] = [line for line in table.splitlines() if nightly["id"] in line]
        assert "nightly" in row and "2 of 2" in row and "active" in row
        assert "No data found" in cli(capsys, *on_api(served_api, "standing", "list", "--dag-id", "nothing-here"))

    def test_by_state(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
    ) -> None:
        as_user("alice")
        active = create(capsys, served_api)
        later = create(capsys, served_api, "--valid-from", at(1), "--valid-until", at(2))
        revoked = create(capsys, served_api)
        cli(capsys, *on_api(served_api, "standing", "revoke", revoked["id"]))
        expected = {"active": [active["id"]], "scheduled": [later["id"]], "revoked": [revoked["id"]]}
        for state in STANDING_STATES:
            assert [r["id"] for r in listed(capsys, served_api, "--state", state)] == expected.get(state, []), state

    def test_an_unknown_state_is_named_before_anything_is_sent(self, capsys: pytest.CaptureFixture[str]) -> None:
        # No token and no api-server: the state is refused first.
        refused = cli_error(capsys, "standing", "list", "--state", "live", "--api-url", "http://127.0.0.1:9")
        assert refused == f"error: --state 'live' is not one of {', '.join(STANDING_STATES)}"

    def test_with_a_token_file(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
        tmp_path: Path,
    ) -> None:
        as_user("bob")
        bobs = create(capsys, served_api)
        token_file = tmp_path / "token"
        token_file.write_text(served_api.token("bob") + "\n")
        as_user("alice")
        # The file named on the command line wins over the environment.
        assert [r["id"] for r in listed(capsys, served_api, "--token-file", str(token_file))] == [bobs["id"]]


class TestRevoke:
    def test_yours_and_anyones_as_an_admin(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        dags: tuple[str, ...],
        as_user: Callable[[str], None],
    ) -> None:
        as_user("alice")
        alices = create(capsys, served_api)
        as_user("bob")
        bobs = create(capsys, served_api, "--max-uses", "4")

        [revoked] = json.loads(cli(capsys, *on_api(served_api, "standing", "revoke", bobs["id"], "-o", "json")))
        assert (revoked["id"], revoked["state"], revoked["revoked_by"], revoked["uses_left"]) == (
            bobs["id"],
            "revoked",
            "bob",
            "4",
        )
        assert api_store.standing.get(bobs["id"]).revoked_by == "bob"
        event = api_store.audit.events()[-1]
        assert (event.event_type, event.actor, event.source) == ("standing_revoked", "bob", "cli")
        assert event.details["standing_approval_id"] == bobs["id"]
        # Revoking again changes nothing and says where it stands.
        before = written(api_store)
        again = cli(capsys, *on_api(served_api, "standing", "revoke", bobs["id"]))
        [row] = [line for line in again.splitlines() if bobs["id"] in line]
        assert "revoked" in row
        assert written(api_store) == before

        # Someone else's is answered as an unknown one, and stays as it was.
        refused = cli_error(capsys, *on_api(served_api, "standing", "revoke", alices["id"]))
        assert refused.startswith(f"error: 404 Not Found from {served_api.url}: standing approval"), refused
        assert written(api_store) == before
        assert api_store.standing.get(alices["id"]).revoked_at is None

        as_user("admin")
        [by_admin] = yaml.safe_load(cli(capsys, *on_api(served_api, "standing", "revoke", alices["id"], "-o", "yaml")))
        assert (by_admin["approver"], by_admin["state"], by_admin["revoked_by"]) == ("alice", "revoked", "admin")

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            pytest.param((), "error: ID is required: the standing approval to revoke", id="no-id"),
            pytest.param(("not-an-id",), "error: 'not-an-id' is not a valid standing approval id", id="not-an-id"),
        ],
    )
    def test_a_missing_or_malformed_id_is_refused_before_anything_is_sent(
        self, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
    ) -> None:
        refused = cli_error(capsys, "standing", "revoke", *argv, "--api-url", "http://127.0.0.1:9")
        assert refused.startswith(message), refused

    def test_an_unknown_id_is_404(
        self,
        capsys: pytest.CaptureFixture[str],
        api_store: ApprovalManager,
        served_api: ServedApi,
        as_user: Callable[[str], None],
    ) -> None:
        as_user("admin")
        refused = cli_error(capsys, *on_api(served_api, "standing", "revoke", "00000000-0000-4000-8000-000000000000"))
        assert refused == (
            f"error: 404 Not Found from {served_api.url}: standing approval "
            "'00000000-0000-4000-8000-000000000000' not found"
        )


class TestAnApiServerThatDoesNotAnswer:
    """A call left unanswered may have been recorded: the message says where to look."""

    @pytest.fixture
    def silent_url(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        """A loopback port that takes connections and never answers; the client gives up at once."""
        import httpx

        from airflow_hitl.cli import client

        monkeypatch.setattr(client, "_TIMEOUT", httpx.Timeout(0.2, connect=15.0))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)  # the kernel completes the handshakes; nothing ever reads or answers
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"

    @pytest.mark.parametrize(
        ("argv", "outcome"),
        [
            pytest.param(
                ("create", "--dag-id", "billing", "--comment", "c", "--valid-until", "2099-01-01T00:00:00Z"),
                "it may or may not have been recorded: look with `airflow hitl standing list` before retrying",
                id="create",
            ),
            pytest.param(
                ("revoke", "00000000-0000-4000-8000-000000000000"),
                "it may or may not have been recorded: look with `airflow hitl standing list` before retrying",
                id="revoke",
            ),
            pytest.param(("list",), "nothing was changed", id="list"),
        ],
    )
    def test_says_whether_anything_may_have_changed(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        silent_url: str,
        argv: tuple[str, ...],
        outcome: str,
    ) -> None:
        monkeypatch.setenv("AIRFLOW_HITL_TOKEN", "a-token")
        refused = cli_error(capsys, "standing", *argv, "--api-url", silent_url)
        assert refused == f"error: no answer from the api-server at {silent_url} in time; {outcome}"

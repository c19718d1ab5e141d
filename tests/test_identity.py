"""identity: who a user is and what they may do, asked of a real SimpleAuthManager (in process).

The auth manager is Airflow's own, created the way the api-server creates it; the test puts
back whatever instance was there before (the API tests' session app keeps its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from airflow_hitl.identity import (
    EDIT,
    READ,
    authorized_dag_ids,
    find_user,
    is_admin,
    is_authorized_dag,
    principal_of,
    reads_every_dag,
    roles_of,
    team_names,
    user_known,
)
from airflow_hitl.policy import Principal

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
USERS = {"root": "admin", "olga": "op", "uma": "user", "vic": "viewer"}


@pytest.fixture
def no_auth_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process without an auth manager (a worker, the triggerer, the CLI)."""
    from airflow.api_fastapi.app import _AuthManagerState

    monkeypatch.setattr(_AuthManagerState, "instance", None)


@pytest.fixture
def simple(monkeypatch: pytest.MonkeyPatch, no_auth_manager: None) -> Iterator[Any]:
    """Airflow's SimpleAuthManager with the users of ``USERS``, as the api-server creates it."""
    from airflow.api_fastapi.app import create_auth_manager

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in USERS.items()))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "False")
    yield create_auth_manager()


def simple_user(name: str) -> Any:
    """The SimpleAuthManager user called ``name``."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return SimpleAuthManagerUser(username=name, role=USERS.get(name))


class TestPrincipal:
    def test_a_simple_auth_manager_user_has_its_one_role(self) -> None:
        assert principal_of(simple_user("olga")) == Principal.of("olga", ["op"])

    def test_a_user_without_a_role_has_none(self) -> None:
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        assert principal_of(SimpleAuthManagerUser(username="x", role=None)) == Principal.of("x")

    def test_a_fab_user_has_the_names_of_its_role_objects(self) -> None:
        models = pytest.importorskip("airflow.providers.fab.auth_manager.models")
        roles = [models.Role(name="Admin"), models.Role(name="Op")]
        user = models.User(username="fay", first_name="Fay", last_name="B", roles=roles)
        assert principal_of(user) == Principal.of("fay", ["Admin", "Op"])


class TestWithoutAnAuthManager:
    @pytest.mark.usefixtures("no_auth_manager")
    def test_nothing_is_known_and_nobody_is_admin(self) -> None:
        assert find_user(name="root") == (False, None)
        assert user_known("root") is None
        assert roles_of("root") is None
        assert is_admin(simple_user("root")) is False

    def test_an_auth_manager_that_lists_no_users_cannot_tell(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.api_fastapi.app import _AuthManagerState

        class Other:
            """An auth manager with neither SimpleAuthManager's users nor FAB's security manager."""

        monkeypatch.setattr(_AuthManagerState, "instance", Other())
        assert find_user(name="root") == (True, None)
        assert user_known("root") is None
        assert roles_of("root") is None
        assert is_admin(simple_user("root")) is False


class TestSimpleAuthManager:
    @pytest.mark.usefixtures("simple")
    def test_users_are_found_by_name(self) -> None:
        available, user = find_user(name="olga")
        assert available and user is not None
        assert (user.get_name(), user.role) == ("olga", "op")
        assert find_user(name="ghost") == (True, None)
        assert find_user(email="olga@example.com") == (True, None)  # it keeps no email addresses
        assert (user_known("olga"), user_known("ghost")) == (True, False)
        assert roles_of("vic") == frozenset({"viewer"})
        assert roles_of("ghost") is None

    @pytest.mark.usefixtures("simple")
    def test_admin_is_the_admin_role(self) -> None:
        assert is_admin(simple_user("root"))
        assert not is_admin(simple_user("olga"))

    def test_all_admins_makes_everyone_one(self, simple: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        assert is_admin(simple_user("vic"))

    @pytest.mark.usefixtures("simple")
    def test_dag_access_reads_and_edits(self) -> None:
        viewer, user = simple_user("vic"), simple_user("uma")
        assert is_authorized_dag(viewer, method=READ, dag_id="payroll")
        assert not is_authorized_dag(viewer, method=EDIT, dag_id="payroll")
        assert is_authorized_dag(user, method=EDIT, dag_id="payroll")
        assert authorized_dag_ids(viewer, method=READ, dag_ids=["a", "b", "a"]) == {"a", "b"}
        assert authorized_dag_ids(viewer, method=EDIT, dag_ids=["a", "b"]) == set()
        assert authorized_dag_ids(user, method=EDIT, dag_ids=[]) == set()

    @pytest.mark.usefixtures("simple")
    def test_only_the_admin_reads_every_dag_without_being_asked_dag_by_dag(self) -> None:
        # SimpleAuthManager says yes to its admin role before it looks at the DAG or its team.
        assert reads_every_dag(simple_user("root"))
        assert reads_every_dag(team_user("Anonymous", "ADMIN", []))  # simple_auth_manager_all_admins' user
        assert not any(reads_every_dag(simple_user(name)) for name in ("olga", "uma", "vic"))

    @pytest.mark.usefixtures("simple")
    def test_teams_only_in_multi_team_mode(self) -> None:
        # Without multi-team mode no DAG has a team, and Airflow's metadata DB is not asked.
        assert team_names(["a", "b"]) == {"a": None, "b": None}
        assert team_names([]) == {}


# ------------------------------------------------------------------ DAGs of teams (multi-team mode)

#: The DAGs of the multi-team tests: DAG -> the team owning its bundle (None: a bundle of no team).
TEAM_DAGS: dict[str, str | None] = {"teams_red_payroll": "red", "teams_blue_payroll": "blue", "teams_shared": None}
#: A DAG Airflow's metadata DB does not have (deleted, or never parsed): its approvals outlive it.
GONE_DAG = "teams_gone"


@contextmanager
def airflow_dags(dags: dict[str, str | None]) -> Iterator[None]:
    """DAG rows in Airflow's metadata DB, each in a bundle of its team, while the block runs.

    Needs the ``airflow_api`` fixture (its migrated metadata DB). Rows the dag processor would
    write, with only the columns a DAG row cannot do without; all of them are removed after.
    """
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    teams = sorted({team for team in dags.values() if team is not None})
    bundles = {dag_id: f"{dag_id}_bundle" for dag_id in dags}
    with create_session() as session:
        rows = {name: Team(name=name) for name in teams}
        session.add_all(rows.values())
        for dag_id, team in dags.items():
            session.add(DagBundleModel(name=bundles[dag_id]))
            session.flush()
            bundle = session.get(DagBundleModel, bundles[dag_id])
            if team is not None:
                bundle.teams.append(rows[team])
            session.add(
                DagModel(
                    dag_id=dag_id,
                    bundle_name=bundles[dag_id],
                    max_active_tasks=1,
                    max_consecutive_failed_dag_runs=0,
                    has_task_concurrency_limits=False,
                )
            )
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(delete(DagModel).where(DagModel.dag_id.in_(list(dags))))
            for name in bundles.values():
                bundle = session.get(DagBundleModel, name)
                if bundle is not None:
                    bundle.teams.clear()
                    session.delete(bundle)
            session.flush()
            session.execute(delete(Team).where(Team.name.in_(teams)))


def team_user(name: str, role: str, teams: list[str]) -> Any:
    """A SimpleAuthManager user of ``role`` in ``teams`` (as its token deserialises in multi-team mode)."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return SimpleAuthManagerUser(username=name, role=role, teams=teams)


@pytest.fixture
def multi_team(simple: Any, airflow_api: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """SimpleAuthManager in multi-team mode over Airflow's metadata DB holding :data:`TEAM_DAGS`."""
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    with airflow_dags(TEAM_DAGS):
        yield simple


class TestMultiTeam:
    """A viewer of one team reads that team's DAGs and those of no team, never another team's."""

    def test_teams_come_from_the_dags_bundles(self, multi_team: Any) -> None:
        assert team_names([*TEAM_DAGS, GONE_DAG]) == TEAM_DAGS  # the gone DAG's team cannot be known

    def test_the_auth_manager_says_yes_without_a_dag_to_a_viewer_of_any_team(self, multi_team: Any) -> None:
        # The question without a DAG is "may they read DAGs of no team": no promise about every DAG.
        rita = team_user("rita", "viewer", ["red"])
        assert multi_team.is_authorized_dag(method=READ, user=rita, details=None)
        assert not reads_every_dag(rita)

    def test_a_team_viewer_reads_their_teams_dags_and_those_of_no_team(self, multi_team: Any) -> None:
        rita = team_user("rita", "viewer", ["red"])
        candidates = [*TEAM_DAGS, GONE_DAG]
        assert authorized_dag_ids(rita, method=READ, dag_ids=candidates) == {"teams_red_payroll", "teams_shared"}
        verdicts = {dag_id: is_authorized_dag(rita, method=READ, dag_id=dag_id) for dag_id in candidates}
        assert verdicts == {
            "teams_red_payroll": True,
            "teams_blue_payroll": False,
            "teams_shared": True,
            GONE_DAG: False,
        }

    def test_a_team_user_edits_only_their_teams_dags(self, multi_team: Any) -> None:
        ulla = team_user("ulla", "user", ["blue"])
        assert authorized_dag_ids(ulla, method=EDIT, dag_ids=[*TEAM_DAGS, GONE_DAG]) == {
            "teams_blue_payroll",
            "teams_shared",
        }
        assert not is_authorized_dag(ulla, method=EDIT, dag_id="teams_red_payroll")

    def test_the_admin_reads_every_dag_of_every_team_and_the_gone_ones(self, multi_team: Any) -> None:
        root = team_user("root", "admin", [])
        assert reads_every_dag(root)
        assert authorized_dag_ids(root, method=READ, dag_ids=[*TEAM_DAGS, GONE_DAG]) == {*TEAM_DAGS, GONE_DAG}
        assert is_authorized_dag(root, method=EDIT, dag_id=GONE_DAG)

    def test_a_member_of_both_teams_still_does_not_read_a_gone_dag(self, multi_team: Any) -> None:
        # A gone DAG may have been a third team's, or one made since: only who reads everything sees it.
        both = team_user("bo", "op", ["red", "blue"])
        assert authorized_dag_ids(both, method=READ, dag_ids=[*TEAM_DAGS, GONE_DAG]) == set(TEAM_DAGS)


# ------------------------------------------------------------------------------ FabAuthManager

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


@pytest.fixture
def fab(monkeypatch: pytest.MonkeyPatch, no_auth_manager: None) -> Iterator[Any]:
    """Airflow's FabAuthManager, as the api-server creates it (its questions need no Flask app)."""
    pytest.importorskip("airflow.providers.fab.auth_manager.fab_auth_manager")
    from airflow.api_fastapi.app import create_auth_manager

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", FAB_AUTH_MANAGER)
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "False")
    yield create_auth_manager()


def fab_user(name: str, role: str, *grants: tuple[str, str]) -> Any:
    """A FAB user of one role holding ``grants`` ((action, resource) pairs), as FAB's tables hold them.

    Outside a Flask request FAB reads a user's permissions from their role objects, so these
    are the answers FAB gives for the same rows in its database.
    """
    from airflow.providers.fab.auth_manager.models import Action, Permission, Resource, Role, User

    permissions = [
        Permission(action=Action(name=action), resource=Resource(name=resource)) for action, resource in grants
    ]
    return User(username=name, first_name=name, last_name="Example", roles=[Role(name=role, permissions=permissions)])


class TestFabAuthManager:
    """FAB grants DAGs one by one (``DAG:<id>``) or all at once (``DAGs``)."""

    def test_read_access_to_one_dag_is_not_read_access_to_every_dag(self, fab: Any) -> None:
        dora = fab_user("dora", "BillingReaders", ("can_read", "DAG:billing"))
        # FAB answers the question without a DAG with "may list DAGs": yes, for one readable DAG.
        assert fab.is_authorized_dag(method=READ, user=dora, details=None)
        assert not reads_every_dag(dora)
        assert authorized_dag_ids(dora, method=READ, dag_ids=["billing", "payroll"]) == {"billing"}
        assert is_authorized_dag(dora, method=READ, dag_id="billing")
        assert not is_authorized_dag(dora, method=READ, dag_id="payroll")
        assert authorized_dag_ids(dora, method=EDIT, dag_ids=["billing", "payroll"]) == set()

    def test_read_access_to_the_dags_resource_reads_every_dag(self, fab: Any) -> None:
        vera = fab_user("vera", "Viewer", ("can_read", "DAGs"))
        assert authorized_dag_ids(vera, method=READ, dag_ids=["billing", "payroll"]) == {"billing", "payroll"}
        assert not is_authorized_dag(vera, method=EDIT, dag_id="billing")
        # No shortcut for FAB: whether a role holds "DAGs" is FAB's to answer, DAG by DAG.
        assert not reads_every_dag(vera)

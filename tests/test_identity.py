"""identity: who a user is and what they may do, asked of a real SimpleAuthManager (in process).

The auth manager is Airflow's own, created the way the api-server creates it; the test puts
back whatever instance was there before (the API tests' session app keeps its own).
"""

from __future__ import annotations

from collections.abc import Iterator
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
        assert is_authorized_dag(user, method=EDIT, dag_id=None)
        assert authorized_dag_ids(viewer, method=READ, dag_ids=["a", "b", "a"]) == {"a", "b"}
        assert authorized_dag_ids(viewer, method=EDIT, dag_ids=["a", "b"]) == set()
        assert authorized_dag_ids(user, method=EDIT, dag_ids=[]) == set()

    @pytest.mark.usefixtures("simple")
    def test_teams_only_in_multi_team_mode(self) -> None:
        # Without multi-team mode no DAG has a team, and Airflow's metadata DB is not asked.
        assert team_names(["a", "b"]) == {"a": None, "b": None}
        assert team_names([]) == {}

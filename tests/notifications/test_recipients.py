"""UserDirectory: Airflow users to email addresses and Slack ids, roles to members, nothing guessed.

Configured through ``[hitl]`` options and SimpleAuthManager's user list (environment
variables, read as Airflow reads them); the auth manager is left out (``use_auth_manager``
off): no process here has one.
"""

from __future__ import annotations

import json
import logging

import pytest

from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.recipients import UserDirectory


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> UserDirectory:
    """alice and bob with emails and Slack ids; leads and ops as roles; SimpleAuthManager's users."""
    monkeypatch.setenv("AIRFLOW__HITL__USER_EMAILS", json.dumps({"alice": "Alice@Example.com", "bob": "not-an-email"}))
    monkeypatch.setenv("AIRFLOW__HITL__SLACK_USERS", json.dumps({"alice": "UALICE001", "bob": "UBOB00001"}))
    monkeypatch.setenv("AIRFLOW__HITL__ROLE_MEMBERS", json.dumps({"leads": ["alice", "bob"], "ops": ["carol"]}))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "dave:ops, erin:admin,carol:ops,:nobody")
    return UserDirectory(settings=NotifySettings.load(), use_auth_manager=False)


def test_email_of_a_configured_user_or_an_address(directory: UserDirectory) -> None:
    assert directory.email_of("alice") == "Alice@Example.com"
    assert directory.email_of("frank@example.org") == "frank@example.org"
    # Configured, but whatever is configured is passed on as it is: the channel reports it.
    assert directory.email_of("bob") == "not-an-email"
    assert directory.email_of("carol") is None


def test_slack_ids_both_ways(directory: UserDirectory) -> None:
    assert directory.slack_id_of("alice") == "UALICE001"
    assert directory.slack_id_of("W0123ABCD") == "W0123ABCD"  # already a member id
    assert directory.slack_id_of("carol") is None
    assert directory.slack_id_of("U12") is None  # too short to be an id
    assert directory.user_for_slack_id("UBOB00001") == "bob"
    assert directory.user_for_slack_id("UNKNOWN01") is None


def test_user_for_email_ignores_case_and_spaces(directory: UserDirectory) -> None:
    assert directory.user_for_email(" alice@EXAMPLE.com ") == "alice"
    assert directory.user_for_email("mallory@example.com") is None


def test_roles_resolve_to_configured_members_and_simple_auth_users(directory: UserDirectory) -> None:
    assert directory.members_of("leads") == ["alice", "bob"]
    # [hitl] role_members first, then SimpleAuthManager's users of that role, each once.
    assert directory.members_of("ops") == ["carol", "dave"]
    assert directory.members_of("admin") == ["erin"]
    assert directory.members_of("nobody") == []
    assert directory.roles_of("carol") == ["ops"]
    assert directory.roles_of("alice") == ["leads"]
    assert directory.roles_of("erin") == ["admin"]
    assert directory.roles_of("zoe") == []


def test_expand_names_users_then_role_members_once(directory: UserDirectory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_hitl.notifications.recipients"):
        out = directory.expand(["bob", "", "zoe"], ["leads", "ghosts", "ops"])
    assert out == ["bob", "zoe", "alice", "carol", "dave"]
    assert "'ghosts' has no known members" in caplog.text

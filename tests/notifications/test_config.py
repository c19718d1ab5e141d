"""The typed view of the notification options (:class:`airflow_hitl.notifications.config.NotifySettings`).

Set through environment variables, read as Airflow reads them. A JSON option that is not a
JSON object is logged and ignored rather than failing every notice; numbers below zero are
taken as zero; a number that is not one is an error naming the option.
"""

from __future__ import annotations

import json
import logging

import pytest

from airflow_hitl.exceptions import ConfigInvalid
from airflow_hitl.notifications.config import NotifySettings


def test_every_option_is_read_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "NOTIFY_SMTP_CONN_ID": "ops_smtp",
        "NOTIFY_SLACK_CONN_ID": "ops_slack",
        "NOTIFY_WEBHOOK_CONN_ID": "ops_hook",
        "NOTIFY_FROM_EMAIL": "gates@example.com",
        "NOTIFY_MAX_RETRIES": "5",
        "NOTIFY_RETRY_BACKOFF": "1.5",
        "NOTIFY_RETRY_MAX_BACKOFF": "90",
        "USER_EMAILS": json.dumps({"alice": "alice@example.com"}),
        "SLACK_USERS": json.dumps({"alice": "UALICE001"}),
        "ROLE_MEMBERS": json.dumps({"leads": ["alice", "bob"]}),
        "LINK_MAX_AGE": "3600",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"AIRFLOW__HITL__{key}", value)
    assert NotifySettings.load() == NotifySettings(
        smtp_conn_id="ops_smtp",
        slack_conn_id="ops_slack",
        webhook_conn_id="ops_hook",
        from_email="gates@example.com",
        max_retries=5,
        retry_backoff=1.5,
        retry_max_backoff=90.0,
        user_emails={"alice": "alice@example.com"},
        slack_users={"alice": "UALICE001"},
        role_members={"leads": ["alice", "bob"]},
        link_max_age=3600.0,
    )


def test_negative_retries_and_backoffs_are_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_MAX_RETRIES", "-3")
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF", "-1")
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_MAX_BACKOFF", "-0.5")
    settings = NotifySettings.load()
    assert (settings.max_retries, settings.retry_backoff, settings.retry_max_backoff) == (0, 0.0, 0.0)


def test_mapping_values_are_text_and_roles_only_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__HITL__USER_EMAILS", json.dumps({"alice": "a@example.com", "robot": 7}))
    monkeypatch.setenv("AIRFLOW__HITL__ROLE_MEMBERS", json.dumps({"leads": ["alice", 2], "ops": "carol"}))
    settings = NotifySettings.load()
    assert settings.user_emails == {"alice": "a@example.com", "robot": "7"}
    # A role whose members are not a list is left out, not split into letters.
    assert settings.role_members == {"leads": ["alice", "2"]}


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        pytest.param("{not json", "[hitl] slack_users is not valid JSON; ignoring it", id="not-json"),
        pytest.param('["UALICE001"]', "[hitl] slack_users must be a JSON object; ignoring it", id="a-list"),
    ],
)
def test_a_json_option_that_is_no_object_is_logged_and_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str, logged: str
) -> None:
    monkeypatch.setenv("AIRFLOW__HITL__SLACK_USERS", raw)
    monkeypatch.setenv("AIRFLOW__HITL__USER_EMAILS", json.dumps({"alice": "a@example.com"}))
    with caplog.at_level(logging.ERROR, logger="airflow_hitl.notifications.config"):
        settings = NotifySettings.load()
    assert settings.slack_users == {}
    assert settings.user_emails == {"alice": "a@example.com"}, "the other options still apply"
    assert logged in caplog.text
    assert raw not in caplog.text, "the value itself is not logged"


def test_blank_json_options_are_empty(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for key in ("USER_EMAILS", "SLACK_USERS", "ROLE_MEMBERS"):
        monkeypatch.setenv(f"AIRFLOW__HITL__{key}", "  ")
    with caplog.at_level(logging.ERROR, logger="airflow_hitl.notifications.config"):
        settings = NotifySettings.load()
    assert (settings.user_emails, settings.slack_users, settings.role_members) == ({}, {}, {})
    assert caplog.text == ""


def test_a_number_that_is_not_one_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read as Airflow's conf.getint / getfloat read them: never silently the default.
    monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_MAX_RETRIES", "three")
    monkeypatch.setenv("AIRFLOW__HITL__LINK_MAX_AGE", "a week")
    with pytest.raises(ConfigInvalid) as err:
        NotifySettings.load()
    assert err.value.options == ["notify_max_retries", "link_max_age"]
    assert "[hitl] notify_max_retries: 'three' is not an integer" in str(err.value)

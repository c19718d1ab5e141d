"""Who gets a notice, and where: Airflow user names to email addresses and Slack member ids.

Resolution order for a user's email: a value that already is an address; ``[hitl]
user_emails``; the auth manager's user record where the process has one (FabAuthManager
users carry an email; only the api-server has an initialised auth manager). Slack ids come
from ``[hitl] slack_users`` (or a value that already is a Slack id). Roles resolve to
members through ``[hitl] role_members`` and SimpleAuthManager's ``[core]
simple_auth_manager_users``. Anything unresolved is reported, never guessed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from airflow_hitl.identity import find_user
from airflow_hitl.notifications.config import NotifySettings

log = logging.getLogger(__name__)

_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _simple_auth_users() -> dict[str, str]:
    # SimpleAuthManager's "alice:admin,bob:op": the only place its users and roles live.
    try:
        from airflow.configuration import conf

        raw = conf.get("core", "simple_auth_manager_users", fallback="") or ""
    except Exception:
        return {}
    users: dict[str, str] = {}
    for item in raw.split(","):
        name, _, role = item.strip().partition(":")
        if name:
            users[name.strip()] = role.strip()
    return users


def _auth_manager_record(name: str) -> Any | None:
    # Only the api-server initialises an auth manager; elsewhere this quietly finds nothing.
    return find_user(name=name)[1]


class UserDirectory:
    """Maps Airflow users to emails and Slack ids, and roles to users (both directions)."""

    def __init__(self, *, settings: NotifySettings | None = None, use_auth_manager: bool = True) -> None:
        self.settings = settings or NotifySettings.load()
        self.use_auth_manager = use_auth_manager
        self._simple = _simple_auth_users()

    def email_of(self, user: str) -> str | None:
        """The email address of ``user`` (or ``user`` itself when it is one)."""
        if _EMAIL.match(user):
            return user
        if user in self.settings.user_emails:
            return self.settings.user_emails[user]
        if self.use_auth_manager:
            record = _auth_manager_record(user)
            email = getattr(record, "email", None)
            if isinstance(email, str) and _EMAIL.match(email):
                return email
        return None

    def slack_id_of(self, user: str) -> str | None:
        """The Slack member id of ``user`` (or ``user`` itself when it is one)."""
        if user in self.settings.slack_users:
            return self.settings.slack_users[user]
        return user if _SLACK_ID.match(user) else None

    def user_for_slack_id(self, slack_id: str) -> str | None:
        """The Airflow user configured for a Slack member id."""
        for user, value in self.settings.slack_users.items():
            if value == slack_id:
                return user
        return None

    def user_for_email(self, email: str) -> str | None:
        """The Airflow user whose configured email is ``email`` (case-insensitive)."""
        wanted = email.strip().lower()
        for user, value in self.settings.user_emails.items():
            if value.strip().lower() == wanted:
                return user
        if self.use_auth_manager:
            record = find_user(email=email)[1]
            name = getattr(record, "username", None)
            if isinstance(name, str) and name:
                return name
        return None

    def members_of(self, role: str) -> list[str]:
        """Users holding ``role``: ``[hitl] role_members`` plus SimpleAuthManager's users."""
        members = list(self.settings.role_members.get(role, []))
        members += [user for user, user_role in self._simple.items() if user_role == role]
        return list(dict.fromkeys(members))

    def roles_of(self, user: str) -> list[str]:
        """Roles of ``user`` as far as this directory knows them (for link and Slack votes)."""
        roles = [role for role, members in self.settings.role_members.items() if user in members]
        if self._simple.get(user):
            roles.append(self._simple[user])
        return list(dict.fromkeys(roles))

    def expand(self, users: Iterable[str], roles: Iterable[str]) -> list[str]:
        """Users named, then the members of each role, each once, in order."""
        out = list(users)
        for role in roles:
            members = self.members_of(role)
            if not members:
                log.warning("notification role %r has no known members ([hitl] role_members)", role)
            out += members
        return list(dict.fromkeys(u for u in out if u))

"""Errors raised by airflow-hitl.

Each domain error carries the HTTP status the REST API answers with, so the routes
stay thin and every caller (API, UI, links, Slack, CLI) reports the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class HitlError(Exception):
    """Base class for every airflow-hitl error."""

    status_code: int = 500


class InvalidInput(ValueError, HitlError):
    """A value given to airflow-hitl is wrong; the message names the field."""

    status_code = 422
    prefix = "invalid"

    def __init__(self, field: str, message: str, *, problems: Sequence[tuple[str, str]] = (), where: str = "") -> None:
        #: Every ``(field, message)`` found; ``field``/``message`` are the first of them.
        self.problems = list(problems) or [(field, message)]
        self.field, self.message = self.problems[0]
        self.where = where
        super().__init__(self._text())

    @classmethod
    def of(cls, problems: Sequence[tuple[str, str]], *, where: str = "") -> Self:
        """One error naming every problem (at least one), e.g. all wrong options of a task."""
        return cls(problems[0][0], problems[0][1], problems=problems, where=where)

    def _text(self) -> str:
        where = f" {self.where}" if self.where else ""
        if len(self.problems) == 1:
            return f"{self.prefix} `{self.field}`{where}: {self.message}"
        lines = "".join(f"\n  - `{field}`: {message}" for field, message in self.problems)
        return f"{self.prefix} options{where} ({len(self.problems)} problems):{lines}"


class InvalidApprovalConfig(InvalidInput):
    """An approval gate was configured wrongly; raised when the DAG is parsed.

    The message always names the offending field so a DAG author can fix it at once.
    """

    prefix = "ApprovalOperator: invalid"


class ApprovalNotFound(HitlError):
    """No approval request with the given id exists."""

    status_code = 404

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"approval request {request_id!r} not found")


class ApprovalConflict(HitlError):
    """The request cannot take this action in its current state (decided, expired, already voted)."""

    status_code = 409


class ApprovalNotPending(ApprovalConflict):
    """The request is no longer waiting for a decision."""

    def __init__(self, request_id: str, state: str, detail: str | None = None) -> None:
        self.request_id = request_id
        self.state = state
        super().__init__(detail or f"approval request {request_id} is {state}, not pending")


class AlreadyVoted(ApprovalConflict):
    """The user has already voted on this request; one person counts once."""

    def __init__(self, request_id: str, user: str, detail: str | None = None) -> None:
        self.request_id = request_id
        self.user = user
        super().__init__(detail or f"user {user!r} has already voted on approval request {request_id}")


class ContentChanged(ApprovalConflict):
    """The request is no longer what the decider was shown: its ``content_digest`` differs.

    Raised under the row lock, before anything is written: no vote, no event, the link unused.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"the request changed since you opened it (approval request {request_id}); review it again")


class NotAllowed(HitlError):
    """The user may not take this action; ``reason`` says why."""

    status_code = 403

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ApprovalMismatch(HitlError):
    """What a downstream task was given is not what was approved (``verify_bound``); ``field`` names the bound value."""

    status_code = 409

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"bound value {field!r} {message}")


class StoreError(HitlError):
    """The approval store is unreachable or misconfigured."""

    status_code = 503


class StoreSchemaError(StoreError):
    """The store's schema does not match this version of airflow-hitl."""


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer in time; nothing was changed.

    Raised only when the transaction certainly did not commit, so the caller may retry.
    """

    retry_after: int = 5


class StoreOutcomeUnknown(StoreUnavailable):
    """The store stopped answering while committing: the change may or may not be recorded.

    Never reported as a failure: the caller must look (GET the request) before retrying;
    a retried vote that did land is refused as already voted, never counted twice.
    """


class ConfigInvalid(HitlError):
    """A ``[hitl]`` option is set to what Airflow's own reading of its type refuses (``auto_migrate=Ture``).

    Never replaced by the option's default: the component fails, naming every such option
    (``problems``: ``(option, why)``; the value is quoted unless the option is a secret).
    Answered 503 by the REST API, whose caller can do nothing about it.
    """

    status_code = 503

    def __init__(self, option: str, message: str, *, problems: Sequence[tuple[str, str]] = ()) -> None:
        self.problems = list(problems) or [(option, message)]
        self.option, self.message = self.problems[0]
        super().__init__("; ".join(f"invalid [hitl] {name}: {why}" for name, why in self.problems))

    @property
    def options(self) -> list[str]:
        """The names of the options that cannot be read, in order."""
        return list(dict.fromkeys(name for name, _ in self.problems))


class LinkAlreadyUsed(HitlError):
    """An emailed action link was already used once; links work once."""

    status_code = 410

    def __init__(self, notification_id: str) -> None:
        self.notification_id = notification_id
        super().__init__("this link has already been used")

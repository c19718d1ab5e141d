"""Small helpers shared by the unit tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow_hitl.manager import ApprovalSpec


class Clock:
    """A clock the test moves by hand, so expiry is exact rather than slept for."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        """Move forward by ``timedelta(**delta)`` and return the new time."""
        self.now += dt.timedelta(**delta)
        return self.now


_counter = 0


def spec(**overrides: Any) -> ApprovalSpec:
    """An ApprovalSpec for a unique task try, with sensible defaults."""
    global _counter
    _counter += 1
    fields: dict[str, Any] = {
        "dag_id": "release",
        "run_id": f"manual__{_counter}",
        "task_id": "gate",
        "try_number": 1,
        "title": "Release model",
        "requested_by": "ricky",
    }
    fields.update(overrides)
    return ApprovalSpec(**fields)

"""The notifications' tests use the stand-ins of :mod:`tests.standins` (loaded by ``tests/conftest.py``).

The names below are imported from here by tests/e2e; new code imports them from
:mod:`tests.standins`.
"""

from __future__ import annotations

from tests.standins import SmtpSink, _Handler, notify_environment

__all__ = ["SmtpSink", "_Handler", "notify_environment"]

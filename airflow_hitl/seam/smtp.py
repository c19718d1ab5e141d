"""The SMTP client an ``SmtpHook`` logged in with.

See the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

import smtplib
from typing import Any


def logged_in_client(hook: Any) -> smtplib.SMTP | None:
    """The ``smtplib.SMTP`` client of an entered ``SmtpHook`` (``with SmtpHook(...) as hook``), or None.

    The hook's public ``send_email_smtp`` builds its own HTML-only message; we send a message
    of our own (text and HTML alternatives, our headers) through the session the hook opened
    with its connection's host, port, TLS and login, so that the connection stays the one
    place SMTP is configured.
    """
    client = getattr(hook, "_smtp_client", None)
    return client if isinstance(client, smtplib.SMTP) else None

"""Notifications that reach approvers and let them decide: email, Slack, webhook and in-app.

Submodules: :mod:`.dispatcher` (recipients, rendering, delivery with retries, one row per
send), :mod:`.channels` (the channel notifiers, also usable as Airflow notifiers),
:mod:`.templates` (Jinja2 templates shipped with the package), :mod:`.signing` (signed links
and HMAC helpers), :mod:`.recipients` (Airflow users to emails and Slack ids).

This package module imports nothing heavy: the manager imports :mod:`.record` from here.
"""

from __future__ import annotations

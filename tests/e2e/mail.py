"""A real SMTP server (aiosmtpd) on loopback for the e2e suites, stoppable for an outage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.e2e.harness import free_port
from tests.standins import SmtpSink, _Handler


class MailServer:
    """A real SMTP server on a fixed loopback port, stoppable for an outage."""

    def __init__(self) -> None:
        self.sink = SmtpSink(port=free_port())
        self._controller: Any = None

    @property
    def port(self) -> int:
        """The loopback port it listens on (the same after a restart)."""
        return self.sink.port

    def start(self) -> None:
        """Listen (again)."""
        from aiosmtpd.controller import Controller

        self._controller = Controller(_Handler(self.sink), hostname="127.0.0.1", port=self.sink.port)
        self._controller.start()

    def stop(self) -> None:
        """Stop listening: senders then get connection refused."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def serve_mail() -> Iterator[MailServer]:
    """Body of a fixture yielding a started :class:`MailServer`."""
    server = MailServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()

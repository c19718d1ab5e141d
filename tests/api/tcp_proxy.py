"""A TCP proxy on loopback in front of PostgreSQL, to take the approval store away for real.

``stop()`` closes the listening socket and every relayed connection (the store is gone:
connections are refused); ``black_hole()`` keeps accepting but never answers (a hung
network: only timeouts end a call); ``cut_at_commit()`` relays a ``COMMIT`` to the server
and then cuts the connection before the answer comes back (the outcome is unknown to the
client, though the server committed).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from tests.e2e.harness import free_port


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``target``; controllable from the test thread."""

    def __init__(self, *, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._mode = "relay"
        self.commits_cut = 0

    def start(self) -> None:
        """Listen (again) on the same port and relay."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._mode = "relay"
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse new connections and drop every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._drop_all()

    def black_hole(self) -> None:
        """Drop open connections; accept new ones but never relay a byte."""
        self._mode = "black_hole"
        self._drop_all()

    def cut_at_commit(self) -> None:
        """Relay as usual, but cut a connection right after relaying its ``COMMIT``."""
        self._mode = "cut_at_commit"

    def relay(self) -> None:
        """Back to relaying normally."""
        self._mode = "relay"

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self._mode == "black_hole":
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
                    # A simple-query COMMIT ('Q' message): the server will commit; the client never hears.
                    if sock is client and self._mode == "cut_at_commit" and b"COMMIT\x00" in data:
                        self.commits_cut += 1
                        return
        except (OSError, ValueError):  # ValueError: the proxy closed a socket under select()
            return
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

"""A lean closed-loop HTTP/1.1 load generator for the benchmarks.

``httpx`` costs about 1.4 ms of client CPU per request; on a two-core machine that shares
its cores with the server under test, that is CPU taken from the server, and latency the
server never caused. This client pre-encodes each request and speaks keep-alive HTTP/1.1
over asyncio streams (about a tenth of the cost), which is all the benchmarks need: JSON
bodies, ``Content-Length`` responses, one server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, kw_only=True)
class Call:
    """One HTTP request, encoded once before the clock starts."""

    raw: bytes

    @classmethod
    def make(
        cls,
        *,
        method: str,
        path: str,
        host: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Call:
        """Encode ``method path`` with a JSON ``body`` (when given) as HTTP/1.1 bytes."""
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(payload)}")
        return cls(raw=("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


@dataclass(frozen=True, kw_only=True)
class Result:
    """Figures of one scenario at one concurrency."""

    name: str
    clients: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    throughput: float
    first_error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest-rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


class _Connection:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, *, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, call: Call) -> tuple[int, bytes]:
        """Send ``call``; return the status and body of its response."""
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(call.raw)
        try:
            return await asyncio.wait_for(self._read(self._reader), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = 0
        chunked = closing = False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                closing = True
        if chunked:
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size + 2)
                del body[-2:]
            payload = bytes(body)
        else:
            payload = await reader.readexactly(length)
        if closing:
            await self.close()
        return status, payload

    async def close(self) -> None:
        """Close the socket (the next send reconnects)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def measure(
    name: str,
    clients: int,
    calls: Sequence[Call],
    base_url: str,
    *,
    rate: float | None = None,
    timeout: float = 60.0,
) -> Result:
    """Run ``calls`` through ``clients`` concurrent keep-alive connections, each waiting for its answer.

    Without ``rate`` the clients send as fast as they are answered (closed loop: the server
    is saturated and latency is mostly queueing). With ``rate`` the calls are due at that
    many per second and each latency counts from when its call was due, so a server that
    falls behind is charged for the wait (no coordinated omission).
    """
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pending = enumerate(calls)
    latencies: list[float] = []
    errors: list[str] = []
    origin = time.perf_counter()

    async def client() -> None:
        conn = _Connection(host=host, port=port, timeout=timeout)
        try:
            for index, call in pending:
                started = time.perf_counter()
                if rate is not None:
                    due = origin + index / rate
                    if due > started:
                        await asyncio.sleep(due - started)
                    started = due
                try:
                    status, body = await conn.send(call)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as err:
                    # A timed-out or dropped call counts, with its time, as an error.
                    latencies.append(time.perf_counter() - started)
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                latencies.append(time.perf_counter() - started)
                if status >= 400:
                    errors.append(f"{status} {body[:200]!r}")
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - origin
    return Result(
        name=name,
        clients=clients,
        requests=len(latencies),
        errors=len(errors),
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        throughput=len(latencies) / wall,
        first_error=errors[0] if errors else None,
    )

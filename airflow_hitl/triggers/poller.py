"""One shared poller per triggerer process for every waiting approval trigger.

A triggerer may hold thousands of waiting gates. Polling the store once per trigger would
make the store's load grow with them; instead every :class:`ApprovalTrigger` in a process
registers its request id here, and one task reads the state of all of them in a single
query per ``[hitl] poll_interval``. On PostgreSQL the poller also LISTENs on the channel
the manager NOTIFYs when a decision commits, and re-reads just the announced ids at once,
so a decision wakes its trigger in milliseconds rather than at the next poll. Those targeted
reads (and the first read of a newly watched id) run beside the full poll, never queued
behind it: with ten thousand waiting gates a full poll takes a few hundred milliseconds.
When reads overlap, each watch keeps the state from the most recently started one.

Store errors (a database restarting) are logged and retried after the package's one retry
policy's delay (:mod:`airflow_hitl.retry`: exponential, jittered, capped at ``max_backoff``);
they never turn into a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import NOTIFY_CHANNEL, fresh_login
from airflow_hitl.outbox import listen_conninfo
from airflow_hitl.records import WaitState
from airflow_hitl.retry import Backoff

log = logging.getLogger(__name__)

# A new watcher triggers a poll this soon, so several triggers starting together share one.
_KICK_DEBOUNCE = 0.05


class Watch:
    """One trigger's subscription to one request id."""

    def __init__(self, *, request_id: str) -> None:
        self.request_id = request_id
        self.state: WaitState | None = None
        self.missing = False
        self._changed = asyncio.Event()
        self._read_seq = -1

    def update(self, state: WaitState | None, *, read_seq: int = 0) -> None:
        """Record the newest state seen (None: the row is gone) and wake the waiter on change.

        ``read_seq`` numbers the reads in the order they were started; the result of a read
        started before the one already applied is older than what we hold and is ignored.
        """
        if read_seq < self._read_seq:
            return
        self._read_seq = read_seq
        if state is None:
            self.missing = True
            self._changed.set()
            return
        if self.state is None or state != self.state:
            self.state = state
            self._changed.set()

    async def wait(self, timeout: float | None) -> None:
        """Sleep until the state changes or ``timeout`` seconds pass."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()


class ApprovalPoller:
    """Reads the state of every watched request in one query per interval."""

    def __init__(
        self,
        *,
        manager: ApprovalManager,
        poll_interval: float,
        max_backoff: float = 30.0,
        listen: bool = True,
        on_empty: Callable[[ApprovalPoller], None] | None = None,
    ) -> None:
        self.manager = manager
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.listen = listen and manager.store.is_postgres
        self.queries = 0
        self.errors = 0
        self._watches: dict[str, set[Watch]] = {}
        self._kick = asyncio.Event()
        self._targeted: set[str] = set()
        self._read_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._on_empty = on_empty

    # ------------------------------------------------------------------ subscribe

    def watch(self, request_id: str) -> Watch:
        """Start watching ``request_id``; the first state arrives at the next (prompt) poll."""
        watch = Watch(request_id=request_id)
        self._watches.setdefault(request_id, set()).add(watch)
        self._targeted.add(request_id)
        self._ensure_running()
        self._kick.set()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop watching; the poller stops itself when nobody is left."""
        watchers = self._watches.get(watch.request_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watches[watch.request_id]
        if not self._watches:
            self.stop()

    @property
    def watched(self) -> int:
        """Number of distinct request ids being watched."""
        return len(self._watches)

    # ------------------------------------------------------------------ lifecycle

    def _ensure_running(self) -> None:
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll_loop(), name="hitl-approval-poller"),
            loop.create_task(self._targeted_loop(), name="hitl-approval-targeted-reads"),
        ]
        if self.listen:
            self._tasks.append(loop.create_task(self._listen_loop(), name="hitl-approval-listener"))

    def stop(self) -> None:
        """Cancel the polling and listening tasks."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._on_empty is not None:
            self._on_empty(self)

    # ------------------------------------------------------------------ polling

    async def _read(self, ids: list[str]) -> None:
        """Read ``ids`` in one query and hand every watch of them its state."""
        self._read_seq += 1
        read_seq = self._read_seq
        states = await asyncio.to_thread(self.manager.queries.wait_states, ids)
        self.queries += 1
        for request_id in ids:
            for watch in list(self._watches.get(request_id, ())):
                watch.update(states.get(request_id), read_seq=read_seq)

    async def _poll_loop(self) -> None:
        # Full polls: every watched id, one query per interval. A newly watched id is read
        # at once by the targeted loop, so the first full poll can wait a whole interval.
        backoff = Backoff(first=1.0, cap=self.max_backoff)
        delay = 0.0
        while self._watches:
            await asyncio.sleep(delay or self.poll_interval)
            if not self._watches:
                break
            try:
                await self._read(list(self._watches))
            except Exception:
                self.errors += 1
                delay = backoff.next()
                log.warning("approval store poll failed; retrying in %.1fs", delay, exc_info=True)
                continue
            backoff.reset()
            delay = 0.0

    async def _targeted_loop(self) -> None:
        # Reads only what was announced (NOTIFY) or newly watched, without waiting for a
        # full poll in progress to finish.
        backoff = Backoff(first=1.0, cap=self.max_backoff)
        while self._watches:
            await self._kick.wait()
            await asyncio.sleep(_KICK_DEBOUNCE)  # several triggers starting together share one read
            self._kick.clear()
            ids = sorted(i for i in self._targeted if i in self._watches)
            self._targeted.clear()
            if not ids:
                continue
            try:
                await self._read(ids)
            except Exception:
                self.errors += 1
                delay = backoff.next()
                log.warning("approval store read failed; retrying in %.1fs", delay, exc_info=True)
                self._targeted.update(ids)
                await asyncio.sleep(delay)
                self._kick.set()
                continue
            backoff.reset()

    def _on_notify(self, request_id: str) -> None:
        if request_id in self._watches:
            self._targeted.add(request_id)
            self._kick.set()

    # ------------------------------------------------------------------ LISTEN

    def _conninfo(self) -> dict[str, Any]:
        # A fresh login each time: a token login's token expires between reconnections.
        url = self.manager.store.url
        return {**listen_conninfo(url), **fresh_login(url)}

    async def _listen_loop(self) -> None:
        import psycopg

        backoff = Backoff(first=1.0, cap=self.max_backoff)
        while self._watches:
            try:
                # Off the event loop: a token login asks its identity provider for a token.
                conninfo = await asyncio.to_thread(self._conninfo)
                async with await psycopg.AsyncConnection.connect(autocommit=True, **conninfo) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff.reset()
                    # Decisions committed while we were (re)connecting were not announced to us.
                    self._targeted.update(self._watches)
                    self._kick.set()
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next()
                log.warning("LISTEN connection lost; polling continues, reconnecting in %.1fs", delay, exc_info=True)
                await asyncio.sleep(delay)


_pollers: dict[tuple[int, str], ApprovalPoller] = {}


def shared_poller(manager: ApprovalManager, *, poll_interval: float, max_backoff: float = 30.0) -> ApprovalPoller:
    """The poller of the running event loop for ``manager``'s store, created on first use."""
    key = (id(asyncio.get_running_loop()), manager.store.url)
    poller = _pollers.get(key)
    if poller is None:

        def forget(p: ApprovalPoller) -> None:
            if _pollers.get(key) is p:
                del _pollers[key]

        poller = ApprovalPoller(manager=manager, poll_interval=poll_interval, max_backoff=max_backoff, on_empty=forget)
        _pollers[key] = poller
    return poller

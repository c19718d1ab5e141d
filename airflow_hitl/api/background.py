"""What the api-server's background workers share: one leader per store, woken by NOTIFY or polling.

The standing approvals applier (:mod:`airflow_hitl.api.standing_applier`) and the deadline
worker (:mod:`airflow_hitl.api.deadlines`) act on the store from the api-server in the same
way: on PostgreSQL the store's NOTIFY (one per transition) wakes them, and only the worker
whose LISTEN connection holds its advisory lock works (another takes over within a second of
its process ending); on SQLite, which has no NOTIFY, every api-server process looks every poll
interval and the store's write lock makes them take turns. :class:`StoreWatcher` is that
shape; each worker says what a look does. :class:`ServiceSlot` keeps each process's one
instance, started by the api-server's lifespan and stopped with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.outbox import listen_for_transitions
from airflow_hitl.settings import HitlSettings

log = logging.getLogger(__name__)


class StoreWatcher:
    """A background worker of the api-server over one store (see the module docstring).

    Subclasses implement :meth:`_work`, the loop of their worker thread: it waits on
    ``self._wake`` (set by each NOTIFY, by :meth:`wake` and when LISTEN comes up) and works only
    while ``self.working`` is set.

    :param manager_factory: Builds the manager of the store (default: ``[hitl]``'s store).
    :param leader_key: On PostgreSQL, work only while holding this advisory lock (None: always).
    :param follow_every: Seconds between a waiting worker's tries to take the lock.
    """

    #: The worker thread's name (its listener's is this and ``-listener``), and what logs call it.
    name = "hitl-worker"
    what = "worker"

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        leader_key: int | None = None,
        follow_every: float = 1.0,
    ) -> None:
        self._manager_factory = manager_factory
        self._leader_key = leader_key
        self._follow_every = follow_every
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Set while this worker may work: always on SQLite; on PostgreSQL while it listens (and leads).
        self.working = threading.Event()

    def start(self) -> None:
        """Start the worker thread (and, on PostgreSQL, its LISTEN connection)."""
        if self._threads:
            return
        manager = self._manager_factory()
        targets: list[tuple[Callable[[ApprovalManager], None], str]] = [(self._work, self.name)]
        if manager.store.is_postgres:
            targets.append((self._listen, f"{self.name}-listener"))
        else:
            self.working.set()
        for target, name in targets:
            thread = threading.Thread(target=target, args=(manager,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop its threads."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def wake(self) -> None:
        """Look now (a transition committed)."""
        self._wake.set()

    def _listen(self, manager: ApprovalManager) -> None:
        def listening(up: bool) -> None:
            if up:
                self.working.set()
                self._wake.set()  # catch up with what changed while nobody listened
            else:
                self.working.clear()

        listen_for_transitions(
            manager.store.url,
            stop=self._stop,
            on_payload=lambda _request_id: self._wake.set(),
            on_listening=listening,
            what=self.what,
            leader_key=self._leader_key,
            follow_every=self._follow_every,
        )

    def _work(self, manager: ApprovalManager) -> None:
        raise NotImplementedError


Service = TypeVar("Service", bound=StoreWatcher)


class ServiceSlot(Generic[Service]):
    """This process's one instance of a background worker: started once, stopped with the api-server.

    :param build: The worker for the current settings (and the options :meth:`ensure_started` is
        given), or None when they turn it off.
    :param what: What the logs call it.
    """

    def __init__(self, *, build: Callable[..., Service | None], what: str) -> None:
        self._build = build
        self._what = what
        self._lock = threading.Lock()
        self.service: Service | None = None

    def ensure_started(self, settings: HitlSettings | None = None, **options: Any) -> Service | None:
        """Start the worker once (the api-server calls it); None when turned off or the store is unreachable."""
        with self._lock:
            if self.service is None:
                service = self._build(settings or HitlSettings.load(), **options)
                if service is None:
                    return None
                try:
                    service.start()
                except Exception:
                    # The store is unreachable now: what it would do waits in the store; try again next start.
                    log.warning("%s not started", self._what, exc_info=True)
                    return None
                self.service = service
            return self.service

    def stop(self) -> None:
        """Stop this process's worker, if it runs."""
        with self._lock:
            if self.service is not None:
                self.service.stop()
                self.service = None

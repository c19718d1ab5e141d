"""ApprovalTrigger: waits in the triggerer while an approval gate is open.

The trigger never decides. It waits for its request to leave ``pending``/``escalated``
(through the process's shared poller), or for ``expires_at``, and then asks the
:class:`~airflow_hitl.manager.ApprovalManager` to apply the timeout, an atomic
conditional update that exactly one caller wins. It yields exactly one event. It holds
only the request id, so a triggerer restart resumes the wait from the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, TypedDict

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_hitl.manager import ApprovalManager, TimeoutOutcome, utcnow
from airflow_hitl.models.store import aresolve_store_url, get_store
from airflow_hitl.settings import HitlSettings
from airflow_hitl.triggers.poller import shared_poller

# Never spin: when our clock says "expired" but the store's does not yet, look again soon.
_MIN_WAIT = 0.2

# Airflow 3.3 fails a task whose trigger fires before the scheduler has seen the worker of the
# deferring try exit: the trigger puts the task instance back to scheduled, the scheduler queues
# it, and the late "success" executor event of the deferring workload (same key, same try number)
# then finds it queued and marks it failed ("task instance's state attribute is queued"). The
# deferring worker can take several seconds to exit on a busy machine. This is how Airflow's own
# HITL loses decisions made right after the task pauses; we hold the event until the deferring
# try has surely been processed (only when resuming a real task instance in a triggerer), for
# ``[hitl] resume_grace_seconds`` after the trigger started.


class ApprovalTriggerEventPayload(TypedDict, total=False):
    """What the trigger hands back to ``ApprovalOperator.execute_complete``."""

    request_id: str
    status: Literal["decided", "escalated", "error", "remind"]
    state: str
    error: str


class ApprovalTrigger(BaseTrigger):
    """Wait for an approval request to be decided, time out or escalate."""

    def __init__(
        self,
        *,
        request_id: str,
        conn_id: str | None = None,
        poll_interval: float | None = None,
        remind_at: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.request_id = str(request_id)
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        # Unix time of the next reminder (``remind_every``): the trigger only wakes the task
        # then; the worker sends the reminder, so nothing slow runs in the triggerer.
        self.remind_at = float(remind_at) if remind_at is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Only the id and where the store is: everything else is read from the store."""
        kwargs: dict[str, Any] = {
            "request_id": self.request_id,
            "conn_id": self.conn_id,
            "poll_interval": self.poll_interval,
        }
        if self.remind_at is not None:
            kwargs["remind_at"] = self.remind_at
        return ("airflow_hitl.triggers.approval.ApprovalTrigger", kwargs)

    async def _manager(self, settings: HitlSettings | None = None) -> ApprovalManager:
        url = await aresolve_store_url(self.conn_id, settings)
        store = await asyncio.to_thread(get_store, url=url)
        return ApprovalManager(store=store)

    def _event(
        self, status: Literal["decided", "escalated", "error", "remind"], state: str, error: str | None = None
    ) -> TriggerEvent:
        payload = ApprovalTriggerEventPayload(request_id=self.request_id, status=status, state=state)
        if error:
            payload["error"] = error
        return TriggerEvent(payload)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event: decided (any final state), escalated, remind (``remind_at`` passed), or error."""
        started = time.monotonic()
        settings = HitlSettings.load()
        manager = await self._call_with_retry(lambda: self._manager(settings), settings)
        poller = shared_poller(
            manager,
            poll_interval=self.poll_interval or settings.poll_interval,
            max_backoff=settings.store_retry_max_backoff,
        )
        watch = poller.watch(self.request_id)
        try:
            while True:
                if watch.missing:
                    self.log.error("approval request %s no longer exists in the store", self.request_id)
                    await self._settle(started, settings)
                    yield self._event("error", "missing", f"approval request {self.request_id} not found")
                    return
                state = watch.state
                timeout: float | None = None
                if state is not None:
                    if not state.is_waiting:
                        self.log.info("approval request %s is %s", self.request_id, state.state)
                        await self._settle(started, settings)
                        yield self._event("decided", state.state)
                        return
                    if state.expires_at is not None:
                        remaining = (state.expires_at - utcnow()).total_seconds()
                        if remaining <= 0:
                            outcome: TimeoutOutcome = await self._call_with_retry(
                                lambda: asyncio.to_thread(manager.apply_timeout, self.request_id), settings
                            )
                            if outcome.escalated:
                                self.log.info(
                                    "approval request %s escalated to level %s",
                                    self.request_id,
                                    outcome.approval.escalation_level,
                                )
                                await self._settle(started, settings)
                                yield self._event("escalated", outcome.approval.state)
                                return
                            if not outcome.approval.is_waiting:
                                await self._settle(started, settings)
                                yield self._event("decided", outcome.approval.state)
                                return
                            remaining = _MIN_WAIT
                        timeout = max(remaining, _MIN_WAIT)
                    if self.remind_at is not None:
                        until_remind = self.remind_at - time.time()
                        if until_remind <= 0:
                            self.log.info("approval request %s: time to remind the approvers", self.request_id)
                            await self._settle(started, settings)
                            yield self._event("remind", state.state)
                            return
                        until_remind = max(until_remind, _MIN_WAIT)
                        timeout = until_remind if timeout is None else min(timeout, until_remind)
                await watch.wait(timeout)
        finally:
            poller.unwatch(watch)

    async def _settle(self, started: float, settings: HitlSettings) -> None:
        # Never resume the task while its deferring try may still be exiting (see the module comment).
        if self.task_instance is None:
            return
        wait = settings.resume_grace_seconds - (time.monotonic() - started)
        if wait > 0:
            self.log.info(
                "approval request %s settled %.1fs after the trigger started; resuming the task in %.1fs",
                self.request_id,
                time.monotonic() - started,
                wait,
            )
            await asyncio.sleep(wait)

    async def _call_with_retry(self, call: Any, settings: HitlSettings) -> Any:
        # A store that is restarting must delay the gate, never decide it.
        backoff = 1.0
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning(
                    "approval store call failed for %s; retrying in %.1fs",
                    self.request_id,
                    backoff,
                    exc_info=True,
                )
                await asyncio.sleep(backoff)
                backoff = min(settings.store_retry_max_backoff, backoff * 2)

    async def on_kill(self) -> None:
        """The user cleared the task or marked it failed/succeeded: cancel the open request.

        Airflow calls this only for those user actions, not when a triggerer restarts or
        hands the trigger to another triggerer, so a rolling deploy never cancels a gate.
        """
        try:
            manager = await self._manager()
            await asyncio.to_thread(
                manager.cancel,
                self.request_id,
                actor=None,
                reason="task instance was cleared or marked by a user in Airflow",
                source="airflow",
            )
            self.log.info("approval request %s cancelled: task killed by user action", self.request_id)
        except Exception as err:
            # Already decided, or the store is down: the new try supersedes it either way.
            self.log.warning("could not cancel approval request %s: %s", self.request_id, err)

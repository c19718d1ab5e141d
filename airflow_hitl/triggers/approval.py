"""ApprovalTrigger: waits in the triggerer while an approval gate is open, then ends the task.

The trigger never decides. It waits for its request to leave ``pending``/``escalated``
(through the process's shared poller), or for ``expires_at``, and then asks the
:class:`~airflow_hitl.manager.ApprovalManager` to apply the timeout, an atomic
conditional update that exactly one caller wins. An escalation is applied the same way and
the trigger keeps waiting for the new expiry. It holds only the request id, so a triggerer
restart resumes the wait from the store. Nothing slow runs here: notices (the decision, the
timeout, the escalation, reminders) are queued by the manager in the notification outbox
in the same transaction as the transition and sent by the api-server's drainer.

Ending the gate (``end_task=True``, what the operator asks for): the trigger yields
Airflow's ``TaskSuccessEvent`` / ``TaskFailedEvent`` / ``TaskSkippedEvent`` with the
decision as XCom, so Airflow finishes the task instance in the triggerer's own transaction
(``handle_event_submit`` for ``BaseTaskEndEvent``): no worker starts and the task never
passes through ``queued``. That closes apache/airflow#72716 for good rather than dodging it
with a hold: when a trigger's plain event resumes the task on a worker, the task goes back
to ``scheduled``/``queued`` under the same try number, and the late "success" report of the
deferring worker (same key) then finds it queued and fails it. A task that already ended
has nothing the late report can fail. ``tests/e2e/test_resume_e2e.py`` asserts what this
relies on (a gate ends deferred -> success without being queued again, one try, XCom
pushed), so a future Airflow that changes it fails that test.

The api-server's gate closer ends decided gates too, and Airflow's DB cannot take two ends of
one try (:mod:`airflow_hitl.gate_ends`): before yielding the end event the trigger claims the
end in the store, a second after seeing the decision when the closer may run (PostgreSQL store,
``[hitl] gate_closer``), since the closer is the faster path. Having lost the claim, it yields
nothing and waits for Airflow to cancel it (the closer ended the task; ``on_kill`` then finds
the request closed and does nothing).
Nothing of ours raises out of ``run()``: the store's errors and our own are logged and retried.

The trigger falls back to a plain event for ``ApprovalOperator.execute_complete`` when it
was serialized by an older release (no ``end_task``) or runs outside a triggerer (``airflow
dags test`` runs triggers inline and resumes the task itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal, TypedDict

from airflow.triggers.base import BaseTrigger, TaskFailedEvent, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent

from airflow_hitl.gate_ends import TAKE_OVER_AFTER, claimant
from airflow_hitl.manager import ApprovalManager, TimeoutOutcome, utcnow
from airflow_hitl.models.store import aresolve_store_url, get_store
from airflow_hitl.policy import gate_outcome
from airflow_hitl.records import Approval, WaitState, decision_summary
from airflow_hitl.retry import Backoff
from airflow_hitl.settings import HitlSettings
from airflow_hitl.triggers.poller import shared_poller
from airflow_hitl.vocabulary import Source, TaskEnd

# Never spin: when our clock says "expired" but the store's does not yet, look again soon.
_MIN_WAIT = 0.05
# Seconds between a losing trigger's claims (it is normally cancelled well before the first).
_CLAIM_AGAIN = 5.0
# Seconds the trigger leaves the api-server's gate closer to claim a decided gate's end first.
_CLOSER_HEAD_START = 1.0
# Ceiling of the backoff after an error of ours in run() (not the store's: that has its own).
_MAX_BACKOFF = 30.0


class ApprovalTriggerEventPayload(TypedDict, total=False):
    """What the trigger hands back to ``ApprovalOperator.execute_complete`` (fallback path)."""

    request_id: str
    status: Literal["decided", "escalated", "error", "remind"]
    state: str
    error: str


#: The XCom key and shape Airflow's branch operators (SkipMixin) write and the scheduler's
#: ``NotPreviouslySkippedDep`` reads: a direct downstream task not in ``followed`` is skipped.
SKIPMIXIN_KEY = "skipmixin_key"


def end_event(approval: Approval, follow: dict[str, list[str]] | None = None) -> TriggerEvent:
    """The Airflow event that ends the gate's task for a finished request, with its XCom.

    Approved (by people or by the timeout action): success, the summary as ``return_value``.
    Rejected: failed (Airflow routes it to ``up_for_retry`` when retries remain), or skipped
    with ``on_reject="skip"``; the summary under ``decision``. Cancelled: failed.

    A branch gate (``follow``: outcome -> the direct downstream task ids it follows) succeeds
    either way, approved or rejected, with the summary as ``return_value`` and the followed
    tasks under ``skipmixin_key``: no worker runs ``skip_all_except``, the scheduler skips the
    other branch when it next looks at those tasks (``NotPreviouslySkippedDep``), exactly as
    it does for a cleared branch operator. Cancelled: failed, no branch taken.
    """
    summary: dict[str, Any] = decision_summary(approval)
    outcome = gate_outcome(
        state=approval.state, decision=approval.decision, on_reject=approval.on_reject, branching=follow is not None
    )
    if outcome.follow is not None and follow is not None:
        return TaskSuccessEvent(
            xcoms={"return_value": summary, SKIPMIXIN_KEY: {"followed": list(follow.get(outcome.follow, []))}}
        )
    if outcome.end is TaskEnd.SUCCESS:
        return TaskSuccessEvent(xcoms={"return_value": summary})
    if outcome.end is TaskEnd.SKIPPED:
        return TaskSkippedEvent(xcoms={"decision": summary})
    return TaskFailedEvent(xcoms={"decision": summary})


def _newest(seen: WaitState | None, applied: WaitState | None) -> WaitState | None:
    # The poller may not have read the escalation we just applied yet; never go back to
    # the older expiry, or we would apply the timeout again at once.
    if seen is None:
        return applied
    if applied is None or not seen.is_waiting:
        return seen
    return applied if applied.escalation_level > seen.escalation_level else seen


class ApprovalTrigger(BaseTrigger):
    """Wait for an approval request to be decided or time out (escalating on the way), then end the gate.

    :param request_id: The approval request to wait for.
    :param conn_id: Connection of the approval store; default ``[hitl] conn_id``.
    :param poll_interval: Seconds between store polls; default ``[hitl] poll_interval``.
    :param end_task: End the task instance from the trigger (Airflow's task end events) instead
        of resuming it on a worker. Triggers serialized by older releases lack it (False).
    :param remind_at: Unix time of a reminder, from triggers serialized by older releases only;
        reminders are outbox intents now.
    :param follow: A branch gate's direct downstream task ids to follow per outcome
        (``{"approve": [...], "reject": [...]}``); None for a plain gate.
    """

    def __init__(
        self,
        *,
        request_id: str,
        conn_id: str | None = None,
        poll_interval: float | None = None,
        end_task: bool = False,
        remind_at: float | None = None,
        follow: dict[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger is untyped
        self.request_id = str(request_id)
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.end_task = bool(end_task)
        self.remind_at = float(remind_at) if remind_at is not None else None
        self.follow = {k: list(v) for k, v in follow.items()} if follow is not None else None
        # This run's name in the claim to end the task (airflow_hitl.gate_ends), once it asks.
        self._claimant: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Only the id, where the store is and how to end: everything else is read from the store."""
        kwargs: dict[str, Any] = {
            "request_id": self.request_id,
            "conn_id": self.conn_id,
            "poll_interval": self.poll_interval,
            "end_task": self.end_task,
        }
        if self.remind_at is not None:
            kwargs["remind_at"] = self.remind_at
        if self.follow is not None:
            kwargs["follow"] = self.follow
        return ("airflow_hitl.triggers.approval.ApprovalTrigger", kwargs)

    async def _manager(self, settings: HitlSettings | None = None) -> ApprovalManager:
        url = await aresolve_store_url(self.conn_id, settings)
        store = await asyncio.to_thread(get_store, url=url)
        # Off the event loop: the manager reads [hitl] audit_key, which may run a _CMD.
        return await asyncio.to_thread(partial(ApprovalManager, store=store))

    def _event(
        self, status: Literal["decided", "escalated", "error", "remind"], state: str, error: str | None = None
    ) -> TriggerEvent:
        # A plain string: the payload crosses to the worker through Airflow's serialization.
        payload = ApprovalTriggerEventPayload(request_id=self.request_id, status=status, state=str(state))
        if error:
            payload["error"] = error
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    @property
    def ends_task(self) -> bool:
        """True when this trigger finishes the task itself (asked to, and run by a triggerer)."""
        return self.end_task and self.task_instance is not None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event: the task's end (or, on the fallback path, decided / escalated / remind / error).

        Nothing raises out of here but Airflow's own cancellation: a trigger that fails makes
        the triggerer fail its task instance in a transaction of its own, which can meet the
        api-server's end of the same task and take the triggerer down. An error of ours (the
        store, the configuration, a bug) is logged and the wait starts again.
        """
        backoff = Backoff(first=1.0, cap=_MAX_BACKOFF)
        while True:
            try:
                event = await self._outcome()
            except Exception:  # asyncio.CancelledError is not one: Airflow's cancel goes through
                delay = backoff.next()
                self.log.exception("approval request %s: waiting failed; again in %.0fs", self.request_id, delay)
                await asyncio.sleep(delay)
                continue
            yield event
            return

    async def _outcome(self) -> TriggerEvent:
        # The one event of run(), once the request is decided, timed out or gone.
        settings = HitlSettings.load()
        manager = await self._call_with_retry(lambda: self._manager(settings), settings)
        poller = shared_poller(
            manager,
            poll_interval=self.poll_interval or settings.poll_interval,
            max_backoff=settings.store_retry_max_backoff,
        )
        watch = poller.watch(self.request_id)
        applied: WaitState | None = None
        try:
            while True:
                if watch.missing:
                    self.log.error("approval request %s no longer exists in the store", self.request_id)
                    if self.ends_task:
                        return TaskFailedEvent()
                    return self._event("error", "missing", f"approval request {self.request_id} not found")
                state = _newest(watch.state, applied)
                timeout: float | None = None
                if state is not None:
                    if not state.is_waiting:
                        self.log.info("approval request %s is %s", self.request_id, state.state)
                        return await self._final(manager, settings)
                    if state.expires_at is not None:
                        remaining = (state.expires_at - utcnow()).total_seconds()
                        if remaining <= 0:
                            outcome: TimeoutOutcome = await self._call_with_retry(
                                lambda: asyncio.to_thread(manager.apply_timeout, self.request_id), settings
                            )
                            after = outcome.approval
                            if not after.is_waiting:
                                self.log.info("approval request %s timed out: %s", self.request_id, after.state)
                                return await self._end(manager, settings, after)
                            if after.escalation_level > state.escalation_level:
                                self.log.info(
                                    "approval request %s escalated to level %s; waiting until %s",
                                    self.request_id,
                                    after.escalation_level,
                                    after.expires_at,
                                )
                                if not self.ends_task:
                                    return self._event("escalated", after.state)
                                applied = WaitState(
                                    id=after.id,
                                    state=after.state,
                                    expires_at=after.expires_at,
                                    escalation_level=after.escalation_level,
                                )
                                continue
                            remaining = _MIN_WAIT
                        timeout = max(remaining, _MIN_WAIT)
                    if self.remind_at is not None and not self.ends_task:
                        until_remind = self.remind_at - utcnow().timestamp()
                        if until_remind <= 0:
                            return self._event("remind", state.state)
                        until_remind = max(until_remind, _MIN_WAIT)
                        timeout = until_remind if timeout is None else min(timeout, until_remind)
                await watch.wait(timeout)
        finally:
            poller.unwatch(watch)

    async def _final(self, manager: ApprovalManager, settings: HitlSettings) -> TriggerEvent:
        approval: Approval = await self._call_with_retry(
            lambda: asyncio.to_thread(manager.queries.get, self.request_id), settings
        )
        return await self._end(manager, settings, approval)

    async def _end(self, manager: ApprovalManager, settings: HitlSettings, approval: Approval) -> TriggerEvent:
        if not self.ends_task:
            return self._event("decided", approval.state)
        await self._claim_end(manager, settings)
        return end_event(approval, self.follow)

    async def _claim_end(self, manager: ApprovalManager, settings: HitlSettings) -> None:
        # Returns once this trigger is the one party that ends the task (airflow_hitl.gate_ends).
        # Lost to the api-server's gate closer: the closer ends the task, and Airflow cancels this
        # trigger once the task instance is no longer deferred on it; until then ask again now
        # and then, taking the claim over if its holder died before ending the task. Never
        # return without the claim: a trigger that ends without an event fails its task.
        me = self._claimant or claimant("trigger")
        self._claimant = me
        if settings.gate_closer and manager.store.is_postgres:
            # The api-server's gate closer ends a decided gate tens of milliseconds after the
            # decision, sooner than the triggerer submits this trigger's event: let it go first.
            # If it has not claimed the end by then (a long burst, stuck, not running), we end it.
            await asyncio.sleep(_CLOSER_HEAD_START)
        told = False
        while True:
            won: bool = await self._call_with_retry(
                lambda: asyncio.to_thread(
                    manager.gate_ends.claim_gate_end, self.request_id, by=me, take_over_after=TAKE_OVER_AFTER
                ),
                settings,
            )
            if won:
                return
            if not told:
                self.log.info(
                    "approval request %s: its task is being ended by another party; waiting for Airflow to"
                    " cancel this trigger",
                    self.request_id,
                )
                told = True
            await asyncio.sleep(_CLAIM_AGAIN)

    async def _call_with_retry(self, call: Any, settings: HitlSettings) -> Any:
        # A store that is restarting must delay the gate, never decide it.
        backoff = Backoff(first=1.0, cap=settings.store_retry_max_backoff)
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next()
                self.log.warning(
                    "approval store call failed for %s; retrying in %.1fs",
                    self.request_id,
                    delay,
                    exc_info=True,
                )
                await asyncio.sleep(delay)

    async def on_kill(self) -> None:
        """The user cleared the task or marked it failed/succeeded: cancel the open request.

        Airflow calls this only for those user actions, not when a triggerer restarts or
        hands the trigger to another triggerer, so a rolling deploy never cancels a gate.
        """
        try:
            manager = await self._manager()
            current = await asyncio.to_thread(manager.queries.get, self.request_id)
            if not current.is_waiting:
                # Also how a trigger ends whose task the api-server's gate closer already ended.
                self.log.info("approval request %s is already %s", self.request_id, current.state)
                return
            await asyncio.to_thread(
                manager.cancel,
                self.request_id,
                actor=None,
                reason="task instance was cleared or marked by a user in Airflow",
                source=Source.AIRFLOW,
            )
            self.log.info("approval request %s cancelled: task killed by user action", self.request_id)
        except Exception as err:
            # Already decided, or the store is down: the new try supersedes it either way.
            self.log.warning("could not cancel approval request %s: %s", self.request_id, err)

"""Cast the votes standing approvals owe, from the api-server.

A gate that opens, or escalates, inside a standing approval's window is owed its owner's vote
(:mod:`airflow_hitl.standing`). Only the api-server can cast it as it should be cast: the
owner's roles and edit access to the DAG are the auth manager's, asked *now* (a demoted or
removed owner approves nothing), and the auth manager lives in the api-server. Each owed vote
goes through the one decision path (:meth:`~airflow_hitl.manager.ApprovalManager.decide`,
source ``standing``), where the gate's policy applies to it as to any vote and the standing
approval's use is spent in the vote's own transaction; a vote refused there is settled
``skipped`` with the reason, which the pages show.

On PostgreSQL the store's NOTIFY (one per transition, so one when a gate opens or escalates)
wakes the applier at once, and one applier per store works at a time: the one holding an
advisory lock on its LISTEN connection, as the gate closer does; the others take over within
a second of its process ending. The leader looks again at least every 30 s
all the same. SQLite has no NOTIFY: every api-server process looks every
``[hitl] standing_poll_interval`` seconds (one indexed query of the owed votes), and the
store's write lock makes their casts take turns. Either way a vote cast twice is impossible:
the owed row is re-read under the request's lock and spent once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from airflow_hitl.api.background import ServiceSlot, StoreWatcher
from airflow_hitl.exceptions import HitlError, StoreError
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.access import delegator_refusal
from airflow_hitl.policy import Principal
from airflow_hitl.retry import Backoff
from airflow_hitl.settings import HitlSettings
from airflow_hitl.spec import Decision
from airflow_hitl.standing import DUE_BATCH, OwedVote
from airflow_hitl.vocabulary import Action, Source

log = logging.getLogger(__name__)

#: The advisory lock whose holder is the store's one working applier (any constant, not the closer's).
LEADER_KEY = 0x41F1_5A9D
#: Seconds between two looks at least (a gate opening is voted on within this much of its NOTIFY).
_MIN_SPACING = 0.1
#: Seconds a leading applier on PostgreSQL sleeps at most when nothing wakes it: every gate
#: opening or escalating NOTIFYs, so a look is only a safety net there (and a retry of a vote
#: that failed on its own). Looking every poll_interval cost the idle api-server 120 queries a minute.
_RECHECK = 30.0


def _roles_of(name: str) -> frozenset[str] | None:
    from airflow_hitl.identity import roles_of

    return roles_of(name)


class StandingApplier(StoreWatcher):
    """The api-server's background thread that casts owed standing votes (see the module docstring).

    :param manager_factory: Builds the manager of the store (default: ``[hitl]``'s store).
    :param poll_interval: Seconds between looks when nothing wakes it earlier.
    :param roles_of: An owner's roles now (the auth manager's), None when it does not know them.
    :param access: Why an owner may not decide a DAG's gates now, or None when they may.
    :param leader_key: On PostgreSQL, work only while holding this advisory lock (None: always).
    :param follow_every: Seconds between a waiting applier's tries to take the lock.
    :param recheck: On PostgreSQL, seconds between looks at most when nothing wakes it.
    """

    name = "hitl-standing"
    what = "standing approvals"

    def __init__(
        self,
        *,
        manager_factory: Callable[[], ApprovalManager] = ApprovalManager,
        poll_interval: float = 0.5,
        roles_of: Callable[[str], Iterable[str] | None] = _roles_of,
        access: Callable[[str, str], str | None] = delegator_refusal,
        leader_key: int | None = None,
        follow_every: float = 1.0,
        recheck: float = _RECHECK,
    ) -> None:
        super().__init__(manager_factory=manager_factory, leader_key=leader_key, follow_every=follow_every)
        self.poll_interval = max(0.05, poll_interval)
        self._recheck = max(self.poll_interval, recheck)
        self._roles_of = roles_of
        self._access = access
        #: Votes cast and owed votes settled skipped by this applier, for logs and tests.
        self.cast = 0
        self.skipped = 0

    def _work(self, manager: ApprovalManager) -> None:
        backoff = Backoff(first=1.0, cap=30.0)
        last_look = 0.0
        ceiling = self._recheck if manager.store.is_postgres else self.poll_interval
        while not self._stop.is_set():
            if self._wake.wait(ceiling):
                # Every transition NOTIFYs, most of them decisions that owe nothing: a stream of
                # them (100 decisions a second) costs one look per _MIN_SPACING, not one each.
                self._stop.wait(max(0.0, last_look + _MIN_SPACING - time.monotonic()))
                self._wake.clear()
            if self._stop.is_set() or not self.working.is_set():
                continue
            last_look = time.monotonic()
            try:
                while self.apply(manager) >= DUE_BATCH and not self._stop.is_set():
                    pass  # a full batch: there may be more
                backoff.reset()
            except Exception:
                delay = backoff.next()
                log.warning("could not cast owed standing votes; trying again in %.1fs", delay, exc_info=True)
                self._stop.wait(delay)

    def apply(self, manager: ApprovalManager) -> int:
        """Cast or settle one batch of owed votes; how many were settled (a full batch: look again)."""
        owed = manager.standing.owed()
        settled = 0
        for vote in owed:
            try:
                self._cast(manager, vote)
            except StoreError:
                raise  # the store is away: every owed vote waits for it
            except Exception:
                # This vote's own trouble (the auth manager failing on its owner, say): the others
                # are cast all the same, and it is tried again at the next look.
                log.warning(
                    "could not cast the vote standing approval %s owes request %s",
                    vote.standing_id,
                    vote.request_id,
                    exc_info=True,
                )
                continue
            settled += 1
        return settled

    def _cast(self, manager: ApprovalManager, owed: OwedVote) -> None:
        roles = self._roles_of(owed.approver)
        if roles is None:
            self._skip(manager, owed, f"Airflow's auth manager does not know {owed.approver!r}")
            return
        approver = owed.approver
        decision = Decision(
            action=Action.APPROVE,
            user=Principal.of(approver, roles),
            source=Source.STANDING,
            comment=owed.comment,
            dag_access=lambda dag_id: self._access(approver, dag_id),
            standing=owed.use,
        )
        try:
            manager.decide(owed.request_id, decision)
        except StoreError:
            raise  # the store is down: the vote stays owed and is cast once it is back
        except HitlError as err:
            # The gate's policy, the standing approval (revoked, used up) or the gate's state
            # refused it: nothing was written, and the reason is kept with the owed vote.
            self._skip(manager, owed, str(err))
            return
        self.cast += 1
        log.info("standing approval %s voted for %s on request %s", owed.standing_id, approver, owed.request_id)

    def _skip(self, manager: ApprovalManager, owed: OwedVote, reason: str) -> None:
        if manager.standing.settle(owed.due_id, reason=reason):
            self.skipped += 1
            log.info("standing approval %s did not vote on request %s: %s", owed.standing_id, owed.request_id, reason)


_slot: ServiceSlot[StandingApplier] = ServiceSlot(
    build=lambda settings: StandingApplier(poll_interval=settings.standing_poll_interval, leader_key=LEADER_KEY),
    what="standing approvals applier",
)


def ensure_standing_applier_started(settings: HitlSettings | None = None) -> StandingApplier | None:
    """Start this process's applier once (the api-server calls it); None when the store is unreachable."""
    return _slot.ensure_started(settings)


def stop_standing_applier() -> None:
    """Stop this process's applier, if it runs."""
    _slot.stop()

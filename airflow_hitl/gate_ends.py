"""Who ends a closed gate's task in Airflow: one claim per request, so exactly one party does.

Two parties can end a decided gate's task: the api-server's gate closer
(:mod:`airflow_hitl.api.gate_closer`, at once) and the gate's own trigger
(:mod:`airflow_hitl.triggers.approval`, through the triggerer). Two ends of one task try at
the same moment collide in Airflow's metadata DB: the triggerer reads the task instance
without a lock before it writes, and for a task with retries left each end archives the try
in ``task_instance_history`` and gives the task instance a new id, so the second end is a
deadlock, a duplicate key or an UPDATE of a row that is gone, and the triggerer, which
submits its triggers' events outside any retry, exits on it. Each party therefore claims the
end here first, and only the holder hands Airflow the task's end: one conditional UPDATE of
``approval_requests.task_ended_by`` / ``task_ended_at``, won by exactly one of any number of callers at
once, in any number of processes.

A claim is never given back once its holder has handed Airflow the end. The gate closer
claims only with the task instance's row locked and found deferred on the gate's trigger,
bounds its statements, commits within :data:`CLOSER_COMMIT_WITHIN` of claiming or not at all,
and gives the claim back when the end did not commit. A trigger that lost yields nothing and
waits for Airflow to cancel it (which Airflow does once the task instance is no longer
deferred on it); one whose claim was taken :data:`TAKE_OVER_AFTER` ago by a party that never
ended the task (its process died in between) takes the claim over and ends it.

A service of :class:`~airflow_hitl.manager.ApprovalManager` (``manager.gate_ends``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable

from sqlalchemy import or_, select, update

from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalRequestRow
from airflow_hitl.spec import utcnow
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import WAITING_STATES

#: A claim this old whose holder has not ended the task is taken over by the gate's trigger.
TAKE_OVER_AFTER = dt.timedelta(seconds=60)
#: The gate closer commits Airflow's end this soon after claiming, or not at all: well inside
#: :data:`TAKE_OVER_AFTER`, so a trigger taking a claim over never meets the closer's end
#: (the margin also absorbs the clocks of two hosts differing by up to half a minute).
CLOSER_COMMIT_WITHIN = TAKE_OVER_AFTER / 2


def claimant(party: str) -> str:
    """A new claimant's name: the party (``api-server``, ``trigger``), its host and process, and a unique part.

    Unique per claimant, so two runs of one trigger (a triggerer taking over another's) or two
    api-servers never hold a claim as the same name.
    """
    host = socket.gethostname()[:150]
    return f"{party}@{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class GateEnds:
    """The claim to end a closed gate's task (see the module docstring)."""

    def __init__(self, *, store: ApprovalStore, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        # A claim's age is measured on the manager's clock (``take_over_after``).
        self._clock = clock
        self._transactions = StoreTransactions(store=store)

    def claim_gate_end(self, request_id: str, *, by: str, take_over_after: dt.timedelta | None = None) -> bool:
        """Claim ending the closed request's task for ``by``; True when ``by`` holds the claim now.

        Its holder asking again still holds it. ``take_over_after``: a claim another has held
        longer than that is taken over (the trigger's way past a holder that died). A request
        still waiting, or unknown, cannot be claimed.
        """
        now = self._clock()
        row = ApprovalRequestRow
        free = [row.task_ended_by.is_(None), row.task_ended_by == by]
        if take_over_after is not None:
            free.append(row.task_ended_at < now - take_over_after)
        claim = (
            update(row)
            .where(row.id == str(request_id), row.state.not_in(WAITING_STATES), or_(*free))
            .values(task_ended_by=by, task_ended_at=now)
            .execution_options(synchronize_session=False)
        )
        with self._transactions.transaction() as session:
            # An UPDATE's result counts the rows it changed: one when ``by`` holds the claim now.
            return bool(getattr(session.execute(claim), "rowcount", 0))

    def release_gate_end(self, request_id: str, *, by: str) -> None:
        """Give ``by``'s claim back (it did not end the task after all); nothing when another holds it."""
        row = ApprovalRequestRow
        release = (
            update(row)
            .where(row.id == str(request_id), row.task_ended_by == by)
            .values(task_ended_by=None, task_ended_at=None)
            .execution_options(synchronize_session=False)
        )
        with self._transactions.transaction() as session:
            session.execute(release)

    def gate_ended_by(self, request_id: str) -> str | None:
        """Who holds the claim to end the request's task (None: nobody yet, or no such request)."""
        with self.store.session() as session:
            return session.scalar(
                select(ApprovalRequestRow.task_ended_by).where(ApprovalRequestRow.id == str(request_id))
            )

"""A gate's SLA: how long a decision should take, and what happens when a gate waits past it.

``sla=timedelta(hours=2)`` on a gate is not a timeout: nothing is decided when it runs out.
The gate's ``sla_breached`` notice is queued in the outbox when the gate opens, due at
``requested_at + sla`` (:func:`airflow_hitl.outbox.plan_opened`), and a gate that closes first
cancels it (:func:`airflow_hitl.outbox.plan_closed`). The api-server's drainer takes it when
due, and first asks :meth:`SlaWatch.breach` to record the breach: under the request's row lock,
once per request, only while it still waits, it sets ``sla_breached_at``, appends an
``sla_breached`` audit event and counts the metric (``hitl.sla_breached`` and
``hitl.sla_breached.<dag_id>.<task_id>``); then the notice goes to the gate's current approvers
on its channels. So the breach is recorded at most one outbox poll late, with no trigger or
triggerer involved, by whichever api-server takes the notice.

A service of :class:`~airflow_hitl.manager.ApprovalManager` (``manager.sla``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial

from airflow_hitl import metrics
from airflow_hitl.audit import AuditKey, with_request_facts
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.records import Approval
from airflow_hitl.spec import utcnow
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import WAITING_STATES, AuditType, Source

#: A due notice's clock may run this much ahead of the store's writer's: still a breach.
CLOCK_SKEW = dt.timedelta(seconds=5)


class SlaWatch:
    """Records a waiting gate's SLA breach, once (see the module docstring)."""

    def __init__(
        self,
        *,
        store: ApprovalStore,
        clock: Callable[[], dt.datetime] = utcnow,
        audit_key: AuditKey | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._transactions = StoreTransactions(store=store, audit_key=audit_key)

    def breach(self, request_id: str) -> tuple[bool, Approval]:
        """Record that ``request_id`` still waits past its SLA: (recorded now, the request as it stands).

        Nothing is recorded for a request that is no longer waiting, has no SLA, whose SLA has
        not run out, or whose breach is recorded already (another api-server took it first).
        """
        with self._transactions.transaction() as session:
            row, votes = self._transactions.lock(session, request_id)
            now = self._clock()
            if row.state not in WAITING_STATES or not row.sla_seconds or row.sla_breached_at is not None:
                return False, Approval.from_row(row, votes=votes)
            due = row.requested_at + dt.timedelta(seconds=row.sla_seconds)
            if now + CLOCK_SKEW < due:
                return False, Approval.from_row(row, votes=votes)
            row.sla_breached_at = now
            self._transactions.audit(
                session,
                request_id=row.id,
                event_type=AuditType.SLA_BREACHED,
                actor=None,
                source=Source.SYSTEM,
                details=with_request_facts(
                    {
                        "sla_seconds": row.sla_seconds,
                        "waited_seconds": round((now - row.requested_at).total_seconds(), 3),
                        "escalation_level": row.escalation_level,
                        "votes": len(votes),
                    },
                    row,
                ),
                at=now,
            )
            self._transactions.measure(session, partial(metrics.sla_breached, dag_id=row.dag_id, task_id=row.task_id))
            self._transactions.notify(session, row.id)
            session.flush()
            return True, Approval.from_row(row, votes=votes)

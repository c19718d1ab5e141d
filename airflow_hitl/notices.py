"""The notices of a request as the store records them: one row per channel, recipient and event.

Sent by the outbox (:mod:`airflow_hitl.outbox`) through the channels of
:mod:`airflow_hitl.notifications`; read by the pages (in-app notices, unread counts) and the
email link handler, which uses a link up (:meth:`NoticeLog.consume_link`). A service of
:class:`~airflow_hitl.manager.ApprovalManager` (``manager.notices``), whose decision path uses
an emailed link up in its own transaction (:meth:`NoticeLog.use_link`).
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from airflow_hitl import metrics
from airflow_hitl.exceptions import InvalidInput, LinkAlreadyUsed
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalNotificationRow
from airflow_hitl.records import Notification
from airflow_hitl.spec import json_safe, utcnow
from airflow_hitl.transaction import StoreTransactions
from airflow_hitl.vocabulary import CHANNELS, NOTIFICATION_STATUSES, Channel, NoticeStatus


class NoticeLog:
    """Records notices and their delivery (``manager.notices`` of :class:`~airflow_hitl.manager.ApprovalManager`)."""

    def __init__(self, *, store: ApprovalStore, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        self._clock = clock
        # Notices append no audit events: no audit key is needed to write them.
        self._transactions = StoreTransactions(store=store)

    def record_notification(
        self,
        *,
        request_id: str,
        channel: str,
        recipient: str,
        event_type: str,
        subject: str | None = None,
        body: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str = NoticeStatus.PENDING,
        notification_id: str | None = None,
        outbox_id: str | None = None,
    ) -> Notification:
        """Record one notice about to be sent (or, for ``in_app``, delivered by being written).

        ``notification_id`` may be chosen by the caller: signed email links name the row
        that carries them, so they are made before the row is written.
        """
        if channel not in CHANNELS:
            raise InvalidInput("channel", f"must be one of {list(CHANNELS)}")
        if status not in NOTIFICATION_STATUSES:
            raise InvalidInput("status", f"must be one of {list(NOTIFICATION_STATUSES)}")
        now = self._clock()
        with self._transactions.transaction() as session:
            row = ApprovalNotificationRow(
                id=notification_id or str(uuid.uuid4()),
                request_id=str(request_id),
                channel=channel,
                recipient=recipient[:320],
                event_type=event_type,
                status=status,
                retry_count=0,
                subject=subject[:500] if subject else subject,
                body=body,
                metadata_=json_safe(metadata or {}),
                sent_at=now if status == NoticeStatus.SENT else None,
                failed_at=now if status == NoticeStatus.FAILED else None,
                outbox_id=outbox_id,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            if status in (NoticeStatus.SENT, NoticeStatus.FAILED):
                self._transactions.measure(
                    session, partial(metrics.notice, channel=channel, delivered=status == NoticeStatus.SENT)
                )
            return Notification.from_row(row)

    def _notification_row(self, session: Session, notification_id: str) -> ApprovalNotificationRow:
        row = session.scalar(
            select(ApprovalNotificationRow).where(ApprovalNotificationRow.id == str(notification_id)).with_for_update()
        )
        if row is None:
            raise InvalidInput("notification_id", f"no notification {notification_id!r}")
        return row

    def mark_notification_sent(
        self,
        notification_id: str,
        *,
        retry_count: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Notification:
        """The notice reached its channel; ``metadata`` is merged (e.g. Slack's message ``ts``)."""

        def sent(row: ApprovalNotificationRow, now: dt.datetime) -> None:
            row.sent_at = now
            row.error = None
            row.next_attempt_at = None
            if metadata:
                row.metadata_ = {**(row.metadata_ or {}), **json_safe(metadata)}

        return self._settle(notification_id, delivered=True, retry_count=retry_count, record=sent)

    def mark_notification_failed(
        self,
        notification_id: str,
        *,
        error: str,
        retry_count: int | None = None,
        next_attempt_at: dt.datetime | None = None,
    ) -> Notification:
        """A send failed; with ``next_attempt_at`` it will be retried, without it it is final."""

        def failed(row: ApprovalNotificationRow, now: dt.datetime) -> None:
            row.failed_at = now
            row.error = error[:4000]
            row.next_attempt_at = next_attempt_at

        return self._settle(notification_id, delivered=False, retry_count=retry_count, record=failed)

    def _settle(
        self,
        notification_id: str,
        *,
        delivered: bool,
        retry_count: int | None,
        record: Callable[[ApprovalNotificationRow, dt.datetime], None],
    ) -> Notification:
        # One send's outcome under the row lock: the status, its metric, what ``record`` keeps.
        now = self._clock()
        with self._transactions.transaction() as session:
            row = self._notification_row(session, notification_id)
            row.status = NoticeStatus.SENT if delivered else NoticeStatus.FAILED
            self._transactions.measure(session, partial(metrics.notice, channel=row.channel, delivered=delivered))
            record(row, now)
            if retry_count is not None:
                row.retry_count = retry_count
            row.updated_at = now
            session.flush()
            return Notification.from_row(row)

    def get_notification(self, notification_id: str) -> Notification:
        """One notification by id."""
        with self.store.session() as session:
            row = session.get(ApprovalNotificationRow, str(notification_id))
            if row is None:
                raise InvalidInput("notification_id", f"no notification {notification_id!r}")
            return Notification.from_row(row)

    def list_notifications(
        self,
        *,
        request_id: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        status: str | None = None,
        event_type: str | None = None,
        outbox_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> builtins.list[Notification]:
        """Notifications, oldest (or newest) first, filtered by any of the given fields."""
        n = ApprovalNotificationRow
        query = select(n)
        for column, value in (
            (n.request_id, request_id),
            (n.recipient, recipient),
            (n.channel, channel),
            (n.status, status),
            (n.event_type, event_type),
            (n.outbox_id, outbox_id),
        ):
            if value is not None:
                query = query.where(column == str(value))
        order = (n.created_at.desc(), n.id.desc()) if newest_first else (n.created_at, n.id)
        query = query.order_by(*order).limit(limit).offset(offset)
        with self.store.session() as session:
            return [Notification.from_row(r) for r in session.scalars(query)]

    def count_notifications(self, *, recipient: str, channel: str | None = None, status: str | None = None) -> int:
        """How many notifications of ``recipient`` there are (on ``channel``, in ``status``)."""
        n = ApprovalNotificationRow
        query = select(func.count()).select_from(n).where(n.recipient == recipient)
        if channel is not None:
            query = query.where(n.channel == channel)
        if status is not None:
            query = query.where(n.status == status)
        with self.store.session() as session:
            return int(session.scalar(query) or 0)

    def unread_count(self, recipient: str) -> int:
        """In-app notifications of ``recipient`` not yet marked read."""
        n = ApprovalNotificationRow
        with self.store.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(n)
                    .where(n.channel == Channel.IN_APP, n.recipient == recipient, n.status == NoticeStatus.SENT)
                )
                or 0
            )

    def mark_read(self, recipient: str, notification_ids: Iterable[str] | None = None) -> int:
        """Mark ``recipient``'s in-app notifications read (all, or the given ids); return how many."""
        n = ApprovalNotificationRow
        now = self._clock()
        with self._transactions.transaction() as session:
            query = select(n).where(
                n.channel == Channel.IN_APP, n.recipient == recipient, n.status == NoticeStatus.SENT
            )
            if notification_ids is not None:
                query = query.where(n.id.in_([str(i) for i in notification_ids]))
            rows = builtins.list(session.scalars(query))
            for row in rows:
                row.status = NoticeStatus.READ
                row.read_at = now
                row.updated_at = now
            session.flush()
            return len(rows)

    def consume_link(self, notification_id: str, *, request_id: str, recipient: str, action: str) -> Notification:
        """Record that the emailed link of ``notification_id`` was used; :class:`LinkAlreadyUsed` if it was.

        The row lock makes two simultaneous uses of one link produce exactly one success.
        """
        now = self._clock()
        with self._transactions.transaction() as session:
            return self.use_link(
                session, notification_id, request_id=request_id, recipient=recipient, action=action, now=now
            )

    def use_link(
        self, session: Session, notification_id: str, *, request_id: str, recipient: str, action: str, now: dt.datetime
    ) -> Notification:
        """Use up the emailed link of ``notification_id`` in ``session``; :class:`LinkAlreadyUsed` if it was.

        Inside the caller's transaction: a decision and the use of its link commit together.
        """
        row = self._notification_row(session, notification_id)
        if row.request_id != str(request_id) or row.recipient != recipient:
            raise InvalidInput("link", "does not belong to this request and recipient")
        meta = dict(row.metadata_ or {})
        if meta.get("link_used"):
            raise LinkAlreadyUsed(row.id)
        meta["link_used"] = {"action": action, "at": now.isoformat()}
        row.metadata_ = meta
        row.updated_at = now
        session.flush()
        return Notification.from_row(row)

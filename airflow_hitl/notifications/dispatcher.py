"""Deliver a gate's notices: recipients, rendering, sending with retries, one row per send.

:class:`NotificationDispatcher` runs where slow work is allowed (the worker, in the
operator's ``execute``/``execute_complete``; the api-server), never in the triggerer. Every
send is an ``approval_notifications`` row written through the
:class:`~airflow_hitl.manager.ApprovalManager`: ``pending`` when recorded, then ``sent``, or
``failed`` with the error (and ``next_attempt_at`` while retries remain). Channels and
recipients are sent in parallel, each with its own bounded exponential backoff, and
:meth:`NotificationDispatcher.dispatch` never raises: a broken channel must not block another
channel, and no notice may ever block or decide the approval.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow_hitl.manager import ApprovalManager, utcnow
from airflow_hitl.notifications.channels import (
    HitlEmailNotifier,
    HitlSlackNotifier,
    HitlTeamsNotifier,
    HitlWebhookNotifier,
    approval_blocks,
    outcome_line,
)
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.notifications.recipients import UserDirectory
from airflow_hitl.notifications.signing import LinkClaims, link_expiry, make_token, signing_key
from airflow_hitl.notifications.teams import DEFAULT_TEAMS_CONN_ID, approval_card
from airflow_hitl.notifications.templates import RenderedMessage, render, template_context
from airflow_hitl.records import Approval, Notification
from airflow_hitl.retry import RetryPolicy
from airflow_hitl.settings import HitlSettings
from airflow_hitl.vocabulary import ACTION_EVENTS, CHANNELS, EVENTS, FINAL_EVENTS, Channel, NoticeStatus, final_event

log = logging.getLogger(__name__)

LINKS_PATH = "/hitl/links"


def event_for(approval: Approval) -> str:
    """The notice event that matches a finished request's state."""
    return final_event(approval.state)


def details_url(base_url: str, approval: Approval) -> str:
    """The gate's task instance page in the Airflow UI."""
    dag = quote(approval.dag_id, safe="")
    if approval.run_id and approval.task_id:
        url = f"{base_url}/dags/{dag}/runs/{quote(approval.run_id, safe='')}/tasks/{quote(approval.task_id, safe='')}"
        return url + (f"/mapped/{approval.map_index}" if approval.map_index >= 0 else "")
    return f"{base_url}/dags/{dag}"


def _settled(row: Notification) -> bool:
    """True when a notice needs no further send: delivered, or failed with no retry planned."""
    return row.status in (NoticeStatus.SENT, NoticeStatus.READ) or (
        row.status == NoticeStatus.FAILED and row.next_attempt_at is None
    )


@dataclass(frozen=True, kw_only=True)
class _Job:
    """One send: a recorded row and the callable that delivers it."""

    notification: Notification
    send: Callable[[], Mapping[str, Any] | None]
    # Attempts made before this one (a retry of an outbox notice reuses its row).
    attempt: int = 0


#: Builds the send jobs (or finished rows) of one channel for a notice's recipients.
_JobBuilder = Callable[[Approval, str, Mapping[str, Any], Sequence[str]], list[Any]]


class NotificationDispatcher:
    """Send a gate's notices on its configured channels and record each one.

    :param manager: The store's manager (every row goes through it).
    :param settings: Notification options; default ``NotifySettings.load()``.
    :param directory: User to email/Slack id resolution; default from ``settings``.
    :param base_url: Public URL of the api-server for links; default ``[hitl] base_url``.
    :param sleep: Sleep function between retries (tests pass a fast one).
    :param max_workers: Parallel sends.
    """

    def __init__(
        self,
        *,
        manager: ApprovalManager,
        settings: NotifySettings | None = None,
        directory: UserDirectory | None = None,
        base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_workers: int = 8,
    ) -> None:
        self.manager = manager
        self.settings = settings or NotifySettings.load()
        self.directory = directory or UserDirectory(settings=self.settings)
        self.base_url = (base_url or HitlSettings.load().base_url).rstrip("/")
        self._sleep = sleep
        self._max_workers = max_workers
        # Per-dispatch state (one dispatch at a time per dispatcher): see dispatch().
        self._outbox_id: str | None = None
        self._prior: dict[tuple[str, str], Notification] = {}
        self._retry_at: dt.datetime | None = None
        self._single_attempt = False
        self._defer_unresolved = False
        self.deferred: list[str] = []
        # The channel registry: one builder of send jobs per channel of the vocabulary.
        self._builders: dict[str, _JobBuilder] = {
            Channel.EMAIL: self._jobs_email,
            Channel.SLACK: self._jobs_slack,
            Channel.WEBHOOK: self._jobs_webhook,
            Channel.IN_APP: self._jobs_in_app,
            Channel.TEAMS: self._jobs_teams,
        }
        if set(self._builders) != set(CHANNELS):
            raise RuntimeError(f"channels without a builder: {sorted(set(CHANNELS) - set(self._builders))}")

    # ------------------------------------------------------------------ public

    def dispatch(
        self,
        approval: Approval,
        event: str,
        *,
        notify: Mapping[str, Any] | None = None,
        outbox_id: str | None = None,
        retry_at: dt.datetime | None = None,
        defer_unresolved: bool = False,
    ) -> list[Notification]:
        """Send ``event`` about ``approval`` on every configured channel; return the final rows.

        ``notify`` defaults to the request's own ``notify`` options (set by the operator).
        Never raises: failures are logged and recorded as ``failed`` rows.

        With ``outbox_id`` (the outbox drainer) every send is tried once: a recipient already
        reached for that notice is not sent again, a retry reuses the earlier row and its
        message id (email link tokens, webhook ``id``), and a failure is recorded with
        ``next_attempt_at=retry_at`` (None: given up). ``defer_unresolved`` leaves recipients
        whose address this process cannot resolve to another sender (listed in ``deferred``).
        """
        self._outbox_id = outbox_id
        self._single_attempt = outbox_id is not None
        self._retry_at = retry_at
        self._defer_unresolved = defer_unresolved
        self.deferred = []
        try:
            earlier = self.manager.notices.list_notifications(outbox_id=outbox_id, limit=10_000) if outbox_id else []
            self._prior = {(n.channel, n.recipient): n for n in earlier}
            return self._dispatch(approval, event, dict(notify if notify is not None else approval.notify))
        except Exception:
            log.exception("notifications for approval request %s (%s) failed", approval.id, event)
            return []

    def _row(
        self,
        approval: Approval,
        channel: str,
        recipient: str,
        event: str,
        message: RenderedMessage | None = None,
        **fields: Any,
    ) -> Notification:
        """The row of one notice about ``approval``: ``message``'s subject and text unless ``fields`` name others."""
        if message is not None:
            fields = {"subject": message.subject, "body": message.text, **fields}
        return self._record(request_id=approval.id, channel=channel, recipient=recipient, event_type=event, **fields)

    def _record(self, **fields: Any) -> Notification:
        """The row of one send: the earlier one of this outbox notice, else a new one."""
        prior = self._prior.get((fields["channel"], fields["recipient"]))
        if prior is not None:
            return prior
        return self.manager.notices.record_notification(outbox_id=self._outbox_id, **fields)

    def _job(self, row: Notification, send: Callable[[], Mapping[str, Any] | None]) -> _Job | Notification:
        """A send to make, or the row as it stands when this recipient needs nothing more."""
        if _settled(row):
            return row
        retried = row.status == NoticeStatus.FAILED and self._prior.get((row.channel, row.recipient)) is row
        return _Job(notification=row, send=send, attempt=row.retry_count + (1 if retried else 0))

    def recipients(self, approval: Approval, event: str, notify: Mapping[str, Any]) -> list[str]:
        """Airflow users to tell: ``notify_users`` and ``notify_roles``, else the allowed approvers."""
        users = list(notify.get("users") or [])
        roles = list(notify.get("roles") or [])
        if not users and not roles:
            users, roles = list(approval.allowed_approvers), list(approval.allowed_roles)
        people = self.directory.expand(users, roles)
        if event in FINAL_EVENTS and approval.requested_by and approval.requested_by not in people:
            # The person who started the run wants to know how it ended.
            people.append(approval.requested_by)
        return people

    # ------------------------------------------------------------------ internals

    def _dispatch(self, approval: Approval, event: str, notify: dict[str, Any]) -> list[Notification]:
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        channels = [c for c in notify.get("channels") or [] if c in CHANNELS]
        if not channels:
            return []
        people = self.recipients(approval, event, notify)
        jobs: list[_Job] = []
        done: list[Notification] = []
        for channel in channels:
            try:
                jobs_or_rows = self._builders[channel](approval, event, notify, people)
            except Exception as err:
                # A channel that cannot even be prepared (e.g. no signing key) fails alone.
                log.exception("could not prepare %s notices for %s", channel, approval.id)
                error = f"{type(err).__name__}: {err}"
                done.append(
                    self._row(approval, channel, "*", event, status=NoticeStatus.FAILED, metadata={"error": error})
                )
                continue
            for item in jobs_or_rows:
                (jobs if isinstance(item, _Job) else done).append(item)
        if jobs:
            with ThreadPoolExecutor(max_workers=min(self._max_workers, len(jobs))) as pool:
                done += list(pool.map(self._deliver, jobs))
        return done

    def _deliver(self, job: _Job) -> Notification:
        row = job.notification
        if self._single_attempt:
            return self._deliver_once(job)
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            try:
                meta = job.send() or {}
                return self.manager.notices.mark_notification_sent(row.id, retry_count=attempt, metadata=meta)
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                if attempt + 1 >= attempts:
                    log.warning(
                        "%s notice %s to %s failed for good after %d attempts: %s",
                        row.channel,
                        row.id,
                        row.recipient,
                        attempts,
                        error,
                    )
                    return self.manager.notices.mark_notification_failed(row.id, error=error, retry_count=attempt)
                policy = RetryPolicy(first=self.settings.retry_backoff, cap=self.settings.retry_max_backoff)
                delay = policy.delay(attempt + 1)
                log.info("%s notice %s failed (%s); retry %d in %.1fs", row.channel, row.id, error, attempt + 1, delay)
                self.manager.notices.mark_notification_failed(
                    row.id, error=error, retry_count=attempt, next_attempt_at=utcnow() + dt.timedelta(seconds=delay)
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _deliver_once(self, job: _Job) -> Notification:
        # The outbox drainer owns the retry schedule: one try here, the next one is its call.
        row = job.notification
        try:
            meta = job.send() or {}
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            log.warning(
                "%s notice %s to %s failed (attempt %d): %s", row.channel, row.id, row.recipient, job.attempt + 1, error
            )
            return self.manager.notices.mark_notification_failed(
                row.id, error=error, retry_count=job.attempt, next_attempt_at=self._retry_at
            )
        return self.manager.notices.mark_notification_sent(row.id, retry_count=job.attempt, metadata=meta)

    def _unresolved(self, approval: Approval, channel: str, event: str, user: str, what: str) -> Notification | None:
        if self._defer_unresolved:
            # Another process (the api-server, with Airflow's auth manager) may know this user.
            self.deferred.append(user)
            return None
        log.warning("no %s known for user %r: %s notice of %s not sent", what, user, channel, approval.id)
        return self._row(
            approval,
            channel,
            user,
            event,
            status=NoticeStatus.FAILED,
            metadata={"error": f"no {what} known for user {user!r}"},
        )

    def _render(
        self,
        approval: Approval,
        event: str,
        notify: Mapping[str, Any],
        recipient: str,
        links: Mapping[str, Any],
        *,
        html: bool = False,
    ) -> RenderedMessage:
        context = template_context(approval, event=event, recipient=recipient, links=links)
        return render(event, context, overrides=notify.get("templates"), html=html)

    # ------------------------------------------------------------------ email

    def _links(self, approval: Approval, recipient: str, notification_id: str, key: bytes) -> dict[str, str]:
        expires = link_expiry(
            approval.expires_at.timestamp() if approval.expires_at else None, max_age=self.settings.link_max_age
        )
        links = {}
        for action in ("approve", "reject", "details"):
            token = make_token(
                LinkClaims(
                    request_id=approval.id,
                    recipient=recipient,
                    action=action,
                    notification_id=notification_id,
                    expires_at=expires,
                ),
                key=key,
            )
            links[action] = f"{self.base_url}{LINKS_PATH}?token={token}"
        return links

    def _jobs_email(
        self, approval: Approval, event: str, notify: Mapping[str, Any], people: Sequence[str]
    ) -> list[Any]:
        out: list[Any] = []
        actionable = event in ACTION_EVENTS and approval.is_waiting
        key = signing_key() if actionable else b""
        notifier = HitlEmailNotifier(smtp_conn_id=notify.get("smtp_conn_id"), from_email=notify.get("from_email"))
        for user in people:
            address = self.directory.email_of(user)
            if not address:
                unresolved = self._unresolved(approval, Channel.EMAIL, event, user, "email address")
                out.extend([unresolved] if unresolved else [])
                continue
            prior = self._prior.get((Channel.EMAIL, user))
            if prior is not None and _settled(prior):
                out.append(prior)
                continue
            # A retry reuses the row's id: the links already mailed name it.
            notification_id = prior.id if prior is not None else str(uuid.uuid4())
            if actionable:
                links: dict[str, Any] = self._links(approval, user, notification_id, key)
            else:
                links = {"approve": None, "reject": None, "details": details_url(self.base_url, approval)}
            message = self._render(approval, event, notify, user, links, html=True)
            # The stored body never holds working links: they are bearer secrets.
            redacted = {k: ("[link]" if v else v) for k, v in links.items()}
            stored = self._render(approval, event, notify, user, redacted).text
            row = self._row(
                approval,
                Channel.EMAIL,
                user,
                event,
                message,
                notification_id=notification_id,
                body=stored,
                metadata={"address": address, "links": actionable},
            )

            def send(
                address: str = address, message: RenderedMessage = message, nid: str = notification_id
            ) -> dict[str, Any]:
                return notifier.send(
                    to=address,
                    subject=message.subject,
                    text=message.text,
                    html=message.html,
                    headers={"X-Hitl-Request-Id": approval.id, "X-Hitl-Notification-Id": nid},
                )

            out.append(self._job(row, send))
        return out

    # ------------------------------------------------------------------ slack

    def _jobs_slack(
        self, approval: Approval, event: str, notify: Mapping[str, Any], people: Sequence[str]
    ) -> list[Any]:
        out: list[Any] = []
        notifier = HitlSlackNotifier(slack_conn_id=notify.get("slack_conn_id"))
        url = details_url(self.base_url, approval)
        message = self._render(approval, event, notify, "", {"approve": None, "reject": None, "details": url})
        if event in FINAL_EVENTS:
            posted = {
                (n.metadata.get("channel"), n.metadata.get("ts"))
                for n in self.manager.notices.list_notifications(
                    request_id=approval.id, channel=Channel.SLACK, status=NoticeStatus.SENT, limit=1000
                )
                if n.metadata.get("ts") and n.event_type in ACTION_EVENTS
            }
            blocks = approval_blocks(
                approval, headline=message.subject, details_url=url, buttons=False, footer=outcome_line(approval)
            )
            for channel, ts in sorted(posted):
                update_of = {"channel": channel, "ts": ts, "update": True}
                row = self._row(approval, Channel.SLACK, str(channel), event, message, metadata=update_of)

                def update(channel: str = str(channel), ts: str = str(ts)) -> dict[str, Any]:
                    return notifier.update(channel=channel, ts=ts, text=message.subject, blocks=blocks)

                out.append(self._job(row, update))
            if posted:
                return out
        buttons = event in ACTION_EVENTS and approval.is_waiting
        blocks = approval_blocks(
            approval,
            headline=message.subject,
            details_url=url,
            buttons=buttons,
            footer=None if buttons else outcome_line(approval),
        )
        targets: list[tuple[str, str]] = []
        if notify.get("slack_channel"):
            targets.append((str(notify["slack_channel"]), str(notify["slack_channel"])))
        else:
            for user in people:
                slack_id = self.directory.slack_id_of(user)
                if slack_id is None:
                    unresolved = self._unresolved(approval, Channel.SLACK, event, user, "Slack member id")
                    out.extend([unresolved] if unresolved else [])
                else:
                    targets.append((user, slack_id))
        for recipient, target in targets:
            row = self._row(approval, Channel.SLACK, recipient, event, message, metadata={"target": target})

            def post(target: str = target) -> dict[str, Any]:
                return notifier.post(channel=target, text=message.subject, blocks=blocks)

            out.append(self._job(row, post))
        return out

    # ------------------------------------------------------------------ webhook

    def _jobs_webhook(
        self, approval: Approval, event: str, notify: Mapping[str, Any], people: Sequence[str]
    ) -> list[Any]:
        conn_id = notify.get("webhook_conn_id") or self.settings.webhook_conn_id
        notifier = HitlWebhookNotifier(http_conn_id=conn_id, endpoint=notify.get("webhook_endpoint"))
        url = details_url(self.base_url, approval)
        message = self._render(approval, event, notify, "", {"approve": None, "reject": None, "details": url})
        prior = self._prior.get((Channel.WEBHOOK, conn_id))
        # The receiver deduplicates on the message id: a retry sends the same one.
        message_id = str((prior.metadata if prior else {}).get("message_id") or uuid.uuid4())
        payload = {
            "id": message_id,
            "event": event,
            "subject": message.subject,
            "text": message.text,
            "approval": approval.to_dict(),
            "recipients": list(people),
            "links": {"details": url, "api": f"{self.base_url}/hitl/api/v1/approvals/{approval.id}"},
        }
        row = self._row(approval, Channel.WEBHOOK, conn_id, event, message, metadata={"message_id": message_id})
        return [self._job(row, lambda: notifier.send(payload, message_id=message_id))]

    # ------------------------------------------------------------------ teams

    def _jobs_teams(
        self, approval: Approval, event: str, notify: Mapping[str, Any], people: Sequence[str]
    ) -> list[Any]:
        # One card per event to the connection's channel or chat: Teams has no per-person
        # address here, so the recipient is the connection, like a webhook's.
        conn_id = str(notify.get("teams_conn_id") or DEFAULT_TEAMS_CONN_ID)
        notifier = HitlTeamsNotifier(teams_conn_id=conn_id)
        url = details_url(self.base_url, approval)
        message = self._render(approval, event, notify, "", {"approve": None, "reject": None, "details": url})
        asks = event in ACTION_EVENTS and approval.is_waiting
        card = approval_card(
            approval, headline=message.subject, details_url=url, footer=None if asks else outcome_line(approval)
        )
        row = self._row(approval, Channel.TEAMS, conn_id, event, message)
        return [self._job(row, lambda: notifier.send(card))]

    # ------------------------------------------------------------------ in-app

    def _jobs_in_app(
        self, approval: Approval, event: str, notify: Mapping[str, Any], people: Sequence[str]
    ) -> list[Any]:
        url = details_url(self.base_url, approval)
        rows = []
        for user in people:
            message = self._render(approval, event, notify, user, {"approve": None, "reject": None, "details": url})
            # Written is delivered: the UI reads these rows (unread until marked read).
            rows.append(
                self._row(
                    approval,
                    Channel.IN_APP,
                    user,
                    event,
                    message,
                    metadata={"details_url": url},
                    status=NoticeStatus.SENT,
                )
            )
        return rows

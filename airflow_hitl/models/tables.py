"""SQLAlchemy 2 models of the approval store.

The store is ours, not Airflow's metadata database: workers and triggers cannot reach
Airflow's ORM, so every table here is reached through the ``hitl_default`` connection.
The schema is owned by the Alembic migrations in ``airflow_hitl/migrations``; these
models must stay in step with them (a test compares the two).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from airflow_hitl.vocabulary import (
    NOTIFICATION_STATUSES,
    ORIGINS,
    OUTBOX_STATUSES,
    STANDING_DUE_STATUSES,
    STATES,
    TIMEOUT_ACTIONS,
    VOTES,
    WAITING_STATES,
    ApprovalType,
    NoticeStatus,
    OnReject,
    Origin,
    OutboxStatus,
    StandingDue,
    State,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and made aware again on the way out. Audit hashes are computed from these
    values, so both backends must hand back the same instant in the same form.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} refused: the store keeps UTC-aware times only")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# The same, for a column where None is SQL NULL rather than the JSON value null.
NullableJsonType = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
BigIntPk = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    # The words' plain values, quoted: the migrations and the partial index carry this very text.
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


# Queries for waiting requests use this very text, so PostgreSQL can match it to the
# partial index below even in a prepared statement's generic plan (bound values cannot).
WAITING_PREDICATE = _in("state", WAITING_STATES)


# The columns that name one task try, and the predicates of revision 0013's two unique indexes over them.
TASK_TRY = ("dag_id", "run_id", "task_id", "map_index", "try_number")
_HAS_TASK_INSTANCE = "task_instance_id IS NOT NULL"
_NO_TASK_INSTANCE = "task_instance_id IS NULL"


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic names constraints predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: The columns of ``ix_approval_requests_analytics``, in order (revision 0012; 0014 took ``id`` off).
REQUEST_ANALYTICS = ("dag_id", "task_id", "state", "escalation_level", "requested_at", "decided_at", "sla_breached_at")
#: The columns of ``ix_approval_votes_analytics``, in order (revision 0014).
VOTE_ANALYTICS = ("user", "dag_id", "task_id", "requested_at", "created_at", "vote")


class ApprovalRequestRow(Base):
    """One approval gate: what is asked, of whom, under which policy, and how it ended."""

    __tablename__ = "approval_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), nullable=False)
    run_id: Mapped[str | None] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer, nullable=False, default=-1)
    try_number: Mapped[int | None] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(
        String(10), nullable=False, default=Origin.TASK, server_default=str(Origin.TASK)
    )
    # Airflow's id of the task instance try that opened a task's gate (a UUID, new for every try;
    # NULL: opened before revision 0013, or over the API). A DAG run deleted and created again
    # under its run id starts again at try 1: the id tells the new run's request from the old's.
    task_instance_id: Mapped[str | None] = mapped_column(String(36))

    title: Mapped[str] = mapped_column(String(500), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    approval_type: Mapped[str] = mapped_column(String(20), nullable=False, default=ApprovalType.MANUAL)

    state: Mapped[str] = mapped_column(String(20), nullable=False, default=State.PENDING)
    requested_by: Mapped[str | None] = mapped_column(String(250))
    requested_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    timeout_seconds: Mapped[float | None] = mapped_column()
    timeout_action: Mapped[str | None] = mapped_column(String(20))

    escalation_level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    escalation_targets: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False, default=list)
    escalation_final_action: Mapped[str | None] = mapped_column(String(20))

    required_approvals: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    require_all: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    allowed_approvers: Mapped[list[str]] = mapped_column(JsonType, nullable=False, default=list)
    allowed_roles: Mapped[list[str]] = mapped_column(JsonType, nullable=False, default=list)
    allow_self_approval: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    on_reject: Mapped[str] = mapped_column(String(10), nullable=False, default=OnReject.FAIL)

    decided_by: Mapped[str | None] = mapped_column(String(250))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    decision: Mapped[str | None] = mapped_column(String(20))
    decision_source: Mapped[str | None] = mapped_column(String(20))
    comment: Mapped[str | None] = mapped_column(Text)
    # Who took the one claim to end the closed gate's task in Airflow, and when (NULL: nobody
    # yet): the api-server's gate closer or the gate's trigger, never both (airflow_hitl.gate_ends).
    task_ended_by: Mapped[str | None] = mapped_column(String(250))
    task_ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    # ``metadata`` is reserved by SQLAlchemy's declarative classes; the column keeps its name.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, nullable=False, default=dict)
    notify: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    # The form approvers fill in: input name -> {value, schema, description, required} (airflow_hitl.forms).
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict, server_default="{}")
    # Four eyes across a run: task ids of the run's gates whose voters may not vote on this one.
    # NULL (not JSON null) when the gate names none, so a query can skip the gates without one.
    distinct_from: Mapped[list[str] | None] = mapped_column(NullableJsonType)
    # Approve exactly this artifact: the gate's rendered ``bind`` values, name -> text (NULL: none).
    bound: Mapped[dict[str, str] | None] = mapped_column(NullableJsonType)
    # How long a decision should take (``sla``; NULL: none) and when the gate was found still
    # waiting at ``requested_at + sla`` (NULL: not breached, or not yet). An SLA is no timeout.
    sla_seconds: Mapped[float | None] = mapped_column()
    sla_breached_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    votes: Mapped[list[ApprovalVoteRow]] = relationship(
        back_populates="request", order_by="ApprovalVoteRow.id", lazy="selectin"
    )

    __table_args__ = (
        CheckConstraint(_in("state", STATES), name="state"),
        CheckConstraint(f"timeout_action IS NULL OR {_in('timeout_action', TIMEOUT_ACTIONS)}", name="timeout_action"),
        CheckConstraint("required_approvals >= 1", name="required_approvals"),
        CheckConstraint(_in("origin", ORIGINS), name="origin"),
        # One request per task instance try: two workers running one try, or execute() run again,
        # find the same one. A run deleted and created again has other task instances, so its
        # gate gets a request of its own. A request with no task instance id keeps the rule from
        # before revision 0013, one per try: a second index, since a unique key never equates NULLs.
        Index(
            "uq_approval_requests_task_instance_try",
            *TASK_TRY,
            "task_instance_id",
            unique=True,
            postgresql_where=text(_HAS_TASK_INSTANCE),
            sqlite_where=text(_HAS_TASK_INSTANCE),
        ),
        Index(
            "uq_approval_requests_task_try",
            *TASK_TRY,
            unique=True,
            postgresql_where=text(_NO_TASK_INSTANCE),
            sqlite_where=text(_NO_TASK_INSTANCE),
        ),
        Index(None, "state", "expires_at"),
        # The inbox (pending, soonest expiry first) walks this in order and stops after a
        # page, however many requests wait; without it every page sorts all of them.
        Index(
            "ix_approval_requests_waiting",
            "expires_at",
            "id",
            postgresql_where=text(WAITING_PREDICATE),
            sqlite_where=text(WAITING_PREDICATE),
        ),
        Index(None, "dag_id", "run_id", "task_id"),
        Index(None, "requested_by"),
        Index(None, "decided_by"),
        Index(None, "decided_at"),
        # Every column of a request the analytics read (airflow_hitl.analytics), in gate order:
        # a report reads this index, never the wide rows, and groups gates without sorting them.
        Index("ix_approval_requests_analytics", *REQUEST_ANALYTICS),
    )


class ApprovalVoteRow(Base):
    """One person's vote on one request; a person counts once."""

    __tablename__ = "approval_votes"

    id: Mapped[int] = mapped_column(BigIntPk, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("approval_requests.id", ondelete="CASCADE"), nullable=False
    )
    user: Mapped[str] = mapped_column(String(250), nullable=False)
    user_roles: Mapped[list[str]] = mapped_column(JsonType, nullable=False, default=list)
    vote: Mapped[str] = mapped_column(String(10), nullable=False)
    comment: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(20), nullable=False)
    escalation_level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, nullable=False, default=dict)
    # What this voter filled in (validated against the request's form, defaults filled on approve).
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict, server_default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    # Who actually cast a vote counted as ``user``'s, through a delegation (NULL: ``user`` did).
    delegate: Mapped[str | None] = mapped_column(String(250))
    # SHA-256 (hex) of what the voter was shown when they voted (NULL: not known).
    content_digest: Mapped[str | None] = mapped_column(String(64))
    # Copies of the request's DAG, task and opening time, which never change once it is opened
    # (written with the vote, from the request's row): the analytics filter and group votes
    # without a join to the requests (revision 0014).
    dag_id: Mapped[str] = mapped_column(String(250), nullable=False)
    task_id: Mapped[str | None] = mapped_column(String(250))
    requested_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    request: Mapped[ApprovalRequestRow] = relationship(back_populates="votes")

    __table_args__ = (
        UniqueConstraint("request_id", "user"),
        CheckConstraint(_in("vote", VOTES), name="vote"),
        # Every column of a vote the approvers' analytics read, in voter order: a report reads
        # this index alone and groups voters without a join or a sort.
        Index("ix_approval_votes_analytics", *VOTE_ANALYTICS),
    )


class ApprovalEventRow(Base):
    """Append-only audit trail; each row carries the hash (keyed: the HMAC) of the one before it."""

    __tablename__ = "approval_events"

    seq: Mapped[int] = mapped_column(BigIntPk, primary_key=True, autoincrement=True)
    # No foreign key: the audit trail must outlive any request row it speaks of.
    request_id: Mapped[str | None] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(40), nullable=False)
    actor: Mapped[str | None] = mapped_column(String(250))
    source: Mapped[str] = mapped_column(String(20), nullable=False)
    comment: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # The fingerprint of the key ``hash`` is an HMAC under (never the key); NULL: plain SHA-256.
    key_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index(None, "request_id", "seq"),)


class ApprovalNotificationRow(Base):
    """One notice to one recipient on one channel, with its delivery state."""

    __tablename__ = "approval_notifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("approval_requests.id", ondelete="CASCADE"), nullable=False
    )
    channel: Mapped[str] = mapped_column(String(20), nullable=False)
    recipient: Mapped[str] = mapped_column(String(320), nullable=False)
    event_type: Mapped[str] = mapped_column(String(40), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=NoticeStatus.PENDING)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(500))
    body: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, nullable=False, default=dict)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # The outbox intent this notice delivers: retries reuse its row (and message id).
    outbox_id: Mapped[str | None] = mapped_column(String(36))
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    read_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    failed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(_in("status", NOTIFICATION_STATUSES), name="status"),
        Index(None, "request_id"),
        Index(None, "recipient", "status"),
        Index(None, "status", "next_attempt_at"),
        Index(None, "outbox_id"),
    )


class ApprovalOutboxRow(Base):
    """A notice that must go out: queued in the transaction of the transition it announces.

    One row per request and ``dedupe_key`` (``required``, ``escalated:1``, ``reminder:3``,
    ``decided``...), so a transition enqueues its notice exactly once. Senders claim due rows
    by setting ``lease_until`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE``
    on SQLite); a sender that dies leaves a lease that simply runs out.
    """

    __tablename__ = "approval_outbox"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("approval_requests.id", ondelete="CASCADE"), nullable=False
    )
    event_type: Mapped[str] = mapped_column(String(40), nullable=False)
    dedupe_key: Mapped[str] = mapped_column(String(80), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=OutboxStatus.PENDING)
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(_in("status", OUTBOX_STATUSES), name="status"),
        UniqueConstraint("request_id", "dedupe_key"),
        Index(None, "status", "due_at"),
    )


class ApprovalDelegationRow(Base):
    """``delegator`` lets ``delegate`` decide their approvals from ``starts_at`` to ``ends_at``.

    ``dag_ids`` NULL covers every DAG. Ending one early sets ``ended_at``; rows are never
    deleted, since the audit trail and the votes cast through them speak of them.
    """

    __tablename__ = "approval_delegations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    delegator: Mapped[str] = mapped_column(String(250), nullable=False)
    delegate: Mapped[str] = mapped_column(String(250), nullable=False)
    starts_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    ends_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    dag_ids: Mapped[list[str] | None] = mapped_column(JsonType, nullable=True)
    created_by: Mapped[str] = mapped_column(String(250), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(250))

    __table_args__ = (
        CheckConstraint("delegator <> delegate", name="not_self"),
        CheckConstraint("ends_at > starts_at", name="period"),
        # "Whom may X decide for now": a delegate's rows whose period has not ended.
        Index(None, "delegate", "ends_at"),
        Index(None, "delegator", "ends_at"),
    )


class ApprovalStandingRow(Base):
    """``approver``'s vote given ahead of time for the gates of ``dag_id`` (one task, or all) in a window.

    ``uses_left`` NULL: no limit; otherwise spent one at a time, under this row's lock, by the
    vote it casts. Revoking sets ``revoked_at``; rows are never deleted, since the audit trail
    and the votes cast through them speak of them.
    """

    __tablename__ = "approval_standing"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    approver: Mapped[str] = mapped_column(String(250), nullable=False)
    dag_id: Mapped[str] = mapped_column(String(250), nullable=False)
    task_id: Mapped[str | None] = mapped_column(String(250))
    valid_from: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    valid_until: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    max_uses: Mapped[int | None] = mapped_column(Integer)
    uses_left: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(250))

    __table_args__ = (
        CheckConstraint("valid_until > valid_from", name="window"),
        CheckConstraint("max_uses IS NULL OR max_uses >= 1", name="max_uses"),
        CheckConstraint("uses_left IS NULL OR (uses_left >= 0 AND uses_left <= max_uses)", name="uses_left"),
        # "Which standing approvals cover a gate of this DAG that opens now": by DAG, live ones last.
        Index(None, "dag_id", "valid_until"),
        Index(None, "approver", "valid_until"),
    )


class ApprovalStandingDueRow(Base):
    """A standing approval owes its vote to a gate that opened (or escalated) inside its window.

    Written in the transaction that opened or escalated the gate, so what was live *then* is
    what counts; settled by the api-server (``used``: the vote was cast, in that very
    transaction; ``skipped``: the policy, a revocation or the uses left refused it, ``reason``
    says why). One row per standing approval, request and escalation level.
    """

    __tablename__ = "approval_standing_due"

    id: Mapped[int] = mapped_column(BigIntPk, primary_key=True, autoincrement=True)
    standing_id: Mapped[str] = mapped_column(String(36), ForeignKey("approval_standing.id"), nullable=False)
    request_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("approval_requests.id", ondelete="CASCADE"), nullable=False
    )
    escalation_level: Mapped[int] = mapped_column(Integer, nullable=False)
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default=StandingDue.DUE)
    reason: Mapped[str | None] = mapped_column(Text)
    settled_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint(_in("status", STANDING_DUE_STATUSES), name="status"),
        UniqueConstraint("standing_id", "request_id", "escalation_level"),
        # The api-server's look for work walks only the unsettled rows, however many were settled.
        Index(
            "ix_approval_standing_due_due",
            "due_at",
            postgresql_where=text(f"status = '{StandingDue.DUE}'"),
            sqlite_where=text(f"status = '{StandingDue.DUE}'"),
        ),
        Index(None, "request_id"),
    )


# Configure our mappers now, in the importing thread. Left to the first query, SQLAlchemy's
# global "configure" step would run Airflow's own mapper hooks (which import every Airflow
# model) in whichever thread queries first, and can deadlock on the import lock against a
# main thread that is importing Airflow at the same moment.
Base.registry.configure()

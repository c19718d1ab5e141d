"""The audit trail's chain: each event commits to the one before it, and to the facts it records.

**Links.** An event's ``hash`` is computed over its content (request, type, actor, source,
comment, details, time) and the ``prev_hash`` of the event before it, as canonical JSON:
plain SHA-256, or, with ``[hitl] audit_key`` set, HMAC-SHA256 under that key, the event's
``key_id`` (the key's fingerprint, never the key) hashed with it. Editing, deleting or
reordering an event breaks the links after it, which :func:`verify_chain` reports with the
first sequence number that no longer matches. Events are appended by
:mod:`airflow_hitl.transaction` when a transaction seals, under the writer's
:class:`AuditKey` (read once per manager), and read back through :class:`AuditReader`.

**Facts.** Since facts version :data:`FACTS_VERSION` every event of a request records, in its
``details`` (:data:`FACTS_VERSION_KEY` and :data:`FACTS_KEY`), what the API shows of the rows
it wrote: a vote event the vote (:func:`vote_facts`), the request's creation its content and
state, an escalation and every end the state they left (:func:`request_facts`).
:meth:`AuditReader.verify_audit_chain` walks the links, then replays each request's events
and compares them with its rows: the ``approval_requests`` row must be what the last events
say, its ``approval_votes`` rows exactly the votes they record. A request whose events carry
no facts (written before this) is checked by its links only.

**Keyed from a point on.** A store keeps its unkeyed events and is keyed from the first
event a keyed writer appends: the keyed events are a suffix of the chain, whose first
sequence number verification reports as ``keyed_from``. A writer refuses to append an
unkeyed event, or one under another key, after a keyed one (every verification would fail
from there on), and verification refuses an unkeyed event after a keyed one, a keyed event
when no key is configured, a key id other than the configured key's, and, with a key
configured, a chain whose last event is unkeyed.

**Residual risk** (what this cannot show; SECURITY.md repeats it):

- Whoever holds both the key and the store's credentials can write a consistent chain.
  Every component that writes the store holds both (the api-server, the triggerers, the
  workers that run gates, a break-glass CLI), and a DAG author's code runs on those
  workers: the key raises the bar from "can write the store" to "can read a writing
  component's configuration", no further.
- A hash chain cannot show its own end. Deleting the newest events leaves a shorter chain
  that verifies; the rows they spoke of then differ from what the remaining events say (and
  fail), unless those rows are deleted too. A request deleted outright (its votes and
  notices go with it by cascade) is not reported: the trail keeps its history, and nothing
  false is shown.
- Rewriting the keyed suffix as unkeyed SHA-256 links (a downgrade) is caught only by a
  verification that has the key configured: it then requires a keyed last event, and so
  also refuses a store where nothing has been written since the key was set (it cannot
  tell that from a downgrade). Verify where the key is configured. A downgrade followed by
  a keyed writer's next append is not caught by the store alone: the writer keys from its
  new tail as it would a store never keyed, and ``keyed_from`` moves to a later event.
  What tells is outside the store: the writer that starts a keyed suffix logs it ("the
  audit trail is keyed from here on", with the seq and key id). Record ``keyed_from`` when
  the key is set and alert when ``airflow hitl audit verify`` reports another.
- Requests whose events predate facts are checked by their links only: their rows can be
  rewritten undetected. So can what the chain does not record: notices, the outbox,
  delegation rows (their events record their terms, the rows are not compared) and
  ``updated_at``.
- One key at a time: events keyed under an earlier key no longer verify after a rotation.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import RowMapping, Table, bindparam, select
from sqlalchemy.orm import Session, joinedload

from airflow_hitl.exceptions import ApprovalNotFound
from airflow_hitl.models.tables import ApprovalEventRow, ApprovalRequestRow, ApprovalVoteRow
from airflow_hitl.records import Approval, Vote, record_of
from airflow_hitl.settings import conf_get

if TYPE_CHECKING:
    from airflow_hitl.models.store import ApprovalStore

GENESIS_HASH = "0" * 64
#: Keys of an event's ``details``: the version of the facts it records, and the facts.
FACTS_VERSION_KEY = "facts_version"
FACTS_KEY = "facts"
FACTS_VERSION = 1

#: What a vote event records of its vote (:func:`vote_facts`): every field of :class:`Vote`.
VOTE_FACTS = (
    "user",
    "delegate",
    "vote",
    "inputs",
    "comment",
    "reason",
    "source",
    "created_at",
    "content_digest",
    "metadata",
    "user_roles",
    "escalation_level",
)
#: What a request is asked and of whom, set when it is created and never changed.
REQUEST_CONTENT = (
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "try_number",
    "origin",
    "title",
    "description",
    "reason",
    "context",
    "inputs",
    "approval_type",
    "requested_by",
    "requested_at",
    "timeout_action",
    "escalation_targets",
    "escalation_final_action",
    "require_all",
    "allow_self_approval",
    "on_reject",
    "metadata",
    "notify",
    "created_at",
)
#: A vote's copies of its request's columns (revision 0014), which must be the request's.
VOTE_COPIES = ("dag_id", "task_id", "requested_at")
#: What a transition of a request may change: every event of a request that is not a vote records them.
REQUEST_STATE = (
    "state",
    "decision",
    "decided_by",
    "decided_at",
    "decision_source",
    "comment",
    "escalation_level",
    "allowed_approvers",
    "allowed_roles",
    "required_approvals",
    "expires_at",
)

_KEY_ID_LABEL = b"airflow-hitl audit key id"
_REQUESTS = "approval_requests"
_VOTES = "approval_votes"


def canonical_time(value: dt.datetime) -> str:
    """UTC, microsecond precision, one spelling on every backend."""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class AuditKey:
    """The secret of ``[hitl] audit_key`` and its fingerprint, ``key_id`` (what events record)."""

    secret: bytes = field(repr=False)
    key_id: str

    @classmethod
    def of(cls, value: str | None) -> AuditKey | None:
        """The key of an option's value; None when it is empty (surrounding white space is no part of it)."""
        text = (value or "").strip()
        if not text:
            return None
        secret = text.encode("utf-8")
        # An HMAC of a fixed label, not a hash of the key: the id tells keys apart and says
        # nothing more about the key than any link keyed under it already does.
        return cls(secret=secret, key_id=hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16])

    @classmethod
    def configured(cls) -> AuditKey | None:
        """The key of ``[hitl] audit_key`` as configured now (None when unset)."""
        return cls.of(conf_get("audit_key"))

    def sign(self, payload: bytes) -> str:
        """HMAC-SHA256 of ``payload`` under this key (hex)."""
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()


def event_hash(
    *,
    prev_hash: str,
    request_id: str | None,
    event_type: str,
    actor: str | None,
    source: str,
    comment: str | None,
    details: dict[str, Any],
    created_at: dt.datetime,
    key: AuditKey | None = None,
) -> str:
    """The event's link: SHA-256 over its content and the previous hash as canonical JSON, or
    HMAC-SHA256 under ``key`` over the same content with the key's id."""
    content: dict[str, Any] = {
        "prev": prev_hash,
        "request_id": request_id,
        "type": event_type,
        "actor": actor,
        "source": source,
        "comment": comment,
        "details": details,
        "at": canonical_time(created_at),
    }
    if key is not None:
        content["key_id"] = key.key_id
    payload = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False).encode(
        "utf-8"
    )
    return key.sign(payload) if key is not None else hashlib.sha256(payload).hexdigest()


def keyed_tail_problem(tail_key_id: str | None, key: AuditKey | None) -> str | None:
    """Why a writer with ``key`` must not append after an event keyed under ``tail_key_id`` (None: it may)."""
    if tail_key_id is None or (key is not None and key.key_id == tail_key_id):
        return None
    if key is None:
        return (
            f"the audit trail is keyed (key_id {tail_key_id}) and this component has no [hitl] audit_key: set it "
            "(AIRFLOW__HITL__AUDIT_KEY) to the trail's key on every component that writes the approval store"
        )
    return (
        f"the audit trail is keyed under key_id {tail_key_id}, and this component's [hitl] audit_key is another "
        f"(key_id {key.key_id}): every component that writes the approval store needs the same key"
    )


# ---------------------------------------------------------------------- facts


def _plain(value: Any) -> Any:
    """A fact's value as JSON: times in :func:`canonical_time`, tuples as lists, levels as stored."""
    if isinstance(value, dt.datetime):
        return canonical_time(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "to_json"):  # an EscalationLevel of a record: as its row stores it
        return value.to_json()
    return value


def _read(source: Any, name: str) -> Any:
    # A record or row by attribute, a Core row's mapping by column name; a row's ``metadata``
    # column is its ``metadata_`` attribute (declarative classes reserve the name).
    if isinstance(source, Mapping):
        return source[name]
    if name == "metadata" and hasattr(source, "metadata_"):
        return source.metadata_
    return getattr(source, name)


def vote_facts(vote: Vote) -> dict[str, Any]:
    """What the audit trail records of a vote: every field of :data:`VOTE_FACTS`, as JSON.

    The one shape of a vote's facts: its ``vote`` event records it, verification compares it
    with the vote's row, signed evidence carries it. Times are :func:`canonical_time`.
    """
    return {name: _plain(getattr(vote, name)) for name in VOTE_FACTS}


def request_facts(request: Any, *, content: bool = False) -> dict[str, Any]:
    """What the audit trail records of a request (an approval, its row, or a Core row's mapping).

    Its :data:`REQUEST_STATE` as a transition left it; with ``content``, its
    :data:`REQUEST_CONTENT` too (the request's creation records both).
    """
    names = (*REQUEST_CONTENT, *REQUEST_STATE) if content else REQUEST_STATE
    return {name: _plain(_read(request, name)) for name in names}


def with_vote_facts(details: Mapping[str, Any], vote: Vote) -> dict[str, Any]:
    """A vote event's ``details`` with its vote's facts (they win over any key of the same name)."""
    return {**details, FACTS_VERSION_KEY: FACTS_VERSION, FACTS_KEY: {"vote": vote_facts(vote)}}


def with_request_facts(details: Mapping[str, Any], request: Any, *, content: bool = False) -> dict[str, Any]:
    """A request event's ``details`` with the request's facts after it (see :func:`request_facts`)."""
    return {
        **details,
        FACTS_VERSION_KEY: FACTS_VERSION,
        FACTS_KEY: {"request": request_facts(request, content=content)},
    }


def _same(store: Any, chain: Any) -> bool:
    """Equal as JSON values, types included: 1, 1.0 and true are three different facts."""
    if type(store) is not type(chain):
        return False
    if isinstance(store, dict):
        return store.keys() == chain.keys() and all(_same(value, chain[key]) for key, value in store.items())
    if isinstance(store, list):
        return len(store) == len(chain) and all(map(_same, store, chain))
    return bool(store == chain)


# ---------------------------------------------------------------------- verification


@dataclass(frozen=True, kw_only=True)
class RowMismatch:
    """The first store row that differs from what the audit trail records of it."""

    table: str
    #: The row's id (None: the trail records a row the store does not have).
    id: str | int | None
    request_id: str
    #: The field that differs (None: the whole row is missing on one side).
    field: str | None
    store: Any
    chain: Any
    #: The event that recorded the chain's value (None: no event records the row).
    seq: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``airflow hitl audit verify`` prints)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class ChainVerification:
    """Result of walking the audit chain and comparing the store's rows with its facts."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    #: The first keyed event (None: no event is keyed).
    keyed_from: int | None = None
    #: The configured key's id (None: no key configured).
    key_id: str | None = None
    #: Requests whose rows were compared with their events' facts.
    requests_verified: int = 0
    #: Requests whose events predate facts: checked by their links only.
    requests_hash_only: int = 0
    #: The first row that differs from the trail.
    row: RowMismatch | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``airflow hitl audit verify`` prints): every field, ``row`` as its own dict."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["row"] = self.row.to_dict() if self.row is not None else None
        return data


def _link_problem(key_id: str | None, key: AuditKey | None, keyed_from: int | None) -> str | None:
    """Why an event keyed under ``key_id`` cannot be verified here (None: it can)."""
    if key_id is None:
        if keyed_from is not None:
            return (
                f"an unkeyed event after keyed ones (keyed from seq {keyed_from}): written by a component "
                "without [hitl] audit_key, or rewritten"
            )
        return None
    if key is None:
        return (
            f"the event is keyed (key_id {key_id}) and no key is configured: set [hitl] audit_key "
            "(AIRFLOW__HITL__AUDIT_KEY) to the key the trail was written with"
        )
    if key_id != key.key_id:
        return (
            f"the event is keyed under key_id {key_id}, not under the configured [hitl] audit_key (key_id {key.key_id})"
        )
    return None


def verify_chain(events: Iterable[Any], *, key: AuditKey | None = None) -> ChainVerification:
    """Recompute every link in ``seq`` order; events need the columns of ``approval_events``.

    Unkeyed links are SHA-256; keyed ones (``key_id`` set) HMAC-SHA256 under ``key``, and
    only under it. With ``key`` configured the chain must end keyed (see the module's doc).
    """
    prev = GENESIS_HASH
    checked = 0
    keyed_from: int | None = None
    last_seq: int | None = None
    key_id = key.key_id if key is not None else None
    for ev in events:
        event_key_id = getattr(ev, "key_id", None)
        problem = (
            "prev_hash does not match the event before"
            if ev.prev_hash != prev
            else _link_problem(event_key_id, key, keyed_from)
        )
        if problem is None:
            expected = event_hash(
                prev_hash=ev.prev_hash,
                request_id=ev.request_id,
                event_type=ev.event_type,
                actor=ev.actor,
                source=ev.source,
                comment=ev.comment,
                details=ev.details,
                created_at=ev.created_at,
                key=key if event_key_id is not None else None,
            )
            if not hmac.compare_digest(expected, ev.hash):
                problem = "content does not match its hash"
        if problem is not None:
            return ChainVerification(
                ok=False, checked=checked, first_bad_seq=ev.seq, problem=problem, keyed_from=keyed_from, key_id=key_id
            )
        if event_key_id is not None and keyed_from is None:
            keyed_from = ev.seq
        prev = ev.hash
        last_seq = ev.seq
        checked += 1
    if key is not None and last_seq is not None and keyed_from is None:
        return ChainVerification(
            ok=False,
            checked=checked,
            first_bad_seq=last_seq,
            problem=(
                "the chain ends with an unkeyed event although [hitl] audit_key is set: keyed events were rewritten "
                "as unkeyed ones, or none has been written since the key was set (verify again after the next one)"
            ),
            key_id=key_id,
        )
    return ChainVerification(ok=True, checked=checked, keyed_from=keyed_from, key_id=key_id)


class _Replay:
    """What one request's events say its rows are."""

    def __init__(self) -> None:
        #: Field -> (value, seq of the event that recorded it).
        self.request: dict[str, tuple[Any, int]] = {}
        self.votes: builtins.list[tuple[int, dict[str, Any]]] = []
        #: Voters of vote events without facts (their rows cannot be compared).
        self.legacy_voters: set[str] = set()
        self.events = 0
        self.with_facts = 0

    def add(self, seq: int, event_type: str, actor: str | None, details: Mapping[str, Any]) -> str | None:
        """Take one event (in ``seq`` order); a problem when it records facts this code cannot read."""
        self.events += 1
        version = details.get(FACTS_VERSION_KEY)
        if version is None:
            if event_type == "vote":
                if actor:
                    self.legacy_voters.add(actor)
            else:
                # An older transition may have changed the state: what earlier facts said is stale.
                for name in REQUEST_STATE:
                    self.request.pop(name, None)
            return None
        facts = details.get(FACTS_KEY)
        if version != FACTS_VERSION or not isinstance(facts, Mapping):
            return f"the event records facts of version {version!r}, which this airflow-hitl cannot read"
        self.with_facts += 1
        if isinstance(facts.get("vote"), Mapping):
            self.votes.append((seq, dict(facts["vote"])))
        if isinstance(facts.get("request"), Mapping):
            self.request.update((name, (value, seq)) for name, value in facts["request"].items())
        return None

    def request_mismatch(self, row: RowMapping) -> RowMismatch | None:
        """The first field of the request's row that differs from its events' facts."""
        for name in (*REQUEST_CONTENT, *REQUEST_STATE):
            if name in self.request:
                chain, seq = self.request[name]
                store = _plain(row[name])
                if not _same(store, chain):
                    return RowMismatch(
                        table=_REQUESTS,
                        id=row["id"],
                        request_id=row["id"],
                        field=name,
                        store=store,
                        chain=chain,
                        seq=seq,
                    )
        return None

    def vote_mismatch(self, request: RowMapping, rows: builtins.list[RowMapping]) -> RowMismatch | None:
        """The first vote row that differs from the votes the events record, or a vote one side lacks.

        A vote's copies of its request's DAG, task and opening time (what the analytics read)
        must be the request's, which :meth:`request_mismatch` compares with the events.
        """
        request_id = request["id"]
        recorded = {facts.get("user"): (seq, facts) for seq, facts in self.votes}
        users = {row["user"] for row in rows}
        # Recorded votes whose user no row has: a row whose user was rewritten is compared with them.
        spare = [(seq, facts) for seq, facts in self.votes if facts.get("user") not in users]
        for row in rows:
            entry = recorded.get(row["user"])
            for name in VOTE_COPIES:
                if row[name] != request[name]:
                    return RowMismatch(
                        table=_VOTES,
                        id=row["id"],
                        request_id=request_id,
                        field=name,
                        store=_plain(row[name]),
                        chain=_plain(request[name]),
                        seq=None if entry is None else entry[0],
                    )
            if entry is None:
                if row["user"] in self.legacy_voters:
                    continue
                if not spare:
                    return RowMismatch(
                        table=_VOTES,
                        id=row["id"],
                        request_id=request_id,
                        field=None,
                        store=vote_facts(Vote.from_columns(dict(row))),
                        chain=None,
                        seq=None,
                    )
                entry = spare.pop(0)
            seq, chain = entry
            store = vote_facts(Vote.from_columns(dict(row)))
            for name in VOTE_FACTS:
                if not _same(store[name], chain.get(name)):
                    return RowMismatch(
                        table=_VOTES,
                        id=row["id"],
                        request_id=request_id,
                        field=name,
                        store=store[name],
                        chain=chain.get(name),
                        seq=seq,
                    )
        if spare:
            seq, chain = spare[0]
            return RowMismatch(
                table=_VOTES, id=None, request_id=request_id, field=None, store=None, chain=chain, seq=seq
            )
        return None


def _describe(row: RowMismatch) -> str:
    if row.table == _VOTES and row.id is None:
        return f"the vote of {row.chain.get('user')!r} the audit trail records (seq {row.seq}) has no row"
    if row.seq is None:
        return f"{row.table} row {row.id}: no audit event records it"
    return (
        f"{row.table} row {row.id}: {row.field} is {row.store!r} in the store, "
        f"{row.chain!r} in the audit trail (seq {row.seq})"
    )


_REQUEST_TABLE: Table = ApprovalRequestRow.__table__  # type: ignore[assignment]
_VOTE_TABLE: Table = ApprovalVoteRow.__table__  # type: ignore[assignment]
_EVENT_TABLE: Table = ApprovalEventRow.__table__  # type: ignore[assignment]
#: Requests per page of the facts walk: bounded memory whatever the store's size.
_PAGE = 500
_CHAIN = select(_EVENT_TABLE).order_by(_EVENT_TABLE.c.seq).execution_options(yield_per=1000)
_REQUEST_PAGE = select(_REQUEST_TABLE).where(_REQUEST_TABLE.c.id > bindparam("after")).order_by(_REQUEST_TABLE.c.id)
_EVENTS_OF = (
    select(
        _EVENT_TABLE.c.seq,
        _EVENT_TABLE.c.request_id,
        _EVENT_TABLE.c.event_type,
        _EVENT_TABLE.c.actor,
        _EVENT_TABLE.c.details,
    )
    .where(_EVENT_TABLE.c.request_id.in_(bindparam("ids", expanding=True)))
    .order_by(_EVENT_TABLE.c.seq)
)
_VOTES_OF = (
    select(_VOTE_TABLE).where(_VOTE_TABLE.c.request_id.in_(bindparam("ids", expanding=True))).order_by(_VOTE_TABLE.c.id)
)


def _request_pages(session: Session) -> Iterator[builtins.list[RowMapping]]:
    """Every request row, a page at a time in id order (keyset: no page costs more than the first)."""
    after = ""
    while True:
        page = [row._mapping for row in session.execute(_REQUEST_PAGE.limit(_PAGE), {"after": after})]
        if not page:
            return
        yield page
        after = page[-1]["id"]


def verify_facts(session: Session, chain: ChainVerification) -> ChainVerification:
    """Replay every request's events and compare them with its rows; ``chain`` is the links' verdict.

    A page of requests at a time, with their events and votes: memory stays bounded however
    many requests the store holds. The first row that differs fails the result.
    """
    verified = hash_only = 0
    for page in _request_pages(session):
        ids = [row["id"] for row in page]
        replays: dict[str, _Replay] = {request_id: _Replay() for request_id in ids}
        for ev in session.execute(_EVENTS_OF, {"ids": ids}):
            problem = replays[ev.request_id].add(ev.seq, ev.event_type, ev.actor, ev.details or {})
            if problem is not None:
                return replace(
                    chain,
                    ok=False,
                    first_bad_seq=ev.seq,
                    problem=problem,
                    requests_verified=verified,
                    requests_hash_only=hash_only,
                )
        votes: dict[str, builtins.list[RowMapping]] = {}
        for vote in session.execute(_VOTES_OF, {"ids": ids}):
            votes.setdefault(vote.request_id, []).append(vote._mapping)
        for row in page:
            replay = replays[row["id"]]
            if replay.events and not replay.with_facts:
                hash_only += 1
                continue
            mismatch = (
                replay.request_mismatch(row) or replay.vote_mismatch(row, votes.get(row["id"], []))
                if replay.events
                else RowMismatch(
                    table=_REQUESTS, id=row["id"], request_id=row["id"], field=None, store=None, chain=None, seq=None
                )
            )
            if mismatch is not None:
                return replace(
                    chain,
                    ok=False,
                    first_bad_seq=mismatch.seq,
                    problem=_describe(mismatch),
                    row=mismatch,
                    requests_verified=verified,
                    requests_hash_only=hash_only,
                )
            verified += 1
    return replace(chain, requests_verified=verified, requests_hash_only=hash_only)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One audit trail entry."""

    seq: int
    request_id: str | None
    event_type: str
    actor: str | None
    source: str
    comment: str | None
    details: dict[str, Any]
    created_at: dt.datetime
    hash: str
    prev_hash: str = GENESIS_HASH
    #: The fingerprint of the key ``hash`` is an HMAC under (None: plain SHA-256).
    key_id: str | None = None


def _events_of(session: Session, request_id: str | None) -> list[AuditEvent]:
    query = select(ApprovalEventRow).order_by(ApprovalEventRow.seq)
    if request_id is not None:
        query = query.where(ApprovalEventRow.request_id == str(request_id))
    return [record_of(AuditEvent, e, details=dict(e.details or {})) for e in session.scalars(query)]


class AuditReader:
    """Reads the audit trail of a store (``manager.audit`` of :class:`~airflow_hitl.manager.ApprovalManager`)."""

    def __init__(self, *, store: ApprovalStore, audit_key: AuditKey | None = None) -> None:
        self.store = store
        #: The key keyed links are verified under (None: no key configured); read once per manager.
        self.audit_key = audit_key

    def events(self, request_id: str | None = None) -> list[AuditEvent]:
        """Audit events, oldest first; of one request when ``request_id`` is given."""
        with self.store.session() as session:
            return _events_of(session, request_id)

    def approval_with_events(self, request_id: str) -> tuple[Approval, list[AuditEvent]]:
        """A request with its votes, and its audit events, as of one moment; :class:`ApprovalNotFound` when unknown.

        One read transaction (``REPEATABLE READ`` on PostgreSQL, as :meth:`verify_audit_chain`
        reads; one deferred transaction on SQLite's WAL): every transition writes its events in
        the transaction that changes the request, so what is read here agrees with itself.
        """
        with self.store.session() as session:
            if self.store.is_postgres:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            row = session.get(ApprovalRequestRow, str(request_id), options=[joinedload(ApprovalRequestRow.votes)])
            if row is None:
                raise ApprovalNotFound(str(request_id))
            return Approval.from_row(row), _events_of(session, request_id)

    def verify_audit_chain(self) -> ChainVerification:
        """Walk the whole audit trail, check every link, then compare every request's rows with its facts.

        One snapshot of the store (``REPEATABLE READ`` on PostgreSQL, one read transaction on
        SQLite): writers may go on meanwhile, and what is compared is what committed together.
        Events are streamed and requests read a page at a time, so memory stays bounded.
        """
        with self.store.session() as session:
            if self.store.is_postgres:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            # Closed at once: a chain that breaks early leaves the rest of the stream unread, and
            # on PostgreSQL an unclosed server-side cursor lives on until garbage collection.
            with session.execute(_CHAIN) as events:
                chain = verify_chain(events, key=self.audit_key)
            if not chain.ok:
                return chain
            return verify_facts(session, chain)

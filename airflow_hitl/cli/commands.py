"""What the CLI commands do; shared by ``airflow hitl`` and the ``airflow-hitl`` script.

Every failure is one line on stderr and exit status 1 (``SystemExit`` with the message, as
Airflow's own commands do), never a traceback. Only ``db migrate`` may create a store:
every other command refuses a SQLite file that does not exist, so a wrong ``AIRFLOW_HOME``
is reported instead of silently checking a new, empty store.

Decisions are made by the api-server, as the Airflow user of the caller's token
(:mod:`airflow_hitl.cli.client`); the one decision written straight to the store is a
break-glass cancel, recorded as ``<os user>@<host>``. Standing approvals are listed, created
and revoked only through the api-server, as that user too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import DBAPIError

from airflow_hitl.audit import AuditKey
from airflow_hitl.cli.client import (
    TOKEN_ENV,
    TOKEN_HINT,
    ApiClient,
    ApiError,
    client_details,
    default_api_url,
    obtain_token,
)
from airflow_hitl.exceptions import HitlError, StoreSchemaError, StoreUnavailable
from airflow_hitl.limits import json_loads
from airflow_hitl.manager import ApprovalFilter, ApprovalManager, Decision
from airflow_hitl.models.schema import SchemaStatus, ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore, resolve_store_url, sqlite_file
from airflow_hitl.policy import Principal
from airflow_hitl.settings import airflow_home, check_options
from airflow_hitl.vocabulary import STANDING_STATES, STATES, WAITING_STATES, Action, Source


@contextmanager
def _errors_exit() -> Iterator[None]:
    # Domain errors already say what is wrong and what to do; a traceback adds nothing.
    try:
        yield
    except (HitlError, ApiError) as err:
        raise SystemExit(f"error: {err}") from None


def _store_url(args: argparse.Namespace) -> str:
    """The URL of the store the arguments name (``--store-url``, ``--conn-id``, else the default)."""
    # The CLI runs beside Airflow's metadata DB, like the api-server: without the "server"
    # context the Task SDK's lookup skips connections stored in that DB (`airflow connections
    # add hitl_default`), and the deploy step would migrate the SQLite fallback instead.
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    with _errors_exit():
        return getattr(args, "store_url", None) or resolve_store_url(getattr(args, "conn_id", None))


def _no_store_file(url: str) -> str | None:
    """Why ``url`` names no store: its SQLite file does not exist; None when there is one (or a server)."""
    path = sqlite_file(url)
    if path is None or os.path.exists(path):
        return None
    return (
        f"error: there is no approval store at {path}. Nothing was migrated there: is AIRFLOW_HOME "
        f"({airflow_home()}) the one your Airflow uses (`make demo` uses .demo/airflow)? Name the store "
        "with --conn-id or --store-url, or create it with `airflow hitl db migrate`."
    )


#: The stores the running command opened; :func:`close_stores` disposes of them when it ends.
_opened: list[ApprovalStore] = []


def _new_store(url: str) -> ApprovalStore:
    store = ApprovalStore(url=url, pool_size=1)
    _opened.append(store)
    return store


def close_stores() -> None:
    """Close every store the command opened (its pool's connections): a caller in the same
    process (a test, a script calling ``main``) keeps no connection once the command is done."""
    while _opened:
        _opened.pop().dispose()


def _open_store(args: argparse.Namespace, *, create: bool = False) -> ApprovalStore:
    """The store the arguments name; a missing SQLite file is an error unless ``create``."""
    url = _store_url(args)
    missing = None if create else _no_store_file(url)
    if missing is not None:
        raise SystemExit(missing)
    return _new_store(url)


def _manager(args: argparse.Namespace) -> ApprovalManager:
    store = _open_store(args)
    with _errors_exit():
        ensure_schema(store, migrate=False)
    return ApprovalManager(store=store)


def db_migrate(args: argparse.Namespace) -> None:
    """Bring the approval store's schema to this version; a no-op when it is there already."""
    store = _open_store(args, create=True)
    with _errors_exit():
        before = schema_status(store)
        after = migrate(store)
    if before.current == after.current:
        print(f"approval store {store!r} already at revision {after.current}")
    else:
        print(f"approval store {store!r} migrated from {before.current or 'empty'} to {after.current}")


#: How often ``db check --wait`` looks again: one cheap query, and pods start soon after the migration.
WAIT_INTERVAL = 2.0


def _schema_status(store: ApprovalStore) -> SchemaStatus:
    """The store's schema status; a store that does not answer is a :class:`StoreUnavailable`, not a traceback."""
    try:
        return schema_status(store)
    except DBAPIError as err:  # refused, unknown host or database, bad credentials: the driver's words
        reason = " ".join(str(err.orig or err).split())
        raise StoreUnavailable(f"cannot reach the approval store {store!r}: {reason}") from None


def _status_when_ready(args: argparse.Namespace, wait: int) -> tuple[ApprovalStore, SchemaStatus]:
    """The store and its schema status: at once, or once current, within ``wait`` seconds.

    Waited for: a SQLite file not there yet, a store that does not answer, a schema behind this
    version. Not waited for, as time will not change them: a store named wrongly (no such
    connection) and a store migrated by a newer airflow-hitl.
    """
    url = _store_url(args)
    deadline = time.monotonic() + wait
    store: ApprovalStore | None = None
    said = None
    while True:
        waiting = None
        if store is None:
            waiting = _no_store_file(url)
            if waiting is None:
                store = _new_store(url)
        if store is not None:
            try:
                status = _schema_status(store)
            except StoreSchemaError as err:
                raise SystemExit(f"error: {err}") from None
            except StoreUnavailable as err:
                waiting = f"error: {err}"
            else:
                if status.up_to_date or time.monotonic() >= deadline:
                    return store, status
                waiting = (
                    f"approval store {store!r}: revision {status.current or 'empty'}, code head {status.head}: "
                    "run `airflow hitl db migrate`"
                )
        if time.monotonic() >= deadline:
            raise SystemExit(waiting)
        if waiting != said:  # what it waits for, once (a pod's log need not repeat it every 2 s)
            print(f"waiting up to {wait} s for the approval store: {waiting}", file=sys.stderr, flush=True)
            said = waiting
        time.sleep(max(0.0, min(WAIT_INTERVAL, deadline - time.monotonic())))


def db_check(args: argparse.Namespace) -> None:
    """Exit 0 when the store is reachable and at this version's schema, 1 otherwise.

    With ``--wait SECONDS``, look every :data:`WAIT_INTERVAL` seconds until it is, for at most
    that long (an init container waiting for the migration job), then report as without it.
    """
    with _errors_exit():
        # Every [hitl] option read as its type first: a misspelt one is named, not defaulted.
        check_options()
    store, status = _status_when_ready(args, getattr(args, "wait", 0) or 0)
    print(f"approval store {store!r}: revision {status.current or 'empty'}, code head {status.head}")
    if AuditKey.configured() is None:
        # A warning, not a failure: an unkeyed chain still shows edits, only not a forger's.
        print(
            "warning: [hitl] audit_key is not set: the audit trail's links are plain SHA-256, which anyone who can "
            "write the approval store can recompute; set it (AIRFLOW__HITL__AUDIT_KEY) on every component",
            file=sys.stderr,
        )
    if not status.up_to_date:
        print("run `airflow hitl db migrate`", file=sys.stderr)
        sys.exit(1)


def audit_verify(args: argparse.Namespace) -> None:
    """Walk the audit trail's chain and compare the store's rows with it; exit 1 naming the first that differs.

    Prints one JSON object: ``ok``, the events ``checked``, ``first_bad_seq`` and ``problem``,
    ``keyed_from`` (the first keyed event) and ``key_id``, how many requests had their rows
    compared (``requests_verified``) or predate facts (``requests_hash_only``), and ``row``:
    the first row that differs (table, id, request id, field, store and chain values).
    """
    manager = _manager(args)
    with _errors_exit():
        result = manager.audit.verify_audit_chain()
    print(json.dumps(result.to_dict(), default=str, ensure_ascii=False))
    if not result.ok:
        sys.exit(1)


# ---------------------------------------------------------------------- approvals


def _print(data: list[dict[str, Any]], output: str, *, whole: tuple[str, ...] = (), one_line: bool = False) -> None:
    """Print as Airflow's commands do; in a table, ``whole`` columns are never split (ids)."""
    from airflow_hitl.seam.cli import print_rows

    print_rows(data, output=output, whole=whole, one_line=one_line)


def _summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The list's columns of one request, from its JSON form (the store's ``to_dict`` or the API's item)."""
    return {
        "id": data["id"],
        "dag_id": data["dag_id"],
        "run_id": data["run_id"],
        "task_id": data["task_id"],
        "title": data["title"],
        "state": data["state"],
        "requested_by": data["requested_by"],
        "requested_at": data["requested_at"],
        "expires_at": data["expires_at"],
        "approvals": f"{len(data['approvers'])}/{data['approvals_needed']}",
        "decided_by": data["decided_by"],
    }


def _approval_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SystemExit(f"error: {value!r} is not a valid approval id") from None


_API_ARGS = {"api_url": "--api-url", "token_file": "--token-file", "username": "--username"}
_STORE_ARGS = {"conn_id": "--conn-id", "store_url": "--store-url"}


def _given(args: argparse.Namespace, names: Mapping[str, str]) -> list[str]:
    """The flags of ``names`` given on the command line."""
    return [flag for name, flag in names.items() if getattr(args, name, None) is not None]


def _reads_the_api(args: argparse.Namespace) -> bool:
    """``list`` and ``show``: through the api-server when it or a token is named, else from the store."""
    api, store = _given(args, _API_ARGS), _given(args, _STORE_ARGS)
    if api and store:
        raise SystemExit(
            f"error: {' '.join(api)} name the api-server and {' '.join(store)} the store: read from one of them"
        )
    if api or store:
        return bool(api)
    return bool(os.environ.get(TOKEN_ENV, "").strip())


def _api_client(args: argparse.Namespace) -> ApiClient:
    """A client of the api-server (``--api-url`` or the configured one) with the caller's own token."""
    with _errors_exit():
        api_url = args.api_url or default_api_url()
        token = obtain_token(api_url, token_file=args.token_file, username=args.username)
        return ApiClient(api_url=api_url, token=token)


def approvals_list(args: argparse.Namespace) -> None:
    """List approval requests, newest first, filtered by ``--state`` and ``--dag-id`` (store or API)."""
    if args.state and args.state not in STATES:
        raise SystemExit(f"error: --state {args.state!r} is not one of {', '.join(STATES)}")
    if _reads_the_api(args):
        client = _api_client(args)
        params = {"state": args.state, "dag_id": args.dag_id, "limit": args.limit, "order_by": "-requested_at"}
        with _errors_exit():
            items = client.get("", {k: v for k, v in params.items() if v is not None})["approvals"]
    else:
        manager = _manager(args)
        with _errors_exit():
            approvals, _total = manager.queries.list(
                ApprovalFilter(states=[args.state] if args.state else None, dag_id=args.dag_id), limit=args.limit
            )
        items = [a.to_dict() for a in approvals]
    # One line per request, its id whole: the other columns are cut with an ellipsis to fit.
    _print([_summary(item) for item in items], args.output, whole=("id",), one_line=True)


def approvals_show(args: argparse.Namespace) -> None:
    """Show one request with its votes (``--output json``/``yaml`` for every field), from the store or the API."""
    approval_id = _approval_id(args.approval_id)
    if _reads_the_api(args):
        client = _api_client(args)
        with _errors_exit():
            item = client.get(f"/{approval_id}")
    else:
        manager = _manager(args)
        with _errors_exit():
            item = manager.queries.get(approval_id).to_dict()
    if args.output in {"json", "yaml"}:
        _print([item], args.output)
        return
    separator = "\n" if args.output == "table" else "; "
    votes = "; ".join(
        f"{v['user']} {v['vote']} via {v['source']}" + (f": {v['comment']}" if v["comment"] else "")
        for v in item["votes"]
    )
    details = {
        **_summary(item),
        "description": item["description"],
        "reason": item["reason"],
        "context": _context_summary(item["context"], separator),
        "who_decides": _deciders(item),
        "allowed_approvers": ", ".join(item["allowed_approvers"]),
        "allowed_roles": ", ".join(item["allowed_roles"]),
        "escalation": _escalation(item),
        "approved_by": ", ".join(item["approvers"]),
        "content_digest": item["content_digest"],
        "comment": item["comment"],
        "votes": votes,
    }
    _print([{"field": key, "value": value} for key, value in details.items()], args.output, whole=("field",))


#: A context summary shows this many keys, each value cut to this many characters (json has all).
_CONTEXT_KEYS, _CONTEXT_VALUE = 20, 60


def _context_summary(context: Mapping[str, Any], separator: str) -> str:
    """The request's context as ``key: value`` lines, long values cut: what approvers are shown, in short."""
    lines = []
    for key, value in list(context.items())[:_CONTEXT_KEYS]:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        text = " ".join(text.split())
        if len(text) > _CONTEXT_VALUE:
            text = text[: _CONTEXT_VALUE - 1] + "\N{HORIZONTAL ELLIPSIS}"
        lines.append(f"{key}: {text}")
    if len(context) > _CONTEXT_KEYS:
        lines.append(f"and {len(context) - _CONTEXT_KEYS} more (--output json shows them all)")
    return separator.join(lines)


def _deciders(item: Mapping[str, Any]) -> str:
    """Who may decide now (allowed approvers and roles, escalations included), as the pages say it."""
    names, roles = list(item["allowed_approvers"]), list(item["allowed_roles"])
    parts = [", ".join(names)] if names else []
    if roles:
        parts.append(("role " if len(roles) == 1 else "roles ") + ", ".join(roles))
    return "; ".join(parts) if parts else "anyone who may edit the DAG"


def _escalation(item: Mapping[str, Any]) -> str:
    """The escalation level reached, whom it added, and what the next one adds."""
    levels = list(item.get("escalation_targets") or ())
    if not levels:
        return ""
    level = int(item.get("escalation_level") or 0)

    def added(target: Mapping[str, Any]) -> str:
        names = [*target.get("approvers", ()), *(f"role {role}" for role in target.get("roles", ()))]
        return ", ".join(names) or "nobody"

    parts = [f"level {level} of {len(levels)}" + (f", added {added(levels[level - 1])}" if level else "")]
    if level < len(levels) and item["state"] in WAITING_STATES and item.get("timeout_action") == Action.ESCALATE:
        parts.append(f"next adds {added(levels[level])} when it expires")
    return "; ".join(parts)


def _refuse_named_identity(args: argparse.Namespace) -> None:
    """``--user`` and ``--role`` named anyone; a decision is now made as the token's user."""
    given = _given(args, {"user": "--user", "role": "--role"})
    if given:
        raise SystemExit(
            f"error: {' and '.join(given)} no longer exist: decisions act as the Airflow user of your token: "
            f"{TOKEN_HINT}"
        )


def _reason(args: argparse.Namespace, action: str) -> str:
    reason = (args.reason or "").strip()
    if not reason:
        raise SystemExit(f"error: --reason is required to {action}")
    return reason


def _decide(args: argparse.Namespace, action: str, body: Mapping[str, Any]) -> None:
    """Send the decision to the api-server as the token's user (source ``cli``) and print the outcome."""
    approval_id = _approval_id(args.approval_id)
    client = _api_client(args)
    with _errors_exit():
        item = client.decide(approval_id, action, {k: v for k, v in body.items() if v is not None})
    print(
        f"approval request {item['id']} ({item['dag_id']}): {item['state']}, "
        f"{len(item['approvers'])} of {item['approvals_needed']} approvals"
    )


def _inputs(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--input NAME=VALUE`` pairs as form values: VALUE read as JSON, else taken as text."""
    if not pairs:
        return None
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"error: --input {pair!r} must be NAME=VALUE")
        try:
            # Bounded like every other way in: thousands of "[" are text, not a RecursionError.
            values[name.strip()] = json_loads(raw)
        except ValueError:
            values[name.strip()] = raw
    return values


def approvals_approve(args: argparse.Namespace) -> None:
    """Approve a request through the api-server as your token's user (source ``cli``), with ``--input`` values."""
    _refuse_named_identity(args)
    _decide(
        args,
        Action.APPROVE,
        {"comment": args.comment, "inputs": _inputs(args.input), "content_digest": args.content_digest},
    )


def approvals_reject(args: argparse.Namespace) -> None:
    """Reject a request with ``--reason`` through the api-server as your token's user (source ``cli``)."""
    _refuse_named_identity(args)
    _decide(
        args,
        Action.REJECT,
        {
            "reason": _reason(args, Action.REJECT),
            "comment": args.comment,
            "inputs": _inputs(args.input),
            "content_digest": args.content_digest,
        },
    )


def approvals_cancel(args: argparse.Namespace) -> None:
    """Cancel a waiting request with ``--reason``: through the api-server, or ``--break-glass`` in the store."""
    _refuse_named_identity(args)
    reason = _reason(args, Action.CANCEL)
    if args.break_glass:
        _break_glass_cancel(args, reason)
        return
    store = _given(args, _STORE_ARGS)
    if store:
        raise SystemExit(
            f"error: {' '.join(store)} only go with --break-glass: a cancel goes through the api-server ({TOKEN_HINT})"
        )
    _decide(args, Action.CANCEL, {"reason": reason})


def _break_glass_cancel(args: argparse.Namespace, reason: str) -> None:
    """Cancel straight in the store, as ``<os user>@<host>`` (source ``break-glass``): no token, no api-server.

    For when the api-server is down and a gate must stop: whoever holds the store's
    credentials can stop a gate this way, never approve or reject one (the manager refuses
    any other action with this source).
    """
    api = _given(args, _API_ARGS)
    if api:
        raise SystemExit(f"error: --break-glass writes the store with its own credentials: drop {' '.join(api)}")
    details = client_details()
    actor = f"{details['os_user']}@{details['hostname']}"
    manager = _manager(args)
    with _errors_exit():
        decision = Decision(
            action=Action.CANCEL, user=Principal.of(actor), source=Source.BREAK_GLASS, reason=reason, client=details
        )
        approval = manager.decide(_approval_id(args.approval_id), decision)
    print(f"approval request {approval.id} ({approval.dag_id}): {approval.state} by {actor} ({Source.BREAK_GLASS})")


# ---------------------------------------------------------------------- standing approvals
# Only through the api-server, as the token's user: it decides whose they may see or revoke
# (their own; an admin's, everyone's) and whether they may approve a DAG's gates ahead.


def _standing_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The table's columns of one standing approval, from the API's record."""
    max_uses = data["max_uses"]
    return {
        "id": data["id"],
        "approver": data["approver"],
        "dag_id": data["dag_id"],
        "task_id": data["task_id"] or "every gate",
        "state": data["state"],
        "valid_from": data["valid_from"],
        "valid_until": data["valid_until"],
        "uses_left": "no limit" if max_uses is None else f"{data['uses_left']} of {max_uses}",
        "comment": data["comment"],
    }


def _print_standing(records: list[dict[str, Any]], output: str) -> None:
    """json and yaml: the API's records whole (numbers, nulls, revoked_by); table and plain: the summary."""
    if output in {"json", "yaml"}:
        _print(records, output)
        return
    _print([_standing_summary(record) for record in records], output, whole=("id",), one_line=True)


def _required(args: argparse.Namespace, name: str, flag: str, what: str) -> str:
    value = getattr(args, name, None)
    if value is None or not str(value).strip():
        raise SystemExit(f"error: {flag} is required: {what}")
    return str(value)


def _aware_time(value: str | None, flag: str) -> str | None:
    """``value`` as ISO 8601 with its time zone, or None; a time without a zone is an error naming ``flag``."""
    if value is None:
        return None
    text = value.strip()
    try:
        # Python 3.10's fromisoformat knows no "Z"; it is UTC.
        parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in {"Z", "z"} else text)
    except ValueError:
        raise SystemExit(
            f"error: {flag} {value!r} is not a date and time: give ISO 8601 with a time zone, e.g. 2026-12-01T09:00:00Z"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        example = parsed.isoformat()
        raise SystemExit(f"error: {flag} {value!r} has no time zone: add one, e.g. {example}Z or {example}+02:00")
    return parsed.isoformat()


def standing_list(args: argparse.Namespace) -> None:
    """List standing approvals through the api-server, newest first: yours (an admin's: everyone's)."""
    if args.state and args.state not in STANDING_STATES:
        raise SystemExit(f"error: --state {args.state!r} is not one of {', '.join(STANDING_STATES)}")
    client = _api_client(args)
    params = {"approver": args.approver, "dag_id": args.dag_id, "state": args.state, "limit": args.limit}
    with _errors_exit():
        records, _total = client.list_standing({k: v for k, v in params.items() if v is not None})
    _print_standing(records, args.output)


def standing_create(args: argparse.Namespace) -> None:
    """Approve ahead, as your token's user, the gates of ``--dag-id`` (``--task-id``'s) opening in the window.

    The api-server checks it as for a REST call: you must be able to decide that DAG's gates,
    the window must lie ahead and be no longer than ``[hitl] standing_approval_max_days``.
    """
    body = {
        "dag_id": _required(args, "dag_id", "--dag-id", "the DAG whose gates you approve ahead"),
        "task_id": args.task_id,
        "valid_from": _aware_time(args.valid_from, "--valid-from"),
        "valid_until": _aware_time(
            _required(args, "valid_until", "--valid-until", "when it ends, e.g. 2026-12-05T18:00:00Z"), "--valid-until"
        ),
        "max_uses": args.max_uses,
        "comment": _required(args, "comment", "--comment", "say why you approve ahead"),
    }
    client = _api_client(args)
    with _errors_exit():
        record = client.create_standing({k: v for k, v in body.items() if v is not None})
    _print_standing([record], args.output)


def standing_revoke(args: argparse.Namespace) -> None:
    """Revoke a standing approval now through the api-server (yours; any, as an admin)."""
    value = _required(args, "standing_id", "ID", "the standing approval to revoke, as `standing list` prints it")
    try:
        standing_id = str(uuid.UUID(value))
    except ValueError:
        raise SystemExit(f"error: {value!r} is not a valid standing approval id") from None
    client = _api_client(args)
    with _errors_exit():
        record = client.revoke_standing(standing_id)
    _print_standing([record], args.output)


# ---------------------------------------------------------------------- evidence
# Implemented in airflow_hitl.cli.evidence (needs no store); imported only when run.


def evidence_keygen(args: argparse.Namespace) -> None:
    """Print a new Ed25519 private key (PEM) for option evidence_signing_key; its public key and kid on stderr."""
    from airflow_hitl.cli.evidence import keygen

    keygen(args)


def evidence_verify(args: argparse.Namespace) -> None:
    """Verify a request's evidence (JWS) against a JWKS file or URL: exit 0 only when untampered, by a listed key."""
    from airflow_hitl.cli.evidence import verify

    verify(args)

"""What the CLI commands do; shared by ``airflow hitl`` and the ``airflow-hitl`` script.

Every failure is one line on stderr and exit status 1 (``SystemExit`` with the message, as
Airflow's own commands do), never a traceback. Only ``db migrate`` may create a store:
every other command refuses a SQLite file that does not exist, so a wrong ``AIRFLOW_HOME``
is reported instead of silently checking a new, empty store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_hitl.exceptions import HitlError
from airflow_hitl.manager import ApprovalFilter, ApprovalManager, Decision
from airflow_hitl.models.schema import ensure_schema, migrate, schema_status
from airflow_hitl.models.store import ApprovalStore, resolve_store_url, sqlite_file
from airflow_hitl.models.tables import STATES
from airflow_hitl.policy import Principal
from airflow_hitl.records import Approval
from airflow_hitl.settings import airflow_home

#: The source recorded in the audit trail for decisions made here.
CLI_SOURCE = "cli"


@contextmanager
def _errors_exit() -> Iterator[None]:
    # Domain errors already say what is wrong and what to do; a traceback adds nothing.
    try:
        yield
    except HitlError as err:
        raise SystemExit(f"error: {err}") from None


def _open_store(args: argparse.Namespace, *, create: bool = False) -> ApprovalStore:
    """The store the arguments name; a missing SQLite file is an error unless ``create``."""
    # The CLI runs beside Airflow's metadata DB, like the api-server: without the "server"
    # context the Task SDK's lookup skips connections stored in that DB (`airflow connections
    # add hitl_default`), and the deploy step would migrate the SQLite fallback instead.
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    with _errors_exit():
        url = getattr(args, "store_url", None) or resolve_store_url(getattr(args, "conn_id", None))
    path = sqlite_file(url)
    if path is not None and not create and not os.path.exists(path):
        raise SystemExit(
            f"error: there is no approval store at {path}. Nothing was migrated there: is AIRFLOW_HOME "
            f"({airflow_home()}) the one your Airflow uses (`make demo` uses .demo/airflow)? Name the store "
            "with --conn-id or --store-url, or create it with `airflow hitl db migrate`."
        )
    return ApprovalStore(url=url, pool_size=1)


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


def db_check(args: argparse.Namespace) -> None:
    """Exit 0 when the store is reachable and at this version's schema, 1 otherwise."""
    store = _open_store(args)
    with _errors_exit():
        status = schema_status(store)
    print(f"approval store {store!r}: revision {status.current or 'empty'}, code head {status.head}")
    if not status.up_to_date:
        print("run `airflow hitl db migrate`", file=sys.stderr)
        sys.exit(1)


def audit_verify(args: argparse.Namespace) -> None:
    """Walk the audit trail's hash chain; exit 1 and name the first bad event if it was altered."""
    result = _manager(args).verify_audit_chain()
    print(
        json.dumps(
            {
                "ok": result.ok,
                "checked": result.checked,
                "first_bad_seq": result.first_bad_seq,
                "problem": result.problem,
            }
        )
    )
    if not result.ok:
        sys.exit(1)


# ---------------------------------------------------------------------- approvals


def _print(data: list[dict[str, Any]], output: str) -> None:
    from airflow.cli.simple_table import AirflowConsole

    AirflowConsole().print_as(data=data, output=output)


def _summary(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "dag_id": approval.dag_id,
        "run_id": approval.run_id,
        "task_id": approval.task_id,
        "title": approval.title,
        "state": approval.state,
        "requested_by": approval.requested_by,
        "requested_at": approval.requested_at.isoformat(),
        "expires_at": approval.expires_at.isoformat() if approval.expires_at else None,
        "approvals": f"{len(approval.approvers)}/{approval.approvals_needed}",
        "decided_by": approval.decided_by,
    }


def _approval_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SystemExit(f"error: {value!r} is not a valid approval id") from None


def approvals_list(args: argparse.Namespace) -> None:
    """List approval requests, newest first, filtered by ``--state`` and ``--dag-id``."""
    if args.state and args.state not in STATES:
        raise SystemExit(f"error: --state {args.state!r} is not one of {', '.join(STATES)}")
    manager = _manager(args)
    with _errors_exit():
        approvals, _total = manager.list(
            ApprovalFilter(states=[args.state] if args.state else None, dag_id=args.dag_id), limit=args.limit
        )
    _print([_summary(a) for a in approvals], args.output)


def approvals_show(args: argparse.Namespace) -> None:
    """Show one request with its votes (``--output json``/``yaml`` for every field)."""
    manager = _manager(args)
    with _errors_exit():
        approval = manager.get(_approval_id(args.approval_id))
    if args.output in {"json", "yaml"}:
        _print([approval.to_dict()], args.output)
        return
    votes = "; ".join(
        f"{v.user} {v.vote} via {v.source}" + (f": {v.comment}" if v.comment else "") for v in approval.votes
    )
    details = {**_summary(approval), "description": approval.description, "comment": approval.comment, "votes": votes}
    _print([{"field": key, "value": value} for key, value in details.items()], args.output)


def os_user() -> str:
    """The operating-system user running this command (recorded in the audit trail)."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (containers with an arbitrary uid)
        return str(os.getuid())


def _cli_client() -> dict[str, Any]:
    return {"os_user": os_user(), "hostname": socket.gethostname()}


def principal_for(user: str, roles: list[str] | None) -> Principal:
    """The policy's view of ``--user``: its ``--role`` options, else the roles config knows.

    Outside the api-server no auth manager is initialised (FAB's users and roles are not
    reachable), so roles come from ``--role``, or from SimpleAuthManager's user list and
    ``[hitl] role_members``, as for email links and Slack buttons.
    """
    if roles:
        return Principal.of(user, roles)
    from airflow_hitl.notifications.recipients import UserDirectory

    return Principal.of(user, UserDirectory(use_auth_manager=False).roles_of(user))


def _decide(args: argparse.Namespace, action: str, **fields: Any) -> None:
    """Decide as ``--user`` through the one decision path (source ``cli``) and print the outcome."""
    if not args.user.strip():
        raise SystemExit("error: --user must name an Airflow user")
    manager = _manager(args)
    user = principal_for(args.user.strip(), args.role)
    with _errors_exit():
        decision = Decision(action=action, user=user, source=CLI_SOURCE, **{"client": _cli_client(), **fields})
        approval = manager.decide(_approval_id(args.approval_id), decision)
    print(
        f"approval request {approval.id} ({approval.dag_id}): {approval.state}, "
        f"{len(approval.approvers)} of {approval.approvals_needed} approvals"
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
            values[name.strip()] = json.loads(raw)
        except ValueError:
            values[name.strip()] = raw
    return values


def approvals_approve(args: argparse.Namespace) -> None:
    """Approve a request as ``--user``, under the request's policy (source ``cli``), with ``--input`` values."""
    _decide(args, "approve", comment=args.comment, inputs=_inputs(getattr(args, "input", None)))


def approvals_reject(args: argparse.Namespace) -> None:
    """Reject a request as ``--user`` with ``--reason``, under the request's policy (source ``cli``)."""
    _decide(args, "reject", reason=args.reason or "", comment=args.comment)


def approvals_cancel(args: argparse.Namespace) -> None:
    """Cancel a waiting request as ``--user`` with ``--reason`` (source ``cli``)."""
    # A cancellation records no comment of its own: the CLI's goes with the client details.
    client = {**_cli_client(), "comment": args.comment} if args.comment else _cli_client()
    _decide(args, "cancel", reason=args.reason or "", client=client)

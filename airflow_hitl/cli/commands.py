"""What the CLI commands do; shared by ``airflow hitl`` and the ``airflow-hitl`` script."""

from __future__ import annotations

import argparse
import json
import os
import sys

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import migrate, schema_status
from airflow_hitl.models.store import ApprovalStore, resolve_store_url
from airflow_hitl.settings import HitlSettings


def _store(args: argparse.Namespace) -> ApprovalStore:
    # The CLI runs beside Airflow's metadata DB, like the api-server: without the "server"
    # context the Task SDK's lookup skips connections stored in that DB (`airflow connections
    # add hitl_default`), and the deploy step would migrate the SQLite fallback instead.
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    url = getattr(args, "store_url", None) or resolve_store_url(getattr(args, "conn_id", None))
    return ApprovalStore(url=url, pool_size=HitlSettings.load().pool_size)


def db_migrate(args: argparse.Namespace) -> None:
    """Bring the approval store's schema to this version; a no-op when it is there already."""
    store = _store(args)
    before = schema_status(store)
    after = migrate(store)
    if before.current == after.current:
        print(f"approval store {store!r} already at revision {after.current}")
    else:
        print(f"approval store {store!r} migrated from {before.current or 'empty'} to {after.current}")


def db_check(args: argparse.Namespace) -> None:
    """Exit 0 when the store is reachable and at this version's schema, 1 otherwise."""
    store = _store(args)
    status = schema_status(store)
    print(f"approval store {store!r}: revision {status.current or 'empty'}, code head {status.head}")
    if not status.up_to_date:
        print("run `airflow hitl db migrate`", file=sys.stderr)
        sys.exit(1)


def audit_verify(args: argparse.Namespace) -> None:
    """Walk the audit trail's hash chain; exit 1 and name the first bad event if it was altered."""
    result = ApprovalManager(store=_store(args)).verify_audit_chain()
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

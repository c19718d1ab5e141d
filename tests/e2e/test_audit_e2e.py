"""The keyed audit chain end to end: a gate approved over REST on real Airflow (PostgreSQL store,
``[hitl] audit_key`` set on every process of the ``notifying_airflow`` stack), then
``airflow hitl audit verify`` run as an operator would: it passes, names the vote row rewritten
behind the chain's back with SQL, and passes again once the row is restored.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1/approvals"
REWRITE = text("""UPDATE approval_votes SET "user" = :to WHERE request_id = :request_id AND "user" = :was""")


def audit_verify(airflow: AirflowHarness) -> tuple[int, dict[str, Any]]:
    """``airflow hitl audit verify`` with the stack's environment (its store and its audit key)."""
    result = subprocess.run(
        [airflow.airflow_bin, "hitl", "audit", "verify"],
        env=airflow.env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


class TestAuditVerify:
    def test_verify_vouches_for_the_votes_and_names_a_rewritten_one(self, notifying_airflow: AirflowHarness) -> None:
        airflow = notifying_airflow
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")

        def pending() -> dict[str, Any] | None:
            body = airflow.api("GET", f"{API}/pending", user="alice", params={"dag_id": dag_id, "run_id": run_id})
            return body.json()["approvals"][0] if body.json()["total_entries"] else None

        item = wait_until(pending, timeout=180, interval=0.5, what="the gate's request", on_timeout=airflow.dump_logs)
        decided = airflow.api("POST", f"{API}/{item['id']}/approve", user="alice", json_body={"comment": "ship it"})
        assert (decided.json()["state"], decided.json()["decided_by"]) == ("approved", "alice")

        status, verdict = audit_verify(airflow)
        assert (status, verdict["ok"], verdict["row"]) == (0, True, None), verdict
        # Every process had the key: the chain is keyed, and this request's rows were compared.
        assert verdict["keyed_from"] is not None and verdict["key_id"] is not None
        assert verdict["requests_verified"] >= 1 and verdict["requests_hash_only"] == 0
        assert {e.key_id for e in airflow.manager.audit.events(item["id"])} == {verdict["key_id"]}

        engine = create_engine(airflow.store_url)
        try:
            with engine.begin() as conn:
                rewritten = conn.execute(REWRITE, {"to": "carol", "request_id": item["id"], "was": "alice"})
                assert rewritten.rowcount == 1
                vote_id = conn.execute(
                    text("SELECT id FROM approval_votes WHERE request_id = :request_id"), {"request_id": item["id"]}
                ).scalar_one()
            status, verdict = audit_verify(airflow)
            assert (status, verdict["ok"]) == (1, False), verdict
            assert verdict["row"] == {
                "table": "approval_votes",
                "id": vote_id,
                "request_id": item["id"],
                "field": "user",
                "store": "carol",
                "chain": "alice",
                "seq": next(e.seq for e in airflow.manager.audit.events(item["id"]) if e.event_type == "vote"),
            }
            # The API shows what the store says; verify is what tells the two apart.
            shown = airflow.api("GET", f"{API}/{item['id']}", user="viewer").json()
            assert [v["user"] for v in shown["votes"]] == ["carol"]
        finally:
            with engine.begin() as conn:
                conn.execute(REWRITE, {"to": "alice", "request_id": item["id"], "was": "carol"})
            engine.dispose()

        status, verdict = audit_verify(airflow)
        assert (status, verdict["ok"], verdict["row"]) == (0, True, None), verdict

"""Signed evidence end to end: a gate decided over REST on real Airflow (PostgreSQL store), its
evidence and the JWKS fetched over HTTP, and ``airflow hitl evidence verify`` run as an auditor
would, without the server's key: it accepts the evidence as served and refuses it changed.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from airflow_hitl.evidence import EvidenceKeys
from tests.e2e.harness import AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1"


def verify(airflow: AirflowHarness, evidence: str, jwks_url: str) -> subprocess.CompletedProcess[str]:
    """``airflow hitl evidence verify - --jwks-url URL`` with ``evidence`` on stdin, without the signing key."""
    env = {k: v for k, v in airflow.env.items() if k != "AIRFLOW__HITL__EVIDENCE_SIGNING_KEY"}
    return subprocess.run(
        [airflow.airflow_bin, "hitl", "evidence", "verify", "-", "--jwks-url", jwks_url],
        input=evidence,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def flip_payload(token: str) -> str:
    """``token`` with one character in the middle of its payload changed."""
    header, payload, signature = token.split(".")
    middle = len(payload) // 2
    char = "B" if payload[middle] == "A" else "A"
    return f"{header}.{payload[:middle]}{char}{payload[middle + 1 :]}.{signature}"


class TestEvidence:
    def test_approved_gate_evidence_verifies_offline_and_a_changed_one_does_not(
        self, notifying_airflow: AirflowHarness
    ) -> None:
        airflow = notifying_airflow
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")

        def pending() -> dict[str, Any] | None:
            body = airflow.api(
                "GET", f"{API}/approvals/pending", user="alice", params={"dag_id": dag_id, "run_id": run_id}
            )
            items = body.json()["approvals"]
            return items[0] if items else None

        item = wait_until(pending, timeout=180, interval=0.5, what="the gate's request", on_timeout=airflow.dump_logs)
        decided = airflow.api(
            "POST",
            f"{API}/approvals/{item['id']}/approve",
            user="alice",
            json_body={"comment": "evidence e2e", "content_digest": item["content_digest"]},
        ).json()
        assert (decided["state"], decided["decided_by"]) == ("approved", "alice")

        evidence = airflow.api("GET", f"{API}/approvals/{item['id']}/evidence", user="viewer").json()["jws"]
        jwks_url = f"{airflow.base_url}{API}/evidence/jwks.json"
        # The JWKS is public: an auditor fetches it without an Airflow account.
        jwks = httpx.get(jwks_url, timeout=60, trust_env=False).json()
        server_key = EvidenceKeys.of(signing_pem=airflow.env["AIRFLOW__HITL__EVIDENCE_SIGNING_KEY"])
        assert [k["kid"] for k in jwks["keys"]] == [server_key.signing_kid]

        result = verify(airflow, evidence, jwks_url)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["kid"] == server_key.signing_kid
        assert summary["request"]["id"] == item["id"]
        assert (summary["request"]["dag_id"], summary["request"]["run_id"]) == (dag_id, run_id)
        assert (summary["request"]["state"], summary["request"]["decided_by"]) == ("approved", "alice")
        assert summary["content_digest"] == item["content_digest"]
        assert summary["votes"] == 1
        assert summary["events"] == len(airflow.manager.audit.events(item["id"]))

        tampered = verify(airflow, flip_payload(evidence), jwks_url)
        assert tampered.returncode == 1
        assert tampered.stdout == ""
        assert tampered.stderr.strip().startswith(("error: bad signature", "error: malformed")), tampered.stderr
        assert len(tampered.stderr.strip().splitlines()) == 1, tampered.stderr

        # The run's evidence holds the same gate, signed by the same key.
        run = airflow.api("GET", f"{API}/evidence", user="viewer", params={"dag_id": dag_id, "run_id": run_id}).json()
        assert run["total_entries"] == 1
        assert run["evidence"][0]["approval_id"] == item["id"]
        assert verify(airflow, run["evidence"][0]["jws"], jwks_url).returncode == 0

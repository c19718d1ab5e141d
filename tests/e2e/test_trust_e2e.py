"""Trust end to end (issue 23, items 5, 6 and 8) on the shared ``notifying_airflow`` stack: a real
api-server, scheduler, triggerer and dag-processor, PostgreSQL metadata DB and approval store,
``[hitl] audit_key`` and ``evidence_signing_key`` set on every process.

- **Decided as seen**: on a waiting gate, an approve carrying the digest of other content is a
  409 that records nothing; the item's own digest approves, and the vote and the signed
  evidence (verified with PyJWT against the published JWKS) keep it.
- **One vote each**: a voter who already voted on a 2-of-3 gate gets 409, over REST and bulk.
- **Bounded form work**: 4,000 distinct objects under ``uniqueItems`` are a 422 naming the
  input, as an approval's value and as a ``POST /approvals`` default, and another approver's
  vote sent at the same time is recorded.
- **Options as Airflow treats them**: ``airflow config list`` masks the secrets, the audit key
  is read through ``AIRFLOW__HITL__AUDIT_KEY_CMD``, and ``AIRFLOW__HITL__AUTO_MIGRATE=Ture``
  stops ``airflow hitl db check`` with one line naming ``auto_migrate``.

A delegate's vote after the delegator's demotion is not here: SimpleAuthManager's roles are
fixed for the api-server's life, and restarting the shared stack's api-server would cost every
module after this one. ``tests/api/routes/test_delegations.py`` shows it on the real app.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
import rfc8785

from airflow_hitl.spec import ApprovalFilter
from tests.e2e.conftest import AUDIT_KEY
from tests.e2e.harness import GATE_WAITS, AirflowHarness, wait_until

pytestmark = pytest.mark.e2e

API = "/hitl/api/v1"
#: What approvers are shown, as the README names it: the object a request's ``content_digest`` hashes.
SHOWN = (
    "title",
    "description",
    "reason",
    "context",
    "inputs",
    "allowed_approvers",
    "allowed_roles",
    "required_approvals",
    "require_all",
)
#: Distinct small objects: pairwise comparison under ``uniqueItems`` (the attack's 4,000 took 27.6 s).
COSTLY = [{"n": n} for n in range(4000)]


def digest_of(shown: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 canonical JSON of ``shown``, computed as any client would."""
    return hashlib.sha256(rfc8785.dumps(dict(shown))).hexdigest()


def pending_item(airflow: AirflowHarness, dag_id: str, run_id: str, *, user: str) -> dict[str, Any]:
    """The run's pending request as ``user`` sees it in ``GET /approvals/pending`` (waits for it)."""

    def check() -> dict[str, Any] | None:
        body = airflow.api(
            "GET", f"{API}/approvals/pending", user=user, params={"dag_id": dag_id, "run_id": run_id}
        ).json()
        return body["approvals"][0] if body["total_entries"] else None

    return wait_until(
        check, timeout=180, interval=0.5, what=f"pending request of {dag_id}/{run_id}", on_timeout=airflow.dump_logs
    )


def airflow_cli(
    airflow: AirflowHarness, *args: str, without: tuple[str, ...] = (), **extra: str
) -> subprocess.CompletedProcess[str]:
    """``airflow <args>`` with the stack's environment, less the variables ``without``, plus ``extra``."""
    env = {k: v for k, v in airflow.env.items() if k not in without}
    env.update(extra)
    return subprocess.run(
        [airflow.airflow_bin, *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def verified_claims(airflow: AirflowHarness, token: str) -> dict[str, Any]:
    """The claims of an evidence JWS, verified with PyJWT against the stack's public JWKS."""
    # Public: an auditor fetches it without an Airflow account.
    jwks = httpx.get(f"{airflow.base_url}{API}/evidence/jwks.json", timeout=120, trust_env=False).json()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    return dict(jwt.decode(token, key.key, algorithms=["EdDSA"], options={"verify_iat": False}))


class TestDecidedAsSeen:
    def test_other_content_is_409_and_records_nothing_the_shown_digest_is_kept(
        self, notifying_airflow: AirflowHarness
    ) -> None:
        airflow = notifying_airflow
        dag_id = "e2e_gate"
        run_id = airflow.trigger(dag_id, user="admin")
        item = pending_item(airflow, dag_id, run_id, user="alice")
        airflow.wait_for_ti_state(dag_id, run_id, "gate", GATE_WAITS)
        shown = {name: item[name] for name in SHOWN}
        # Anyone holding the item recomputes its digest with any RFC 8785 library.
        assert digest_of(shown) == item["content_digest"]
        events_before = [e.seq for e in airflow.manager.audit.events(item["id"])]

        # What a page opened before the title changed would send.
        stale = digest_of({**shown, "title": "e2e gate (before it was edited)"})
        refused = airflow.api(
            "POST",
            f"{API}/approvals/{item['id']}/approve",
            user="alice",
            json_body={"comment": "as I saw it", "content_digest": stale},
            expect=(409,),
        )
        assert "changed since you opened it" in refused.json()["detail"]
        unchanged = airflow.api("GET", f"{API}/approvals/{item['id']}", user="viewer").json()
        assert (unchanged["state"], unchanged["votes"]) == ("pending", [])
        assert [e.seq for e in airflow.manager.audit.events(item["id"])] == events_before

        decided = airflow.api(
            "POST",
            f"{API}/approvals/{item['id']}/approve",
            user="alice",
            json_body={"comment": "as I saw it", "content_digest": item["content_digest"].upper()},
        ).json()
        assert (decided["state"], decided["decided_by"]) == ("approved", "alice")
        airflow.wait_for_run_state(dag_id, run_id, "success")

        single = airflow.api("GET", f"{API}/approvals/{item['id']}", user="viewer").json()
        assert [(v["user"], v["content_digest"]) for v in single["votes"]] == [("alice", item["content_digest"])]
        evidence = airflow.api("GET", f"{API}/approvals/{item['id']}/evidence", user="viewer").json()["jws"]
        claims = verified_claims(airflow, evidence)
        assert (claims["sub"], claims["request"]["state"]) == (item["id"], "approved")
        assert claims["request"]["content_digest"] == item["content_digest"]
        assert [(v["user"], v["content_digest"]) for v in claims["votes"]] == [("alice", item["content_digest"])]


class TestOneVoteEach:
    def test_a_voter_who_already_voted_gets_409_on_every_channel(self, notifying_airflow: AirflowHarness) -> None:
        airflow = notifying_airflow
        dag_id = "hitl_quorum"  # two of alice, bob and carol
        run_id = airflow.trigger(dag_id, user="admin")
        item = pending_item(airflow, dag_id, run_id, user="alice")
        assert item["required_approvals"] == 2
        url = f"{API}/approvals/{item['id']}/approve"

        first = airflow.api("POST", url, user="alice", json_body={"comment": "one"}).json()
        assert (first["state"], [v["user"] for v in first["votes"]]) == ("pending", ["alice"])
        again = airflow.api("POST", url, user="alice", json_body={"comment": "two"}, expect=(409,))
        assert "already voted" in again.json()["detail"]
        bulk = airflow.api(
            "POST", f"{API}/approvals/bulk", user="alice", json_body={"ids": [item["id"]], "action": "approve"}
        ).json()
        [result] = bulk["results"]
        assert (result["ok"], result["status_code"]) == (False, 409) and "already voted" in result["detail"]
        still = airflow.api("GET", f"{API}/approvals/{item['id']}", user="viewer").json()
        assert (still["state"], [(v["user"], v["comment"]) for v in still["votes"]]) == ("pending", [("alice", "one")])

        second = airflow.api("POST", url, user="bob", json_body={}).json()
        assert (second["state"], second["approvers"]) == ("approved", ["alice", "bob"])
        airflow.wait_for_run_state(dag_id, run_id, "success")


class TestBoundedFormWork:
    def test_a_costly_unique_items_value_is_422_and_holds_no_one_else(self, notifying_airflow: AirflowHarness) -> None:
        airflow = notifying_airflow
        dag_id = "e2e_gate"
        # A run id of this test only: the api-origin requests it opens are found by it, and no run has it.
        run_id = f"trust-e2e-{secrets.token_hex(4)}"
        schema = {"type": "array", "items": {"type": "object"}, "uniqueItems": True}
        body = {
            "dag_id": dag_id,
            "run_id": run_id,
            "title": "labels to apply",
            "allowed_approvers": ["alice", "bob"],
            "required_approvals": 2,
        }

        # As the default of a form opened over the API: refused, and nothing stored.
        costly_default = airflow.api(
            "POST",
            f"{API}/approvals",
            user="op",
            json_body={**body, "inputs": {"labels": {"schema": schema, "value": COSTLY}}},
            expect=(422,),
        )
        said = str(costly_default.json()["detail"])
        assert "inputs['labels']" in said and "uniqueItems compares every pair of its 4000 items" in said, said
        assert len(costly_default.content) < 64 * 1024
        assert airflow.manager.queries.list(ApprovalFilter(dag_id=dag_id, run_id=run_id))[0] == []

        opened = airflow.api(
            "POST",
            f"{API}/approvals",
            user="op",
            json_body={**body, "inputs": {"labels": {"schema": schema, "value": []}}},
            expect=(201,),
        ).json()
        assert opened["origin"] == "api"
        url = f"{API}/approvals/{opened['id']}/approve"

        # The costly value and another approver's vote at the same time: the check runs before the
        # row lock and within a budget, so bob's vote neither waits for it nor fails.
        with ThreadPoolExecutor(max_workers=2) as pool:
            costly = pool.submit(
                airflow.api, "POST", url, user="alice", json_body={"inputs": {"labels": COSTLY}}, expect=None
            )
            other = pool.submit(airflow.api, "POST", url, user="bob", json_body={"comment": "labels as given"})
            refused, accepted = costly.result(), other.result()
        assert refused.status_code == 422, refused.text[:2000]
        problems = refused.json()["detail"]
        assert [p["loc"] for p in problems] == [["body", "inputs", "labels"]], problems
        assert "too costly to check" in problems[0]["msg"], problems
        assert "uniqueItems compares every pair of its 4000 items" in problems[0]["msg"], problems
        assert len(refused.content) < 64 * 1024
        assert (accepted.json()["state"], [v["user"] for v in accepted.json()["votes"]]) == ("pending", ["bob"])

        # Nothing of alice's refused value was kept: her vote is still to come, and counts.
        decided = airflow.api("POST", url, user="alice", json_body={"inputs": {"labels": [{"n": 1}, {"n": 2}]}}).json()
        assert decided["state"] == "approved"
        assert {v["user"]: v["inputs"] for v in decided["votes"]} == {
            "bob": {"labels": []},
            "alice": {"labels": [{"n": 1}, {"n": 2}]},
        }
        votes = [e for e in airflow.manager.audit.events(opened["id"]) if e.event_type == "vote"]
        assert [e.actor for e in votes] == ["bob", "alice"]


class TestOptionsAsAirflowReadsThem:
    def test_secrets_are_masked_the_audit_key_reads_from_cmd_and_a_misspelt_boolean_stops_db_check(
        self, notifying_airflow: AirflowHarness
    ) -> None:
        airflow = notifying_airflow
        signing_pem = airflow.env["AIRFLOW__HITL__EVIDENCE_SIGNING_KEY"]

        listed = airflow_cli(airflow, "config", "list", "--section", "hitl", "--show-values", "--hide-sensitive")
        assert listed.returncode == 0, listed.stderr[-3000:]
        for name in ("audit_key", "evidence_signing_key"):
            assert f"{name} = < hidden >" in listed.stdout, listed.stdout
        assert f"base_url = {airflow.base_url}" in listed.stdout
        key_body = signing_pem.strip().splitlines()[1]
        for output in (listed.stdout, listed.stderr):
            assert AUDIT_KEY not in output and key_body not in output

        # The stack's store and key, the key read through its _CMD: no warning that the chain is unkeyed.
        checked = airflow_cli(
            airflow,
            "hitl",
            "db",
            "check",
            without=("AIRFLOW__HITL__AUDIT_KEY",),
            AIRFLOW__HITL__AUDIT_KEY_CMD=f"printf %s '{AUDIT_KEY}'",
        )
        assert checked.returncode == 0, checked.stderr[-3000:]
        assert "approval store" in checked.stdout
        assert "audit_key" not in checked.stderr, checked.stderr[-3000:]

        misspelt = airflow_cli(airflow, "hitl", "db", "check", AIRFLOW__HITL__AUTO_MIGRATE="Ture")
        assert misspelt.returncode == 1, (misspelt.stdout, misspelt.stderr[-3000:])
        assert "Traceback" not in misspelt.stderr
        [line] = [line for line in misspelt.stderr.splitlines() if "auto_migrate" in line]
        assert line.startswith("error: invalid [hitl] auto_migrate: 'Ture'"), line
        assert [line] == [line for line in misspelt.stderr.splitlines() if line.startswith("error:")]
        assert misspelt.stdout == ""

"""``/hitl/api/v1/.../evidence`` and the JWKS, through Airflow's api-server with real tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow_hitl.api.datamodels import EvidenceResponse, JwksResponse, RunEvidenceResponse
from airflow_hitl.evidence import key_id, private_key_pem, public_key_pem, verify_evidence
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import Principal
from tests.airflow_api import API, AirflowApi, open_request, snapshot

EVIDENCE = "/hitl/api/v1/evidence"
JWKS = f"{EVIDENCE}/jwks.json"


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> Ed25519PrivateKey:
    """A fresh key in ``[hitl] evidence_signing_key`` (read by the api-server on every call)."""
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", private_key_pem(key))
    monkeypatch.delenv("AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", raising=False)
    return key


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither evidence option set."""
    monkeypatch.delenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", raising=False)


def _get(api: AirflowApi, path: str, user: str | None, **params: Any) -> Any:
    return api.client.get(path, headers=api.headers(user), params=params)


def _jwks(api: AirflowApi) -> dict[str, Any]:
    response = api.client.get(JWKS)
    assert response.status_code == 200, response.text
    return JwksResponse.model_validate(response.json()).model_dump()


@pytest.mark.usefixtures("signing_key")
class TestApprovalEvidence:
    @pytest.mark.parametrize("user", ["admin", "op", "viewer"])
    def test_a_reader_gets_evidence_that_verifies_with_the_jwks(
        self, api: AirflowApi, api_manager: ApprovalManager, user: str
    ) -> None:
        gate = open_request(api_manager, allowed_approvers=["alice", "bob"], required_approvals=2)
        approved = api.client.post(f"{API}/{gate.id}/approve", headers=api.headers("alice"), json={"comment": "ok"})
        assert approved.status_code == 200, approved.text

        response = _get(api, f"{API}/{gate.id}/evidence", user)

        assert response.status_code == 200, response.text
        token = EvidenceResponse.model_validate(response.json()).jws
        claims = verify_evidence(token, _jwks(api))
        item = api.client.get(f"{API}/{gate.id}", headers=api.headers(user)).json()
        assert claims["sub"] == gate.id
        # What the API shows is what the evidence says.
        for name in ("id", "dag_id", "run_id", "task_id", "title", "state", "decision", "content_digest"):
            assert claims["request"][name] == item[name], name
        assert [(v["user"], v["vote"], v["comment"]) for v in claims["votes"]] == [("alice", "approve", "ok")]
        assert [e["seq"] for e in claims["events"]] == [e.seq for e in api_manager.audit.events(gate.id)]

    def test_a_user_who_may_not_read_the_dag_is_refused(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gate = open_request(api_manager)
        response = _get(api, f"{API}/{gate.id}/evidence", "nobody")
        assert response.status_code == 403
        assert "read access to DAG 'billing'" in response.json()["detail"]
        assert "jws" not in response.text

    @pytest.mark.parametrize(
        ("approval_id", "status"),
        [
            pytest.param("00000000-0000-4000-8000-000000000000", 404, id="unknown"),
            pytest.param("not-an-id", 422, id="not-a-uuid"),
        ],
    )
    def test_an_unknown_or_bad_id(
        self, api: AirflowApi, api_manager: ApprovalManager, approval_id: str, status: int
    ) -> None:
        response = _get(api, f"{API}/{approval_id}/evidence", "admin")
        assert response.status_code == status
        assert response.json()["detail"]

    @pytest.mark.parametrize("token", ["missing", "garbage"])
    def test_no_valid_token_is_401(self, api: AirflowApi, api_manager: ApprovalManager, token: str) -> None:
        gate = open_request(api_manager)
        headers = {} if token == "missing" else {"Authorization": "Bearer not-a-jwt"}
        assert api.client.get(f"{API}/{gate.id}/evidence", headers=headers).status_code == 401
        assert api.client.get(EVIDENCE, headers=headers, params={"dag_id": "billing", "run_id": "r"}).status_code == 401

    def test_reading_evidence_changes_nothing(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gate = open_request(api_manager)
        before = snapshot(api_manager)
        assert _get(api, f"{API}/{gate.id}/evidence", "viewer").status_code == 200
        assert snapshot(api_manager) == before


class TestWithoutAKey:
    @pytest.mark.usefixtures("no_key")
    def test_every_evidence_route_answers_503_naming_the_option(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        gate = open_request(api_manager)
        for response in (
            _get(api, f"{API}/{gate.id}/evidence", "admin"),
            _get(api, EVIDENCE, "admin", dag_id="billing", run_id="manual__1"),
            api.client.get(JWKS),
        ):
            assert response.status_code == 503, response.text
            assert "[hitl] evidence_signing_key is not set" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("variable", "value", "option"),
        [
            pytest.param("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", "not a key", "evidence_signing_key", id="signing"),
            pytest.param(
                "AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", "not a key", "evidence_previous_public_keys", id="old"
            ),
        ],
    )
    def test_a_bad_key_is_503_naming_its_option_never_500(
        self,
        api: AirflowApi,
        api_manager: ApprovalManager,
        signing_key: Ed25519PrivateKey,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
        value: str,
        option: str,
    ) -> None:
        monkeypatch.setenv(variable, value)
        gate = open_request(api_manager)
        for response in (_get(api, f"{API}/{gate.id}/evidence", "viewer"), api.client.get(JWKS)):
            assert response.status_code == 503, response.text
            assert f"[hitl] {option}" in response.json()["detail"]


class TestKeyFromACommand:
    @pytest.mark.usefixtures("no_key")
    def test_the_api_server_signs_with_the_key_its_cmd_option_prints(
        self, api: AirflowApi, api_manager: ApprovalManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # What `make demo` does: the key stays in a file, and Airflow runs the _CMD for a sensitive option.
        key = Ed25519PrivateKey.generate()
        key_file = tmp_path / "evidence-key.pem"
        key_file.write_text(private_key_pem(key))
        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY_CMD", f"cat {key_file}")
        gate = open_request(api_manager)

        token = _get(api, f"{API}/{gate.id}/evidence", "viewer").json()["jws"]

        assert jwt.get_unverified_header(token)["kid"] == key_id(key.public_key())
        assert verify_evidence(token, _jwks(api))["sub"] == gate.id


class TestJwks:
    def test_public_without_a_token_current_key_first_then_previous(
        self, api: AirflowApi, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old = Ed25519PrivateKey.generate().public_key()
        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", public_key_pem(old))
        for headers in ({}, api.headers("nobody")):
            response = api.client.get(JWKS, headers=headers)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            keys = response.json()["keys"]
            assert [k["kid"] for k in keys] == [key_id(signing_key.public_key()), key_id(old)]
            assert all((k["kty"], k["crv"], k["alg"], k["use"]) == ("OKP", "Ed25519", "EdDSA", "sig") for k in keys)
            assert not any("d" in k for k in keys)  # never the private part

    def test_evidence_signed_before_a_rotation_still_verifies(
        self,
        api: AirflowApi,
        api_manager: ApprovalManager,
        signing_key: Ed25519PrivateKey,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        gate = open_request(api_manager)
        before = _get(api, f"{API}/{gate.id}/evidence", "viewer").json()["jws"]

        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", private_key_pem(Ed25519PrivateKey.generate()))
        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", public_key_pem(signing_key.public_key()))
        after = _get(api, f"{API}/{gate.id}/evidence", "viewer").json()["jws"]

        jwks = _jwks(api)
        assert verify_evidence(before, jwks)["sub"] == verify_evidence(after, jwks)["sub"] == gate.id


@pytest.mark.usefixtures("signing_key")
class TestRunEvidence:
    def test_every_gate_of_the_run_in_the_order_they_opened(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        first = open_request(api_manager, run_id="manual__7", task_id="check")
        second = open_request(api_manager, run_id="manual__7", task_id="release")
        api_manager.approve(second.id, user=Principal.of("alice"))
        open_request(api_manager, run_id="manual__8")
        open_request(api_manager, dag_id="payroll", run_id="manual__7")

        response = _get(api, EVIDENCE, "viewer", dag_id="billing", run_id="manual__7")

        assert response.status_code == 200, response.text
        body = RunEvidenceResponse.model_validate(response.json())
        assert body.total_entries == 2
        assert [item.approval_id for item in body.evidence] == [first.id, second.id]
        jwks = _jwks(api)
        claims = [verify_evidence(item.jws, jwks) for item in body.evidence]
        assert [(c["request"]["task_id"], c["request"]["state"]) for c in claims] == [
            ("check", "pending"),
            ("release", "approved"),
        ]

    def test_pages(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gates = [open_request(api_manager, run_id="manual__9", task_id=f"gate_{n}") for n in range(3)]
        page = _get(api, EVIDENCE, "admin", dag_id="billing", run_id="manual__9", limit=2, offset=1).json()
        assert page["total_entries"] == 3
        assert [item["approval_id"] for item in page["evidence"]] == [g.id for g in gates[1:]]

    def test_a_dag_the_caller_may_not_read_shows_nothing(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        open_request(api_manager, run_id="manual__7")
        response = _get(api, EVIDENCE, "nobody", dag_id="billing", run_id="manual__7")
        assert response.status_code == 200
        assert response.json() == {"evidence": [], "total_entries": 0}

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            pytest.param({"run_id": "manual__7"}, "dag_id", id="no-dag-id"),
            pytest.param({"dag_id": "billing"}, "run_id", id="no-run-id"),
            pytest.param({"dag_id": "", "run_id": "r"}, "dag_id", id="empty-dag-id"),
            pytest.param({"dag_id": "bill\x00ing", "run_id": "r"}, "dag_id", id="nul"),
            pytest.param({"dag_id": "billing", "run_id": "r", "limit": 501}, "limit", id="limit"),
        ],
    )
    def test_bad_query_is_422_naming_the_field(
        self, api: AirflowApi, api_manager: ApprovalManager, params: dict[str, Any], field: str
    ) -> None:
        response = _get(api, EVIDENCE, "admin", **params)
        assert response.status_code == 422, response.text
        assert [e["loc"][-1] for e in response.json()["detail"]] == [field]


class TestOpenApi:
    def test_the_routes_are_documented_and_only_the_jwks_is_public(self, api: AirflowApi) -> None:
        document = api.client.get("/hitl/openapi.json").json()
        paths = document["paths"]
        assert set(paths["/api/v1/approvals/{approval_id}/evidence"]) == {"get"}
        assert set(paths["/api/v1/evidence"]) == {"get"}
        assert "security" in paths["/api/v1/evidence"]["get"]
        assert "security" not in paths["/api/v1/evidence/jwks.json"]["get"]
        for path in ("/api/v1/approvals/{approval_id}/evidence", "/api/v1/evidence", "/api/v1/evidence/jwks.json"):
            assert "evidence_signing_key" in paths[path]["get"]["responses"]["503"]["description"]

"""evidence: the claims of a request's evidence, its EdDSA signature, the JWKS, and verifying offline."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airflow_hitl import audit
from airflow_hitl.audit import AuditEvent, canonical_time, vote_facts
from airflow_hitl.evidence import (
    PREVIOUS_KEYS_OPTION,
    SIGNING_KEY_OPTION,
    EvidenceKeys,
    EvidenceRejected,
    EvidenceUnavailable,
    evidence_claims,
    key_id,
    private_key_pem,
    public_jwk,
    public_key_pem,
    sign_evidence,
    verify_evidence,
)
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from airflow_hitl.queries import ApprovalQueries
from airflow_hitl.records import Approval
from tests.helpers import spec

ISSUED = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def new_keys(*previous: Ed25519PublicKey) -> EvidenceKeys:
    """Keys with a fresh signing key and ``previous`` public keys, read from PEM as the options are."""
    return EvidenceKeys.of(
        signing_pem=private_key_pem(Ed25519PrivateKey.generate()),
        previous_pem="".join(public_key_pem(key) for key in previous),
    )


def public_of(keys: EvidenceKeys) -> Ed25519PublicKey:
    assert keys.signing is not None
    return keys.signing.public_key()


def decided(manager: ApprovalManager) -> Approval:
    """A 2-of-[alice, bob, carol] gate approved by alice (with a comment) and bob (through his role)."""
    gate = manager.create(
        spec(
            allowed_approvers=("alice", "bob", "carol"),
            allowed_roles=("release-managers",),
            required_approvals=2,
            context={"rows": 10},
        )
    )
    manager.approve(gate.id, user=Principal.of("alice"), comment="looks right")
    return manager.approve(gate.id, user=Principal.of("bob", ["release-managers"]))


def segments(token: str) -> list[str]:
    return token.split(".")


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """``token`` with its payload replaced by ``claims``, header and signature kept."""
    header, _, signature = segments(token)
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def payload_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


class TestKeys:
    def test_the_kid_is_the_rfc_7638_thumbprint(self) -> None:
        # RFC 8037, appendix A.2 and A.3: the Ed25519 example key and its JWK thumbprint.
        x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        raw = base64.urlsafe_b64decode(x + "=")
        key = Ed25519PublicKey.from_public_bytes(raw)
        assert public_jwk(key) == {"kty": "OKP", "crv": "Ed25519", "x": x}
        assert key_id(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

    def test_no_option_is_no_key(self) -> None:
        keys = EvidenceKeys.of()
        assert (keys.signing, keys.previous) == (None, ())
        with pytest.raises(EvidenceUnavailable, match=f"{SIGNING_KEY_OPTION} is not set") as info:
            keys.sign({"sub": "x"})
        assert info.value.status_code == 503
        with pytest.raises(EvidenceUnavailable, match=SIGNING_KEY_OPTION):
            keys.jwks()

    def test_keys_are_read_from_the_options(self, monkeypatch: pytest.MonkeyPatch) -> None:
        old = Ed25519PrivateKey.generate().public_key()
        current = Ed25519PrivateKey.generate()
        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", private_key_pem(current))
        monkeypatch.setenv("AIRFLOW__HITL__EVIDENCE_PREVIOUS_PUBLIC_KEYS", public_key_pem(old))
        keys = EvidenceKeys.load()
        assert keys.signing_kid == key_id(current.public_key())
        assert [key_id(k) for k in keys.previous] == [key_id(old)]

    def test_a_pem_with_escaped_line_breaks_is_read(self) -> None:
        key = Ed25519PrivateKey.generate()
        escaped = private_key_pem(key).replace("\n", "\\n")
        assert EvidenceKeys.of(signing_pem=escaped).signing_kid == key_id(key.public_key())

    @pytest.mark.parametrize(
        ("pem", "message"),
        [
            pytest.param("not a key", "not an unencrypted private key in PEM", id="not-pem"),
            pytest.param(
                public_key_pem(Ed25519PrivateKey.generate().public_key()),
                "not an unencrypted private key in PEM",
                id="a-public-key",
            ),
            pytest.param(
                generate_private_key(SECP256R1())
                .private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                .decode(),
                "not an Ed25519 private key",
                id="an-ec-key",
            ),
            pytest.param(
                Ed25519PrivateKey.generate()
                .private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
                .decode(),
                "not an unencrypted private key in PEM",
                id="encrypted",
            ),
        ],
    )
    def test_a_bad_signing_key_names_the_option(self, pem: str, message: str) -> None:
        with pytest.raises(EvidenceUnavailable) as info:
            EvidenceKeys.of(signing_pem=pem)
        assert f"[hitl] {SIGNING_KEY_OPTION}" in str(info.value)
        assert message in str(info.value)
        assert info.value.status_code == 503

    @pytest.mark.parametrize(
        ("pem", "message"),
        [
            pytest.param("just text", "holds no PEM block", id="no-pem"),
            pytest.param(
                public_key_pem(Ed25519PrivateKey.generate().public_key())
                + "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "PEM block 2 is not a public key",
                id="second-broken",
            ),
            pytest.param(
                generate_private_key(SECP256R1())
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode(),
                "PEM block 1 is not an Ed25519 public key",
                id="an-ec-key",
            ),
        ],
    )
    def test_a_bad_previous_key_names_the_option(self, pem: str, message: str) -> None:
        with pytest.raises(EvidenceUnavailable) as info:
            EvidenceKeys.of(previous_pem=pem)
        assert f"[hitl] {PREVIOUS_KEYS_OPTION}" in str(info.value)
        assert message in str(info.value)


class TestJwks:
    def test_the_current_key_first_then_the_previous_ones_each_once(self) -> None:
        older, old = (Ed25519PrivateKey.generate().public_key() for _ in range(2))
        keys = new_keys(old, older, old)
        listed = keys.jwks()["keys"]
        assert [k["kid"] for k in listed] == [key_id(public_of(keys)), key_id(old), key_id(older)]
        for key in listed:
            assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
            assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        # PyJWT reads it back as the same public keys.
        parsed = jwt.PyJWKSet.from_dict(keys.jwks())
        assert key_id(parsed[key_id(old)].key) == key_id(old)

    def test_previous_keys_alone_are_still_published(self) -> None:
        old = Ed25519PrivateKey.generate().public_key()
        keys = EvidenceKeys.of(previous_pem=public_key_pem(old))
        assert [k["kid"] for k in keys.jwks()["keys"]] == [key_id(old)]


class TestClaims:
    def test_the_request_its_policy_votes_events_and_iat(self, manager: ApprovalManager) -> None:
        approval = decided(manager)
        events = manager.audit.events(approval.id)
        claims = evidence_claims(approval, events, issued_at=ISSUED)

        assert claims["sub"] == approval.id
        assert claims["iat"] == int(ISSUED.timestamp())
        assert claims["request"] == {
            "id": approval.id,
            "dag_id": "release",
            "run_id": approval.run_id,
            "task_id": "gate",
            "map_index": -1,
            "try_number": 1,
            "origin": "task",
            "title": "Release model",
            "state": "approved",
            "decision": "approved",
            "requested_by": "ricky",
            "requested_at": canonical_time(approval.requested_at),
            "decided_by": "bob",
            "decided_at": canonical_time(approval.decided_at),  # type: ignore[arg-type]
            "content_digest": approval.content_digest,
            "policy": {
                "allowed_approvers": ["alice", "bob", "carol"],
                "allowed_roles": ["release-managers"],
                "required_approvals": 2,
                "require_all": False,
                "allow_self_approval": False,
                "escalation_level": 0,
                "escalation_targets": [],
            },
        }
        assert claims["votes"] == [vote_facts(v) for v in approval.votes]
        assert [v["user"] for v in claims["votes"]] == ["alice", "bob"]
        assert [e["seq"] for e in claims["events"]] == [e.seq for e in events]
        assert [e["type"] for e in claims["events"]] == [e.event_type for e in events]
        assert [e["type"] for e in claims["events"]].count("vote") == 2
        for claim, event in zip(claims["events"], events, strict=True):
            assert (claim["actor"], claim["source"], claim["hash"], claim["prev_hash"]) == (
                event.actor,
                event.source,
                event.hash,
                event.prev_hash,
            )
            assert claim["at"] == canonical_time(event.created_at)
        # JSON all the way: what is signed is what an auditor reads back.
        assert json.loads(json.dumps(claims)) == claims

    def test_only_the_requests_own_events(self, manager: ApprovalManager) -> None:
        other = manager.create(spec())
        manager.approve(other.id, user=Principal.of("alice"))
        approval = decided(manager)
        claims = evidence_claims(approval, manager.audit.events(approval.id), issued_at=ISSUED)
        theirs = {e.seq for e in manager.audit.events(other.id)}
        assert theirs
        assert not theirs & {e["seq"] for e in claims["events"]}
        assert [e["seq"] for e in claims["events"]] == [e.seq for e in manager.audit.events(approval.id)]


class RacingQueries(ApprovalQueries):
    """A real manager's reads, the first read of a request followed at once by another approver's vote."""

    raced = False

    def __init__(self, *, manager: ApprovalManager) -> None:
        super().__init__(store=manager.store)
        self.manager = manager

    def get(self, request_id: str) -> Approval:
        read = super().get(request_id)
        if not self.raced:
            self.raced = True
            self.manager.approve(request_id, user=Principal.of("carol"), comment="raced in")
        return read


def racing_manager(store: ApprovalStore) -> tuple[ApprovalManager, RacingQueries]:
    """A real manager over ``store`` whose reads race (see :class:`RacingQueries`)."""
    manager = ApprovalManager(store=store)
    manager.queries = queries = RacingQueries(manager=manager)
    return manager, queries


class TestSnapshot:
    def test_a_vote_landing_while_the_evidence_is_read_is_in_both_votes_and_events(self, store: ApprovalStore) -> None:
        racing, reads = racing_manager(store)
        gate = racing.create(spec(allowed_approvers=("alice", "carol"), required_approvals=2))
        racing.approve(gate.id, user=Principal.of("alice"))
        keys = new_keys()

        claims = verify_evidence(sign_evidence(racing, racing.queries.get(gate.id), keys=keys), keys.jwks())

        assert reads.raced
        assert [v["user"] for v in claims["votes"]] == ["alice", "carol"]
        assert [e["actor"] for e in claims["events"] if e["type"] == "vote"] == ["alice", "carol"]
        assert claims["request"]["state"] == "approved"

    def test_a_vote_committed_between_reading_the_request_and_its_events_is_in_neither(
        self, store: ApprovalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = ApprovalManager(store=store)
        gate = manager.create(spec(allowed_approvers=("alice", "carol"), required_approvals=2))
        manager.approve(gate.id, user=Principal.of("alice"))
        read_events = audit._events_of

        def vote_then_read(session: Any, request_id: str | None) -> list[AuditEvent]:
            # Another approver's vote commits (its own connection) after the request was read.
            ApprovalManager(store=store).approve(gate.id, user=Principal.of("carol"), comment="raced in")
            return read_events(session, request_id)

        monkeypatch.setattr(audit, "_events_of", vote_then_read)
        approval, events = manager.audit.approval_with_events(gate.id)

        assert [v.user for v in approval.votes] == ["alice"] and approval.state == "pending"
        assert [e.actor for e in events if e.event_type == "vote"] == ["alice"]
        assert [v.user for v in manager.queries.get(gate.id).votes] == ["alice", "carol"]


class TestSignAndVerify:
    def test_signed_evidence_verifies_with_the_jwks(self, manager: ApprovalManager) -> None:
        keys = new_keys()
        approval = decided(manager)
        token = sign_evidence(manager, approval, keys=keys, issued_at=ISSUED)

        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["kid"]) == ("EdDSA", key_id(public_of(keys)))
        claims = verify_evidence(token, keys.jwks())
        assert claims == evidence_claims(approval, manager.audit.events(approval.id), issued_at=ISSUED)

    @pytest.mark.parametrize(
        "tamper",
        [
            pytest.param(lambda c: c["request"].update(decided_by="carol"), id="decided_by"),
            pytest.param(lambda c: c["request"].update(state="rejected"), id="state"),
            pytest.param(lambda c: c["request"]["policy"].update(required_approvals=1), id="policy"),
            pytest.param(lambda c: c["request"].update(content_digest="0" * 64), id="content_digest"),
            pytest.param(lambda c: c["votes"][0].update(user="mallory"), id="vote-user"),
            pytest.param(lambda c: c["votes"].pop(), id="vote-dropped"),
            pytest.param(lambda c: c["events"][1].update(hash="f" * 64), id="event-hash"),
            pytest.param(lambda c: c.update(iat=c["iat"] + 1), id="iat"),
        ],
    )
    def test_a_changed_claim_is_a_bad_signature(self, manager: ApprovalManager, tamper: Any) -> None:
        keys = new_keys()
        token = sign_evidence(manager, decided(manager), keys=keys)
        claims = payload_of(token)
        tamper(claims)
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(with_payload(token, claims), keys.jwks())
        assert info.value.reason == "bad signature"

    def test_any_character_of_the_token_changed_fails(self, sqlite_manager: ApprovalManager) -> None:
        keys = new_keys()
        token = sign_evidence(sqlite_manager, decided(sqlite_manager), keys=keys)
        jwks = keys.jwks()
        reasons = set()
        for index, char in enumerate(token):
            if char == ".":
                continue
            flipped = "B" if char == "A" else "A"
            with pytest.raises(EvidenceRejected) as info:
                verify_evidence(token[:index] + flipped + token[index + 1 :], jwks)
            reasons.add(info.value.reason)
        # A changed header may name another kid or no JSON at all; nothing verifies.
        assert "bad signature" in reasons
        assert reasons <= {"bad signature", "malformed", "unknown kid"}

    def test_evidence_of_another_key_is_an_unknown_kid(self, sqlite_manager: ApprovalManager) -> None:
        ours, theirs = new_keys(), new_keys()
        token = sign_evidence(sqlite_manager, decided(sqlite_manager), keys=theirs)
        with pytest.raises(EvidenceRejected, match="unknown kid") as info:
            verify_evidence(token, ours.jwks())
        assert info.value.reason == "unknown kid"

    def test_another_key_claiming_our_kid_is_a_bad_signature(self, sqlite_manager: ApprovalManager) -> None:
        ours, theirs = new_keys(), new_keys()
        approval = decided(sqlite_manager)
        claims = evidence_claims(approval, sqlite_manager.audit.events(approval.id), issued_at=ISSUED)
        assert theirs.signing is not None
        forged = jwt.encode(claims, theirs.signing, algorithm="EdDSA", headers={"kid": ours.signing_kid})
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(forged, ours.jwks())
        assert info.value.reason == "bad signature"

    def test_a_jwks_listing_a_key_under_another_kid_is_refused(self, sqlite_manager: ApprovalManager) -> None:
        ours, theirs = new_keys(), new_keys()
        token = sign_evidence(sqlite_manager, decided(sqlite_manager), keys=theirs)
        # Their key, listed under our kid: a JWKS that relabels keys vouches for nothing.
        mislabelled = {"keys": [{**theirs.jwks()["keys"][0], "kid": ours.signing_kid}]}
        assert theirs.signing is not None
        relabelled = jwt.encode(payload_of(token), theirs.signing, algorithm="EdDSA", headers={"kid": ours.signing_kid})
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(relabelled, mislabelled)
        assert info.value.reason == "unknown kid"

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param("", id="empty"),
            pytest.param("not-a-jws", id="garbage"),
            pytest.param("a.b.c", id="three-garbage-segments"),
            pytest.param(jwt.encode({"sub": "x", "iat": 1}, "k" * 32, algorithm="HS256"), id="hs256"),
            pytest.param(jwt.encode({"sub": "x", "iat": 1}, "", algorithm="none"), id="alg-none"),
        ],
    )
    def test_what_is_no_eddsa_jws_is_malformed(self, token: str) -> None:
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(token, new_keys().jwks())
        assert info.value.reason == "malformed"

    def test_a_jws_without_our_claims_is_malformed(self) -> None:
        keys = new_keys()
        for claims in ({"sub": "x"}, {"iat": 1, "sub": "x"}, {"iat": 1, "sub": "x", "request": {"id": "y"}}):
            with pytest.raises(EvidenceRejected) as info:
                verify_evidence(keys.sign(claims), keys.jwks())
            assert info.value.reason == "malformed", claims

    @pytest.mark.parametrize(
        "jwks",
        [
            pytest.param({}, id="no-keys"),
            pytest.param({"keys": []}, id="empty"),
            pytest.param({"keys": "x"}, id="not-a-list"),
            pytest.param({"keys": [{"kty": "nope"}]}, id="unusable"),
        ],
    )
    def test_something_that_is_no_jwks_is_refused(self, jwks: dict[str, Any]) -> None:
        keys = new_keys()
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(keys.sign({"iat": 1, "sub": "x", "request": {"id": "x"}}), jwks)
        assert info.value.reason == "unusable jwks"


class TestRotation:
    def test_old_evidence_verifies_while_its_key_is_listed(self, sqlite_manager: ApprovalManager) -> None:
        before = new_keys()
        approval = decided(sqlite_manager)
        old_token = sign_evidence(sqlite_manager, approval, keys=before)

        after = new_keys(public_of(before))
        new_token = sign_evidence(sqlite_manager, approval, keys=after)
        assert jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(old_token)["kid"]
        for token in (old_token, new_token):
            assert verify_evidence(token, after.jwks())["sub"] == approval.id

        dropped = new_keys()
        with pytest.raises(EvidenceRejected) as info:
            verify_evidence(old_token, dropped.jwks())
        assert info.value.reason == "unknown kid"

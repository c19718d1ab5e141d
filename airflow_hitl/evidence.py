"""Signed evidence of an approval request, verifiable offline with a public key.

The evidence of a request is a compact JWS (``alg`` EdDSA, Ed25519) whose claims hold the
request (ids, title, state, decision, who asked and who decided, ``content_digest``, the
policy), every vote as the audit chain covers it (:func:`airflow_hitl.audit.vote_facts`) and
the request's audit events with their chain hashes. It is signed with ``[hitl]
evidence_signing_key``; the JWKS lists that key's public half and ``[hitl]
evidence_previous_public_keys``, so an auditor holding the JWKS checks evidence without
trusting the store or the server that handed it out. Every JOSE step is PyJWT's; the keys
are ``cryptography``'s. A key's ``kid`` is its RFC 7638 JWK thumbprint, so the same key has
the same ``kid`` wherever it is listed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_encode

from airflow_hitl.audit import AuditEvent, canonical_time, vote_facts
from airflow_hitl.exceptions import HitlError
from airflow_hitl.settings import conf_get

if TYPE_CHECKING:
    from airflow_hitl.manager import ApprovalManager
    from airflow_hitl.records import Approval

ALGORITHM = "EdDSA"
SIGNING_KEY_OPTION = "evidence_signing_key"
PREVIOUS_KEYS_OPTION = "evidence_previous_public_keys"

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)


class EvidenceUnavailable(HitlError):
    """Evidence cannot be signed now: no usable key (the message names the option). The evidence
    endpoints answer 503."""

    status_code = 503


class EvidenceRejected(HitlError):
    """A JWS that does not verify; ``reason`` is one of :data:`REJECTIONS`."""

    status_code = 422

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


#: Why evidence is refused: altered or foreign (``bad signature``), signed by a key the JWKS does
#: not list (``unknown kid``), not a compact EdDSA JWS of our claims at all (``malformed``), or
#: checked against something that is no JWKS of Ed25519 keys (``unusable jwks``).
REJECTIONS = ("bad signature", "unknown kid", "malformed", "unusable jwks")


def _pem_text(value: str) -> str:
    # An environment variable or a secrets backend often holds a PEM with its line breaks
    # written as "\n"; a PEM never contains a backslash, so reading them back is safe.
    return value.replace("\\n", "\n").strip()


@lru_cache(maxsize=8)
def _private_key(pem: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError) as err:
        raise EvidenceUnavailable(
            f"[hitl] {SIGNING_KEY_OPTION} is not an unencrypted private key in PEM ({err}); "
            "`airflow hitl evidence keygen` prints one"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceUnavailable(
            f"[hitl] {SIGNING_KEY_OPTION} is a {type(key).__name__.removeprefix('_')}, not an Ed25519 private key; "
            "`airflow hitl evidence keygen` prints one"
        )
    return key


@lru_cache(maxsize=8)
def _public_keys(text: str) -> tuple[Ed25519PublicKey, ...]:
    keys: list[Ed25519PublicKey] = []
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise EvidenceUnavailable(f"[hitl] {PREVIOUS_KEYS_OPTION} holds no PEM block (-----BEGIN PUBLIC KEY-----)")
    for number, block in enumerate(blocks, start=1):
        try:
            key = serialization.load_pem_public_key(block.group(0).encode("utf-8"))
        except (ValueError, TypeError) as err:
            raise EvidenceUnavailable(
                f"[hitl] {PREVIOUS_KEYS_OPTION}: PEM block {number} is not a public key ({err})"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise EvidenceUnavailable(f"[hitl] {PREVIOUS_KEYS_OPTION}: PEM block {number} is not an Ed25519 public key")
        keys.append(key)
    return tuple(keys)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """``key`` as a JWK (``kty`` OKP, ``crv`` Ed25519, ``x``), without ``kid``: PyJWT's form."""
    jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    assert isinstance(jwk, dict)
    return {name: str(value) for name, value in jwk.items()}


def key_id(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of ``key`` (SHA-256, base64url): the ``kid`` of its evidence."""
    jwk = public_jwk(key)
    # RFC 7638: the required members only, in lexicographic order, no white space.
    required = json.dumps({name: jwk[name] for name in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return base64url_encode(hashlib.sha256(required.encode("utf-8")).digest()).decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> str:
    """``key`` as an unencrypted PKCS #8 PEM: the form ``[hitl] evidence_signing_key`` takes."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def public_key_pem(key: Ed25519PublicKey) -> str:
    """``key`` as a PEM: the form ``[hitl] evidence_previous_public_keys`` lists after a rotation."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


@dataclass(frozen=True, kw_only=True)
class EvidenceKeys:
    """The key that signs evidence now, and the public keys of earlier ones still listed."""

    signing: Ed25519PrivateKey | None = None
    previous: tuple[Ed25519PublicKey, ...] = field(default=())

    @classmethod
    def load(cls) -> EvidenceKeys:
        """Read both options now (``_CMD`` and ``_SECRET`` variants too); a bad key names its option."""
        return cls.of(signing_pem=conf_get(SIGNING_KEY_OPTION), previous_pem=conf_get(PREVIOUS_KEYS_OPTION))

    @classmethod
    def of(cls, *, signing_pem: str = "", previous_pem: str = "") -> EvidenceKeys:
        """The keys of the options' texts; empty text is no key, anything else must be a usable key."""
        signing = _pem_text(signing_pem)
        previous = _pem_text(previous_pem)
        return cls(
            signing=_private_key(signing) if signing else None,
            previous=_public_keys(previous) if previous else (),
        )

    @property
    def signing_kid(self) -> str:
        """The ``kid`` of the signing key; :class:`EvidenceUnavailable` without one."""
        return key_id(self._signing_key().public_key())

    def _signing_key(self) -> Ed25519PrivateKey:
        if self.signing is None:
            raise EvidenceUnavailable(
                f"[hitl] {SIGNING_KEY_OPTION} is not set: this server signs no evidence "
                "(`airflow hitl evidence keygen` prints a key)"
            )
        return self.signing

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS of every listed key: the signing key's public half first, then the previous ones."""
        keys = ([self.signing.public_key()] if self.signing is not None else []) + list(self.previous)
        if not keys:
            raise EvidenceUnavailable(
                f"[hitl] {SIGNING_KEY_OPTION} is not set (nor {PREVIOUS_KEYS_OPTION}): there are no evidence keys"
            )
        listed: dict[str, dict[str, str]] = {}
        for key in keys:
            kid = key_id(key)
            # A rotated-out key still named in the previous keys is listed once.
            listed.setdefault(kid, {**public_jwk(key), "kid": kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": list(listed.values())}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """``claims`` as a compact JWS signed with the signing key, its ``kid`` in the header."""
        key = self._signing_key()
        return jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"kid": key_id(key.public_key())})


def _time(value: dt.datetime | None) -> str | None:
    return canonical_time(value) if value is not None else None


def request_claims(approval: Approval) -> dict[str, Any]:
    """What the evidence says about the request itself: its ids, outcome, content digest and policy."""
    return {
        "id": approval.id,
        "dag_id": approval.dag_id,
        "run_id": approval.run_id,
        "task_id": approval.task_id,
        "map_index": approval.map_index,
        "try_number": approval.try_number,
        # "api": opened over the REST API, so no task's gate whatever ids it names.
        "origin": approval.origin,
        "title": approval.title,
        "state": approval.state,
        "decision": approval.decision,
        "requested_by": approval.requested_by,
        "requested_at": _time(approval.requested_at),
        "decided_by": approval.decided_by,
        "decided_at": _time(approval.decided_at),
        "content_digest": approval.content_digest,
        "policy": {
            "allowed_approvers": list(approval.allowed_approvers),
            "allowed_roles": list(approval.allowed_roles),
            "required_approvals": approval.required_approvals,
            "require_all": approval.require_all,
            "allow_self_approval": approval.allow_self_approval,
            "escalation_level": approval.escalation_level,
            "escalation_targets": [target.to_json() for target in approval.escalation_targets],
        },
    }


def event_claims(event: AuditEvent) -> dict[str, Any]:
    """One audit event as the evidence lists it: where it sits in the chain, and its links."""
    claims: dict[str, Any] = {
        "seq": event.seq,
        "type": event.event_type,
        "actor": event.actor,
        "source": event.source,
        "at": canonical_time(event.created_at),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    if event.key_id is not None:
        # The audit key's fingerprint, never the key: which key the link is an HMAC under.
        claims["key_id"] = event.key_id
    return claims


def evidence_claims(approval: Approval, events: Iterable[AuditEvent], *, issued_at: dt.datetime) -> dict[str, Any]:
    """Every claim of a request's evidence: the request, its votes, its audit events and ``iat``."""
    return {
        "sub": approval.id,
        "iat": int(issued_at.timestamp()),
        "request": request_claims(approval),
        "votes": [vote_facts(vote) for vote in approval.votes],
        "events": [event_claims(event) for event in events],
    }


def sign_evidence(
    manager: ApprovalManager, approval: Approval, *, keys: EvidenceKeys, issued_at: dt.datetime | None = None
) -> str:
    """The compact JWS of ``approval``'s evidence: the request and its audit events as ``manager`` has them now."""
    now = issued_at or dt.datetime.now(dt.timezone.utc)
    # Read again, in one snapshot: the caller's copy may predate a vote, and votes and events must agree.
    current, events = manager.audit.approval_with_events(approval.id)
    return keys.sign(evidence_claims(current, events, issued_at=now))


def _listed_key(jwks: Mapping[str, Any], kid: str) -> jwt.PyJWK:
    """The key of ``jwks`` named ``kid``, when it is an Ed25519 key whose thumbprint is ``kid``."""
    try:
        listed = jwt.PyJWKSet.from_dict(dict(jwks))
    except (jwt.PyJWKSetError, jwt.PyJWKError, TypeError, ValueError) as err:
        raise EvidenceRejected("unusable jwks", f"it lists no usable key ({err})") from None
    try:
        jwk = listed[kid]
    except KeyError:
        raise EvidenceRejected("unknown kid", f"no key of the JWKS has kid {kid!r}") from None
    # A JWKS may name a key anything; ours are named by their thumbprint, so a key listed under
    # another key's kid is refused rather than trusted for it.
    if jwk.algorithm_name != ALGORITHM or not isinstance(jwk.key, Ed25519PublicKey) or key_id(jwk.key) != kid:
        raise EvidenceRejected("unknown kid", f"the JWKS's key {kid!r} is no Ed25519 key with that thumbprint")
    return jwk


def verify_evidence(token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The claims of ``token`` when a key of ``jwks`` signed them untouched; :class:`EvidenceRejected` otherwise."""
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as err:
        raise EvidenceRejected("malformed", f"not a compact JWS ({err})") from None
    if header.get("alg") != ALGORITHM:
        raise EvidenceRejected("malformed", f"alg is {header.get('alg')!r}, not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise EvidenceRejected("malformed", "the header names no kid")
    jwk = _listed_key(jwks, kid)
    try:
        claims = jwt.decode(
            token,
            jwk.key,
            algorithms=[ALGORITHM],
            # Evidence does not expire and the auditor's clock may run behind the server's.
            options={"require": ["iat", "sub"], "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise EvidenceRejected("bad signature", f"the signature does not match the content for key {kid!r}") from None
    except jwt.InvalidTokenError as err:
        raise EvidenceRejected("malformed", str(err)) from None
    if not isinstance(claims.get("request"), dict) or claims["request"].get("id") != claims["sub"]:
        raise EvidenceRejected("malformed", "the claims hold no request whose id is the subject")
    return claims

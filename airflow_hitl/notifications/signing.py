"""Signed, per-recipient action links for emails, and HMAC helpers for webhooks and Slack.

A link token is ``<payload>.<signature>``: ``payload`` is base64url JSON naming the request,
the recipient, the action, the notification row that carried it (its "use once" record) and
a hard expiry; ``signature`` is HMAC-SHA256 of the payload under the signing key. Changing any
byte (another request, another recipient, another action) breaks the signature.

A token has exactly one valid spelling. Base64 decoders forgive a lot (padding, the standard
alphabet's ``+/``, stray characters, non-zero trailing bits), so a lenient reader would accept
many strings for one signature; :func:`read_token` only accepts the canonical form, i.e. the
one :func:`make_token` writes, byte for byte, before it compares the signature.

The key comes from ``[hitl] signing_key``, else the password of the connection named by
``[hitl] signing_conn_id`` (default ``hitl_signing``), else it is derived from Airflow's own
``[api_auth] jwt_secret`` (which every component of a deployment already shares). It is never
taken from DAG code and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from slack_sdk.signature import SignatureVerifier

from airflow_hitl.notifications.config import conf_get

log = logging.getLogger(__name__)

LINK_ACTIONS = ("approve", "reject", "details")
_DERIVATION_LABEL = b"airflow-hitl email links v1"


class InvalidToken(ValueError):
    """The token is malformed or its signature does not match (a tampered link)."""


class SigningKeyMissing(RuntimeError):
    """No signing key is configured anywhere; links cannot be made or checked."""


MAX_TOKEN_LENGTH = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the spelling :func:`_b64` produces."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidToken("not canonical base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise InvalidToken("not canonical base64url") from err
    # Re-encoding catches what the alphabet check cannot: non-zero trailing bits.
    if _b64(data) != text:
        raise InvalidToken("not canonical base64url")
    return data


def _claims_json(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()


def signing_key() -> bytes:
    """The key that signs email links (see the module docstring for where it comes from)."""
    configured = conf_get("signing_key")
    if configured:
        return configured.encode()
    from airflow_hitl.models.store import find_connection

    try:
        conn = find_connection(conf_get("signing_conn_id"))
    except Exception:
        conn = None
    if conn is not None and conn.password:
        return str(conn.password).encode()
    try:
        from airflow.configuration import conf

        jwt_secret = conf.get("api_auth", "jwt_secret", fallback=None)
    except Exception:
        jwt_secret = None
    if jwt_secret:
        # A derived key: the JWT secret itself never signs anything of ours.
        return hmac.new(str(jwt_secret).encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
    raise SigningKeyMissing(
        "no signing key for email links: set [hitl] signing_key, the password of the "
        "[hitl] signing_conn_id connection, or [api_auth] jwt_secret"
    )


@dataclass(frozen=True, kw_only=True)
class LinkClaims:
    """What a link token says: which request, for whom, which action, carried by which notice."""

    request_id: str
    recipient: str
    action: str
    notification_id: str
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        """Compact form inside the token."""
        return {
            "r": self.request_id,
            "u": self.recipient,
            "a": self.action,
            "n": self.notification_id,
            "e": int(self.expires_at),
        }


def make_token(claims: LinkClaims, *, key: bytes | None = None) -> str:
    """Sign ``claims`` into a URL-safe token."""
    payload = _b64(_claims_json(claims.to_json()))
    mac = hmac.new(key or signing_key(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def read_token(token: str, *, key: bytes | None = None) -> LinkClaims:
    """Verify the signature (constant time) and return the claims; :class:`InvalidToken` otherwise.

    Only the canonical spelling is accepted: both parts must decode and re-encode to exactly
    the given text, and the payload must be the canonical JSON of its claims. Expiry is not
    checked here: an expired link is genuine and gets its own answer (410).
    """
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed link")
    payload, signature = token.split(".")
    raw_payload = _unb64(payload)
    given = _unb64(signature)
    if len(given) != hashlib.sha256().digest_size:
        raise InvalidToken("malformed signature")
    expected = hmac.new(key or signing_key(), payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        raise InvalidToken("signature does not match")
    try:
        data = json.loads(raw_payload)
    except ValueError as err:
        raise InvalidToken("malformed payload") from err
    if not isinstance(data, dict) or _claims_json(data) != raw_payload:
        raise InvalidToken("payload is not canonical")
    try:
        return LinkClaims(
            request_id=str(data["r"]),
            recipient=str(data["u"]),
            action=str(data["a"]),
            notification_id=str(data["n"]),
            expires_at=float(data["e"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidToken("malformed payload") from err


def link_expiry(expires_at: float | None, *, max_age: float, now: float | None = None) -> float:
    """When a link stops working: with its request, and never later than ``max_age`` from now."""
    cap = (now or time.time()) + max_age
    return min(expires_at, cap) if expires_at is not None else cap


WEBHOOK_SECRET_PREFIX = "whsec_"


def webhook_keys(secrets: str) -> list[bytes]:
    """The signing keys in a webhook secret setting, for Standard Webhooks signatures.

    ``secrets`` is one secret or several separated by spaces (key rotation: every message is
    signed with each, so receivers holding either the old or the new one keep verifying). A
    ``whsec_<base64>`` secret is the base64-decoded key, as in the Standard Webhooks
    libraries; any other secret is used as its UTF-8 bytes. Raises ``ValueError`` (without
    the secret in the message) when a ``whsec_`` secret is not valid base64 or is empty.
    """
    keys = []
    for position, secret in enumerate(secrets.split(), start=1):
        if secret.startswith(WEBHOOK_SECRET_PREFIX):
            encoded = secret[len(WEBHOOK_SECRET_PREFIX) :]
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"webhook secret #{position} is `whsec_` but not valid base64") from err
        else:
            key = secret.encode()
        if not key:
            raise ValueError(f"webhook secret #{position} is empty")
        keys.append(key)
    if not keys:
        raise ValueError("no webhook secret")
    return keys


def webhook_signature(keys: list[bytes], *, message_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` header: ``v1,<base64>`` per key, space separated.

    Each signature is base64 HMAC-SHA256 over ``{message_id}.{timestamp}.{body}``.
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii") for key in keys
    )


def _slack_verifier(secret: bytes) -> SignatureVerifier:
    # Slack's own verifier (slack_sdk, which the Slack provider brings): v0, HMAC-SHA256 over
    # "v0:{timestamp}:{body}", constant-time compare, a five-minute window. Slack's signing
    # secrets are hex text; the window is checked here too, to name it in the refusal.
    return SignatureVerifier(secret.decode("utf-8", "surrogateescape"))


def slack_signature(secret: bytes, *, timestamp: str, body: bytes) -> str:
    """Slack's ``v0=<hex>``: HMAC-SHA256 over ``v0:{timestamp}:{body}`` (``slack_sdk``'s)."""
    signature = _slack_verifier(secret).generate_signature(timestamp=timestamp, body=body)
    if signature is None:  # only for a missing timestamp, which the caller never passes
        raise ValueError("a Slack signature needs a timestamp")
    return signature


def verify_slack_request(
    secret: bytes, *, timestamp: str | None, signature: str | None, body: bytes, max_age: float = 300.0
) -> str | None:
    """Why a Slack request is refused (None when it is genuine and fresh), checked by ``slack_sdk``."""
    if not timestamp or not signature:
        return "missing Slack signature headers"
    if not secret.strip():  # the verifier raises on an empty secret; none verifies anything
        return "no Slack signing secret"
    # Plain ASCII digits only: int() would also take " 17", "+17" or other scripts' digits, and the verifier
    # raises on anything it cannot read rather than refusing it.
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "bad Slack timestamp"
    if abs(time.time() - int(timestamp)) > max_age:
        # Replays of an old, correctly signed request are refused.
        return "stale Slack timestamp"
    if not _slack_verifier(secret).is_valid(body=body, timestamp=timestamp, signature=signature):
        return "bad Slack signature"
    return None

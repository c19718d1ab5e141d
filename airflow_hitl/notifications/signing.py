"""Signed, per-recipient action links for emails, and HMAC helpers for webhooks and Slack.

A link token is ``<payload>.<signature>``: ``payload`` is base64url JSON naming the request,
the recipient, the action, the notification row that carried it (its "use once" record) and
a hard expiry; ``signature`` is HMAC-SHA256 of the payload under the signing key. Changing any
byte (another request, another recipient, another action) breaks the signature.

The key comes from ``[hitl] signing_key``, else the password of the connection named by
``[hitl] signing_conn_id`` (default ``hitl_signing``), else it is derived from Airflow's own
``[api_auth] jwt_secret`` (which every component of a deployment already shares). It is never
taken from DAG code and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from airflow_hitl.notifications.config import conf_get

log = logging.getLogger(__name__)

LINK_ACTIONS = ("approve", "reject", "details")
_DERIVATION_LABEL = b"airflow-hitl email links v1"


class InvalidToken(ValueError):
    """The token is malformed or its signature does not match (a tampered link)."""


class SigningKeyMissing(RuntimeError):
    """No signing key is configured anywhere; links cannot be made or checked."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key() -> bytes:
    """The key that signs email links (see the module docstring for where it comes from)."""
    configured = conf_get("signing_key")
    if configured:
        return configured.encode()
    from airflow_hitl.models.store import _lookup_connection

    try:
        conn = _lookup_connection(conf_get("signing_conn_id"))
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
    payload = _b64(json.dumps(claims.to_json(), separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key or signing_key(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def read_token(token: str, *, key: bytes | None = None) -> LinkClaims:
    """Verify the signature (constant time) and return the claims; :class:`InvalidToken` otherwise.

    Expiry is not checked here: an expired link is genuine and gets its own answer (410).
    """
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
        raise InvalidToken("malformed link")
    payload, signature = token.split(".")
    expected = hmac.new(key or signing_key(), payload.encode(), hashlib.sha256).digest()
    try:
        given = _unb64(signature)
    except ValueError as err:
        raise InvalidToken("malformed signature") from err
    if not hmac.compare_digest(expected, given):
        raise InvalidToken("signature does not match")
    try:
        data = json.loads(_unb64(payload))
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


def webhook_signature(secret: bytes, *, message_id: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over ``{message_id}.{timestamp}.{body}`` (see README)."""
    mac = hmac.new(secret, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def slack_signature(secret: bytes, *, timestamp: str, body: bytes) -> str:
    """Slack's ``v0=<hex>``: HMAC-SHA256 over ``v0:{timestamp}:{body}``."""
    return "v0=" + hmac.new(secret, f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


def verify_slack_request(
    secret: bytes, *, timestamp: str | None, signature: str | None, body: bytes, max_age: float = 300.0
) -> str | None:
    """Why a Slack request is refused (None when it is genuine and fresh)."""
    if not timestamp or not signature:
        return "missing Slack signature headers"
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad Slack timestamp"
    if abs(time.time() - ts) > max_age:
        # Replays of an old, correctly signed request are refused.
        return "stale Slack timestamp"
    expected = slack_signature(secret, timestamp=timestamp, body=body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "bad Slack signature"
    return None

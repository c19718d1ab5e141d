"""The one link-token codec and the Standard Webhooks signer, on their own."""

from __future__ import annotations

import base64
import itertools
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from airflow_hitl.notifications.signing import (
    InvalidToken,
    LinkClaims,
    make_token,
    read_token,
    webhook_keys,
    webhook_signature,
)

KEY = b"k" * 32


def claims(notification_id: str = "n-1") -> LinkClaims:
    """Claims of an approve link."""
    return LinkClaims(
        request_id="r-1", recipient="alice", action="approve", notification_id=notification_id, expires_at=2e9
    )


class TestLinkTokens:
    def test_round_trip(self) -> None:
        assert read_token(make_token(claims(), key=KEY), key=KEY) == claims()

    def test_the_standard_alphabet_spelling_is_refused(self) -> None:
        # Find a genuine token whose signature has a base64url-only character ("-" or "_").
        token = next(
            t for t in (make_token(claims(f"n-{i}"), key=KEY) for i in itertools.count()) if set("-_") & set(t[-43:])
        )
        payload, signature = token.split(".")
        standard = signature.replace("-", "+").replace("_", "/")
        assert base64.b64decode(standard + "=") == base64.urlsafe_b64decode(signature + "=")
        with pytest.raises(InvalidToken):
            read_token(f"{payload}.{standard}", key=KEY)
        assert read_token(token, key=KEY).notification_id.startswith("n-")

    def test_a_payload_that_is_not_canonical_json_is_refused_even_when_signed(self) -> None:
        # Correctly signed (the key holder made it) but spaced JSON: not a spelling we ever write.
        import hashlib
        import hmac

        raw = json.dumps(claims().to_json(), sort_keys=True).encode()
        payload = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        mac = hmac.new(KEY, payload.encode(), hashlib.sha256).digest()
        with pytest.raises(InvalidToken, match="canonical"):
            read_token(f"{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}", key=KEY)

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param("", id="empty"),
            pytest.param("a.b.c", id="three-parts"),
            pytest.param("é.é", id="non-ascii"),
            pytest.param("x" * 3000 + ".y", id="too-long"),
            pytest.param("abcde.abcde", id="impossible-length"),
            pytest.param("e30.AAAA", id="short-signature"),
        ],
    )
    def test_malformed_tokens_are_invalid_not_errors(self, token: str) -> None:
        with pytest.raises(InvalidToken):
            read_token(token, key=KEY)


class TestWebhookSignatures:
    def test_whsec_secret_verifies_with_standardwebhooks(self) -> None:
        secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
        body = b'{"event":"required"}'
        timestamp = str(int(time.time()))
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": timestamp,
            "webhook-signature": webhook_signature(
                webhook_keys(secret), message_id="msg_1", timestamp=timestamp, body=body
            ),
        }
        assert Webhook(secret).verify(body, headers) == {"event": "required"}
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"another key of 32 bytes.........").decode()).verify(body, headers)

    def test_plain_secret_is_its_utf8_bytes(self) -> None:
        assert webhook_keys("s3cret") == [b"s3cret"]

    def test_several_secrets_for_rotation(self) -> None:
        new = "whsec_" + base64.b64encode(b"n" * 24).decode()
        assert webhook_keys(f"{new}  old-plain ") == [b"n" * 24, b"old-plain"]

    @pytest.mark.parametrize(
        ("secret", "said"),
        [
            pytest.param("whsec_!!!", "not valid base64", id="bad-base64"),
            pytest.param("whsec_", "empty", id="empty-whsec"),
            pytest.param("   ", "no webhook secret", id="blank"),
        ],
    )
    def test_bad_secrets_are_refused_without_echoing_them(self, secret: str, said: str) -> None:
        with pytest.raises(ValueError, match=said) as info:
            webhook_keys(secret)
        assert "!!!" not in str(info.value)

"""``airflow hitl evidence keygen`` and ``airflow hitl evidence verify``.

``keygen`` prints a new Ed25519 private key (PEM) for ``[hitl] evidence_signing_key`` on
stdout, so it can go straight into a file or a secrets backend; its public key and ``kid``
go to stderr. ``verify`` checks a request's evidence (a compact JWS, from a file or stdin)
against a JWKS, from a file or a URL (the api-server's ``/hitl/api/v1/evidence/jwks.json``,
which needs no token): it needs neither the store nor Airflow's configuration, so an auditor
runs it anywhere. Exit 0 with the verified claims' summary; otherwise exit 1 with one line
saying why (``bad signature``, ``unknown kid``, ``malformed``, or the JWKS could not be read).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow_hitl.evidence import (
    EvidenceRejected,
    key_id,
    private_key_pem,
    public_key_pem,
    verify_evidence,
)

#: Seconds to wait for a JWKS URL to answer.
JWKS_TIMEOUT = 30.0
#: The largest evidence or JWKS read (a request with thousands of votes stays far below it).
MAX_INPUT_BYTES = 64 * 1024 * 1024


def keygen(args: argparse.Namespace) -> None:
    """Print a new Ed25519 private key in PEM; its public key and ``kid`` on stderr."""
    key = Ed25519PrivateKey.generate()
    print(private_key_pem(key), end="")
    public = key.public_key()
    print(f"kid: {key_id(public)}", file=sys.stderr)
    print(public_key_pem(public), end="", file=sys.stderr)


def _read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read(MAX_INPUT_BYTES)
        with open(path, encoding="utf-8") as handle:
            return handle.read(MAX_INPUT_BYTES)
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: cannot read the {what} {path}: {err}") from None


def _fetch_jwks(url: str) -> Any:
    import jwt

    try:
        # PyJWT's own JWKS client: the same fetch a verifying service would make.
        return jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_TIMEOUT).fetch_data()
    except (jwt.PyJWKClientError, ValueError) as err:  # unreachable, not a URL, not JSON
        raise SystemExit(f"error: cannot fetch the JWKS at {url}: {err}") from None


def _jwks(args: argparse.Namespace) -> dict[str, Any]:
    url, path = getattr(args, "jwks_url", None), getattr(args, "jwks_file", None)
    if bool(url) == bool(path):
        raise SystemExit("error: give the public keys with exactly one of --jwks-url URL or --jwks-file PATH")
    if url:
        data = _fetch_jwks(url)
    else:
        assert path is not None
        try:
            data = json.loads(_read_text(path, "JWKS file"))
        except ValueError as err:
            raise SystemExit(f"error: the JWKS file {path} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit("error: the JWKS is not a JSON object with `keys`")
    return data


def summary(claims: dict[str, Any], kid: str) -> dict[str, Any]:
    """What verified evidence says, in short: the request, its outcome, how much it holds, who signed it."""
    request = claims["request"]
    return {
        "ok": True,
        "kid": kid,
        "issued_at": dt.datetime.fromtimestamp(claims["iat"], tz=dt.timezone.utc).isoformat(),
        "request": {
            name: request.get(name)
            for name in ("id", "dag_id", "run_id", "task_id", "title", "state", "decision", "decided_by", "decided_at")
        },
        "content_digest": request.get("content_digest"),
        "votes": len(claims.get("votes") or ()),
        "events": len(claims.get("events") or ()),
    }


def verify(args: argparse.Namespace) -> None:
    """Exit 0 and print the claims' summary when the evidence verifies; exit 1 with the reason otherwise."""
    jwks = _jwks(args)
    source = getattr(args, "evidence_file", None) or "-"
    text = _read_text(source, "evidence")
    token = text.strip()
    if token.startswith("{"):
        # The endpoint's answer as saved (`{"jws": "..."}`) is taken as well as the bare JWS.
        try:
            token = str(json.loads(token).get("jws") or "")
        except (ValueError, AttributeError):
            raise SystemExit("error: malformed: the evidence is JSON without a `jws`") from None
    try:
        claims = verify_evidence(token, jwks)
    except EvidenceRejected as err:
        raise SystemExit(f"error: {err}") from None
    import jwt

    print(json.dumps(summary(claims, jwt.get_unverified_header(token)["kid"]), ensure_ascii=False))

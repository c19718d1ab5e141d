"""``airflow-hitl evidence keygen`` and ``evidence verify``, run as an auditor would: subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow_hitl.evidence import EvidenceKeys, private_key_pem, public_key_pem, sign_evidence
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import Principal
from tests.helpers import spec

SCRIPT = str(Path(sys.executable).parent / "airflow-hitl")


def hitl(*args: str, stdin: str | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    """``airflow-hitl ARGS`` with no evidence option in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__HITL__EVIDENCE")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    return subprocess.run([SCRIPT, *args], input=stdin, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """``evidence keygen``'s stdout (the private key) and stderr (kid and public key), run once."""
    result = hitl("evidence", "keygen", home=tmp_path_factory.mktemp("keygen"))
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


@pytest.fixture
def signed(generated: tuple[str, str], sqlite_manager: ApprovalManager, tmp_path: Path) -> dict[str, Any]:
    """Evidence of an approved gate signed with the generated key, and the key's JWKS in a file."""
    keys = EvidenceKeys.of(signing_pem=generated[0])
    gate = sqlite_manager.create(spec())
    approval = sqlite_manager.approve(gate.id, user=Principal.of("alice"), comment="fine")
    token = sign_evidence(sqlite_manager, approval, keys=keys)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()))
    evidence_file = tmp_path / "evidence.jws"
    evidence_file.write_text(token + "\n")
    return {"token": token, "jwks": keys.jwks(), "jwks_file": jwks_file, "file": evidence_file, "id": approval.id}


@pytest.fixture
def jwks_url(signed: dict[str, Any]) -> Iterator[str]:
    """The JWKS served over HTTP on loopback, as the api-server serves it."""
    body = json.dumps(signed["jwks"]).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/jwks.json"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if found else b'{"detail": "Not Found"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def flipped(token: str, index: int) -> str:
    """``token`` with the character at ``index`` of its payload changed."""
    header, payload, signature = token.split(".")
    char = "B" if payload[index] == "A" else "A"
    return f"{header}.{payload[:index]}{char}{payload[index + 1 :]}.{signature}"


class TestKeygen:
    def test_prints_a_usable_private_key_and_its_public_key_and_kid_on_stderr(self, generated: tuple[str, str]) -> None:
        private, stderr = generated
        assert private.startswith("-----BEGIN PRIVATE KEY-----\n")
        assert private.endswith("-----END PRIVATE KEY-----\n")
        keys = EvidenceKeys.of(signing_pem=private)
        assert keys.signing is not None
        assert f"kid: {keys.signing_kid}" in stderr
        assert public_key_pem(keys.signing.public_key()) in stderr
        assert "PRIVATE" not in stderr

    def test_every_key_is_new(self, tmp_path: Path, generated: tuple[str, str]) -> None:
        again = hitl("evidence", "keygen", home=tmp_path)
        assert again.returncode == 0
        assert again.stdout != generated[0]


class TestVerify:
    def test_untampered_evidence_from_a_file_verifies(self, signed: dict[str, Any], tmp_path: Path) -> None:
        result = hitl("evidence", "verify", str(signed["file"]), "--jwks-file", str(signed["jwks_file"]), home=tmp_path)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["ok"] is True
        assert summary["request"]["id"] == signed["id"]
        assert (summary["request"]["state"], summary["request"]["decided_by"]) == ("approved", "alice")
        assert summary["votes"] == 1
        assert summary["kid"] == json.loads(signed["jwks_file"].read_text())["keys"][0]["kid"]

    @pytest.mark.parametrize("form", ["jws", "endpoint-answer"])
    def test_from_stdin_and_a_jwks_url(self, signed: dict[str, Any], jwks_url: str, tmp_path: Path, form: str) -> None:
        text = signed["token"] if form == "jws" else json.dumps({"jws": signed["token"]})
        result = hitl("evidence", "verify", "-", "--jwks-url", f"{jwks_url}/jwks.json", stdin=text, home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["request"]["id"] == signed["id"]
        # Without a file argument, stdin is read too.
        bare = hitl("evidence", "verify", "--jwks-url", f"{jwks_url}/jwks.json", stdin=text, home=tmp_path)
        assert bare.returncode == 0, bare.stderr

    @pytest.mark.parametrize("index", [0, 17, -3], ids=["first", "inside", "near-end"])
    def test_a_changed_character_exits_1_with_one_line(
        self, signed: dict[str, Any], tmp_path: Path, index: int
    ) -> None:
        token = signed["token"]
        payload_length = len(token.split(".")[1])
        tampered = flipped(token, index % payload_length)
        result = hitl("evidence", "verify", "-", "--jwks-file", str(signed["jwks_file"]), stdin=tampered, home=tmp_path)
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(("error: bad signature", "error: malformed"))

    def test_evidence_of_another_key_is_an_unknown_kid(self, signed: dict[str, Any], tmp_path: Path) -> None:
        other = EvidenceKeys.of(signing_pem=private_key_pem(Ed25519PrivateKey.generate()))
        jwks = tmp_path / "other.json"
        jwks.write_text(json.dumps(other.jwks()))
        result = hitl("evidence", "verify", str(signed["file"]), "--jwks-file", str(jwks), home=tmp_path)
        assert result.returncode == 1
        kid = json.loads(signed["jwks_file"].read_text())["keys"][0]["kid"]
        assert result.stderr == f"error: unknown kid: no key of the JWKS has kid {kid!r}\n"

    @pytest.mark.parametrize(
        ("args", "stdin", "message"),
        [
            pytest.param([], "x.y.z", "exactly one of --jwks-url URL or --jwks-file PATH", id="no-jwks"),
            pytest.param(
                ["--jwks-file", "{jwks}", "--jwks-url", "http://127.0.0.1:9/"],
                "x",
                "exactly one of --jwks-url URL or --jwks-file PATH",
                id="both",
            ),
            pytest.param(["--jwks-file", "{jwks}"], "not a jws", "error: malformed: not a compact JWS", id="garbage"),
            pytest.param(["--jwks-file", "{jwks}"], '{"other": 1}', "error: malformed", id="json-without-jws"),
            pytest.param(["--jwks-file", "/no/such/file"], "x", "error: cannot read the JWKS file", id="no-jwks-file"),
            pytest.param(["--jwks-url", "http://127.0.0.1:9/jwks.json"], "x", "cannot fetch the JWKS", id="no-server"),
            pytest.param(["--jwks-url", "not a url"], "x", "error:", id="not-a-url"),
        ],
    )
    def test_every_failure_is_one_line_and_exit_1(
        self, signed: dict[str, Any], tmp_path: Path, args: list[str], stdin: str, message: str
    ) -> None:
        argv = [a.replace("{jwks}", str(signed["jwks_file"])) for a in args]
        result = hitl("evidence", "verify", "-", *argv, stdin=stdin, home=tmp_path)
        assert result.returncode == 1
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr

    def test_a_jwks_url_that_is_not_a_jwks(self, signed: dict[str, Any], jwks_url: str, tmp_path: Path) -> None:
        result = hitl("evidence", "verify", str(signed["file"]), "--jwks-url", f"{jwks_url}/elsewhere", home=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith("error: cannot fetch the JWKS at")

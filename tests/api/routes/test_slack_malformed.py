"""Signed Slack payloads of the wrong shape: every field of a click and of both modals' submissions,
replaced by a value of another type or left out, is answered without a 5xx and records nothing.

Only Slack (or whoever holds the signing secret) gets this far, so this is about a Slack that
changed its payloads, or a replayed one edited before signing: never a crash, never a vote.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from airflow.sdk import Param
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.notifications.signing import slack_signature
from tests.api.routes.test_slack import URL, click, open_and_post, post, recorded, submission
from tests.api.routes.test_slack_inputs import approve_submission
from tests.standins import SLACK_SIGNING_SECRET, SlackApi

#: What a field is replaced by: every JSON type but its own (an equal value changes nothing).
WRONG = (None, 7, "x", [], {}, [{"a": 1}], {"a": [1]})


def mutations(payload: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``payload`` with one value anywhere in it replaced by a wrong one, or its key left out."""
    if isinstance(payload, dict):
        items: list[tuple[Any, Any]] = list(payload.items())
    elif isinstance(payload, list):
        items = list(enumerate(payload))
    else:
        return
    for key, value in items:
        where = (*path, key)
        for wrong in WRONG:
            if wrong != value:
                yield f"{'.'.join(map(str, where))}={json.dumps(wrong)}", _replaced(payload, key, wrong)
        if isinstance(payload, dict):
            yield f"{'.'.join(map(str, where))} left out", {k: v for k, v in payload.items() if k != key}
        for name, inner in mutations(value, where):
            yield name, _replaced(payload, key, inner)


def _replaced(container: Any, key: Any, value: Any) -> Any:
    copied = copy.copy(container)
    copied[key] = value
    return copied


@pytest.mark.usefixtures("notify_env")
def test_every_malformed_signed_payload_is_answered_without_a_5xx_and_records_nothing(
    client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
) -> None:
    plain, message = open_and_post(sqlite_manager)
    form, form_message = open_and_post(sqlite_manager, inputs={"ticket": Param(type="string")})
    # A private_metadata that is itself JSON text is mutated as the structure it encodes, too.
    metadata = {"request_id": plain.id, **message}
    payloads = {
        "click": click(plain, message, "UALICE001", "hitl_approve"),
        "reject modal": submission(plain, message, "UALICE001", "not today"),
        "inputs modal": approve_submission(form, form_message, "UALICE001", {"ticket": "CHG-1"}),
    }
    before = {gate.id: recorded(sqlite_manager, gate.id) for gate in (plain, form)}
    # A server error answered as a 500 (not raised into the test): every case is tried.
    answering = TestClient(client.app, raise_server_exceptions=False)
    failures = []
    sent = 0
    for kind, payload in payloads.items():
        cases = list(mutations(payload))
        cases += [
            (f"private_metadata {name}", {**payload, "view": {**payload["view"], "private_metadata": json.dumps(bad)}})
            for name, bad in mutations(metadata)
            if "view" in payload
        ]
        for name, bad in cases:
            response = post(answering, bad)
            sent += 1
            if response.status_code >= 500:
                failures.append(f"{kind}: {name} -> {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert sent > 300
    # Some mutations leave a valid payload (a key Slack sends that we do not read): they may
    # decide. Every vote recorded must still be alice's own, from Slack.
    for gate in (plain, form):
        votes = sqlite_manager.queries.get(gate.id).votes
        if recorded(sqlite_manager, gate.id) != before[gate.id]:
            assert [(v.user, v.source) for v in votes] == [("alice", "slack")]


def _post_text(client: TestClient, payload_text: str) -> Any:
    """POST ``payload_text`` as Slack's signed ``payload`` field, whatever it is."""
    body = urlencode({"payload": payload_text}).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": slack_signature(SLACK_SIGNING_SECRET.encode(), timestamp=timestamp, body=body),
    }
    return client.post(URL, content=body, headers=headers)


@pytest.mark.usefixtures("notify_env")
class TestNestedPastThePythonParser:
    """A correctly signed payload of 3,000 nested "[" was a 500 (Python's parser ran out of stack)."""

    def test_as_the_payload_it_is_no_payload(self, client: TestClient) -> None:
        response = _post_text(TestClient(client.app, raise_server_exceptions=False), "[" * 3000)
        assert response.status_code == 400
        assert response.json() == {"detail": "not a Slack interaction payload"}

    def test_as_the_modals_metadata_or_a_typed_value_it_records_nothing(
        self, client: TestClient, sqlite_manager: ApprovalManager, slack_api: SlackApi
    ) -> None:
        gate, message = open_and_post(sqlite_manager, inputs={"extra": Param(None, type=["null", "array"])})
        answering = TestClient(client.app, raise_server_exceptions=False)
        before = recorded(sqlite_manager, gate.id)
        meta = approve_submission(gate, message, "UALICE001", {})
        meta["view"]["private_metadata"] = "[" * 3000
        assert post(answering, meta).status_code == 200
        typed = approve_submission(
            gate, message, "UALICE001", {"extra": {"type": "plain_text_input", "value": "[" * 3000}}
        )
        response = post(answering, typed)
        assert response.status_code == 200
        assert response.json()["errors"] == {"input:extra": "Not a valid value."}
        assert recorded(sqlite_manager, gate.id) == before

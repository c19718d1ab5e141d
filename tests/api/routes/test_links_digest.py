"""An emailed link's confirmation page binds the decision to what it showed (``content_digest``).

The page carries the digest of the request it shows in a hidden field; a POST whose digest is
not the request's current one records nothing, leaves the link usable and shows the request
again as it is now.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager
from airflow_hitl.policy import EscalationLevel
from airflow_hitl.spec import utcnow
from tests.api.routes.test_links import open_and_mail, show, state_of, use
from tests.standins import SmtpSink

DIGEST_FIELD = re.compile(r'<input type="hidden" name="content_digest" value="([0-9a-f]{64})">')


def shown_digest(page_html: str) -> str:
    """The digest the confirmation page carries in its form."""
    [digest] = DIGEST_FIELD.findall(page_html)
    return digest


def escalate(manager: ApprovalManager, request_id: str) -> None:
    """Let the gate's first timeout pass (a manager whose clock is later): carol joins the approvers."""
    later = ApprovalManager(store=manager.store, clock=lambda: utcnow() + dt.timedelta(hours=1, minutes=1))
    assert later.apply_timeout(request_id).escalated


ESCALATING = {
    "timeout_action": "escalate",
    "escalation_targets": [EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=10))],
    "escalation_final_action": "reject",
}


@pytest.mark.usefixtures("notify_env")
class TestConfirmationPage:
    def test_the_form_carries_the_digest_of_the_request_it_shows(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        for action in ("approve", "reject"):
            assert shown_digest(show(client, links["alice"][action]).text) == gate.content_digest

    @pytest.mark.parametrize("action", ["approve", "reject"])
    def test_a_request_changed_since_the_page_is_409_the_link_stays_usable(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink, action: str
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, **ESCALATING)
        token = links["alice"][action]
        seen = shown_digest(show(client, token).text)
        escalate(sqlite_manager, gate.id)
        before = state_of(sqlite_manager, gate.id)
        form = {"content_digest": seen, **({"reason": "metrics regressed"} if action == "reject" else {})}
        response = use(client, token, form)
        assert response.status_code == 409, response.text
        assert "This request changed since you opened it" in response.text
        assert state_of(sqlite_manager, gate.id) == before  # no vote, no event, the link not used up
        # The page shows the request as it is now, with its own digest: confirming that decides.
        current = sqlite_manager.queries.get(gate.id).content_digest
        assert current != seen
        assert shown_digest(response.text) == current
        decided = use(client, token, {**form, "content_digest": current})
        assert decided.status_code == 200, decided.text
        assert sqlite_manager.queries.get(gate.id).state == ("approved" if action == "approve" else "rejected")

    def test_a_malformed_digest_is_422_naming_it_and_leaves_the_link_usable(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        before = state_of(sqlite_manager, gate.id)
        response = use(client, links["alice"]["approve"], {"content_digest": "not-a-digest"})
        assert response.status_code == 422, response.text
        assert "content_digest" in response.text
        assert state_of(sqlite_manager, gate.id) == before
        assert use(client, links["alice"]["approve"], {"content_digest": gate.content_digest}).status_code == 200

    def test_a_page_from_before_digests_is_not_checked(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        # A confirmation page rendered by an older version has no digest field: decided as before.
        gate, links = open_and_mail(sqlite_manager, smtp_server)
        assert use(client, links["alice"]["approve"]).status_code == 200
        assert sqlite_manager.queries.get(gate.id).state == "approved"

"""The emailed approve link of a gate with form inputs: the confirmation page shows the form
(plain HTML, no script), posts the values, and a refused value brings the page back with the
field's problem and the link still usable. A real SMTP server receives the mail.
"""

from __future__ import annotations

import html

import pytest
from airflow.sdk import Param
from fastapi.testclient import TestClient

from airflow_hitl.manager import ApprovalManager
from tests.api.routes.test_links import open_and_mail, show, state_of, use
from tests.standins import SmtpSink

FORM = {
    "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="Share of traffic"),
    "ticket": Param(type="string"),
    "region": Param("eu", enum=["eu", "us"]),
}


@pytest.mark.usefixtures("notify_env")
class TestLinkForm:
    def test_approve_page_shows_the_form_and_posts_it(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, inputs=FORM)
        # The notice lists what an approval asks for, in both parts of the mail.
        mail = smtp_server.to("alice")[0]
        plain = mail.get_body(("plain",)).get_content()
        assert "Inputs to fill in when approving:" in plain
        assert "- rollout_percent (default: 10): Share of traffic" in plain
        assert "- ticket (required)" in plain
        assert "<li>ticket (required)</li>" in mail.get_body(("html",)).get_content()
        page = show(client, links["alice"]["approve"])
        assert page.status_code == 200
        text = page.text
        assert 'name="input.rollout_percent" type="number" step="1" min="1" max="100" value="10"' in text
        assert 'name="input.ticket" type="text" value="" required' in text
        assert '<option value="0" selected>eu</option>' in text
        assert "ticket (required)" in text and "Share of traffic" in text
        # The reject page asks for a reason only.
        assert "input.ticket" not in show(client, links["alice"]["reject"]).text

        done = use(
            client,
            links["alice"]["approve"],
            {"input.rollout_percent": "30", "input.ticket": "CHG-77", "input.region": "1", "comment": "ok"},
        )
        assert done.status_code == 200, done.text
        approval = sqlite_manager.queries.get(gate.id)
        assert approval.state == "approved"
        assert approval.votes[0].inputs == {"rollout_percent": 30, "ticket": "CHG-77", "region": "us"}
        assert approval.votes[0].source == "email"

    def test_refused_values_bring_the_page_back_and_the_link_stays_usable(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, inputs=FORM)
        before = state_of(sqlite_manager, gate.id)
        refused = use(client, links["alice"]["approve"], {"input.rollout_percent": "500", "input.ticket": ""})
        assert refused.status_code == 422
        text = html.unescape(refused.text)
        assert "Some inputs are not valid" in text
        assert "500 is greater than the maximum of 100" in text
        assert "is required" in text
        assert 'value="500"' in refused.text, "what was typed is shown again"
        unreadable = use(client, links["alice"]["approve"], {"input.rollout_percent": "lots", "input.ticket": "X"})
        assert unreadable.status_code == 422
        assert "'lots' is not a valid value" in html.unescape(unreadable.text)
        assert state_of(sqlite_manager, gate.id) == before

        done = use(client, links["alice"]["approve"], {"input.ticket": "CHG-1"})
        assert done.status_code == 200, done.text
        assert sqlite_manager.queries.get(gate.id).votes[0].inputs == {
            "rollout_percent": 10,
            "ticket": "CHG-1",
            "region": "eu",
        }


@pytest.mark.usefixtures("notify_env")
class TestUnreadableValues:
    @pytest.mark.parametrize(
        ("typed", "says"),
        [
            # Python's JSON parser runs out of stack on 2,000 "[" (RecursionError): it was a 500.
            pytest.param("[" * 2000, "is not a valid value", id="nested-past-the-parser"),
            pytest.param("[" * 40 + "]" * 40, "is not a valid value", id="nested-past-max-json-depth"),
            pytest.param("9" * 5000, "is not a valid value", id="too-many-digits"),
        ],
    )
    def test_an_unreadable_number_brings_the_page_back_and_the_link_stays_usable(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink, typed: str, says: str
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, inputs=FORM)
        before = state_of(sqlite_manager, gate.id)
        refused = use(client, links["alice"]["approve"], {"input.rollout_percent": typed, "input.ticket": "CHG-1"})
        assert refused.status_code == 422, refused.text[:500]
        assert says in html.unescape(refused.text)
        assert len(refused.text) < 20_000, "what was typed is not echoed whole in the message"
        assert state_of(sqlite_manager, gate.id) == before
        assert use(client, links["alice"]["approve"], {"input.ticket": "CHG-1"}).status_code == 200

    @pytest.mark.parametrize("index", ["-1", "\u0663", "\u00b2", "1" * 5000])
    def test_an_option_is_its_plain_index(
        self, client: TestClient, sqlite_manager: ApprovalManager, smtp_server: SmtpSink, index: str
    ) -> None:
        gate, links = open_and_mail(sqlite_manager, smtp_server, inputs=FORM)
        refused = use(client, links["alice"]["approve"], {"input.region": index, "input.ticket": "CHG-1"})
        assert refused.status_code == 422
        assert sqlite_manager.queries.get(gate.id).votes == ()

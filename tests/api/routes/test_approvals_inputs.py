"""Form inputs over the REST API: the form in the item, values in the approve body, 422 naming the field."""

from __future__ import annotations

import pytest
from airflow.sdk import Param

from airflow_hitl.api.datamodels import ApprovalResponse, BulkResponse, ErrorResponse
from airflow_hitl.manager import ApprovalManager
from tests.airflow_api import API, AirflowApi, open_request, snapshot

FORM = {
    "rollout_percent": Param(10, type="integer", minimum=1, maximum=100),
    "ticket": Param(type="string"),
}


def test_item_shows_the_form_and_each_votes_inputs(api: AirflowApi, api_manager: ApprovalManager) -> None:
    approval = open_request(api_manager, inputs=FORM)
    item = api.client.get(f"{API}/{approval.id}", headers=api.headers("alice")).json()
    ApprovalResponse.model_validate(item)
    ticket = {"value": None, "schema": {"type": "string"}, "description": None, "required": True}
    assert item["inputs"]["ticket"] == ticket
    assert item["inputs"]["rollout_percent"]["value"] == 10

    response = api.client.post(
        f"{API}/{approval.id}/approve",
        headers=api.headers("alice"),
        json={"comment": "go", "inputs": {"ticket": "CHG-42", "rollout_percent": 25}},
    )
    assert response.status_code == 200, response.text
    body = ApprovalResponse.model_validate(response.json())
    assert body.state == "approved"
    assert body.votes[0].inputs == {"ticket": "CHG-42", "rollout_percent": 25}


@pytest.mark.parametrize(
    ("inputs", "names"),
    [
        pytest.param({"rollout_percent": 500, "ticket": "CHG-1"}, ["rollout_percent"], id="over-maximum"),
        pytest.param({"rollout_percent": "ten"}, ["rollout_percent", "ticket"], id="wrong-type-and-missing"),
        pytest.param(None, ["ticket"], id="required-missing"),
        pytest.param({"ticket": "CHG-1", "colour": "red"}, ["colour"], id="unknown"),
    ],
)
def test_bad_inputs_are_a_422_naming_the_field(
    api: AirflowApi, api_manager: ApprovalManager, inputs: dict | None, names: list[str]
) -> None:
    approval = open_request(api_manager, inputs=FORM)
    before = snapshot(api_manager)
    body = {"comment": "go"} if inputs is None else {"comment": "go", "inputs": inputs}
    response = api.client.post(f"{API}/{approval.id}/approve", headers=api.headers("alice"), json=body)
    assert response.status_code == 422, response.text
    detail = ErrorResponse.model_validate(response.json()).detail
    assert isinstance(detail, list)
    assert sorted(error.loc[-1] for error in detail) == sorted(names)
    assert all(error.loc[:2] == ["body", "inputs"] for error in detail)
    assert all(error.msg.startswith(f"{error.loc[-1]}: ") for error in detail)
    assert snapshot(api_manager) == before


def test_inputs_must_be_an_object(api: AirflowApi, api_manager: ApprovalManager) -> None:
    approval = open_request(api_manager, inputs=FORM)
    response = api.client.post(f"{API}/{approval.id}/approve", headers=api.headers("alice"), json={"inputs": ["CHG-1"]})
    assert response.status_code == 422
    assert "inputs" in str(response.json()["detail"])


def test_reject_needs_no_inputs(api: AirflowApi, api_manager: ApprovalManager) -> None:
    approval = open_request(api_manager, inputs=FORM)
    response = api.client.post(f"{API}/{approval.id}/reject", headers=api.headers("alice"), json={"reason": "no"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "rejected"


def test_bulk_approve_refuses_items_with_required_inputs(api: AirflowApi, api_manager: ApprovalManager) -> None:
    with_form = open_request(api_manager, inputs=FORM)
    plain = open_request(api_manager, run_id="manual__2")
    response = api.client.post(
        f"{API}/bulk", headers=api.headers("alice"), json={"ids": [with_form.id, plain.id], "action": "approve"}
    )
    assert response.status_code == 200, response.text
    results = {r.id: r for r in BulkResponse.model_validate(response.json()).results}
    assert results[plain.id].ok and results[plain.id].state == "approved"
    refused = results[with_form.id]
    assert (refused.ok, refused.status_code) == (False, 422)
    assert "ticket" in (refused.detail or "")
    assert api_manager.queries.get(with_form.id).state == "pending"


class TestCreateWithAForm:
    """``POST /approvals`` takes a form in the shape its items show it."""

    FORM = {
        "ticket": {"schema": {"type": "string", "minLength": 3}, "description": "change ticket"},
        "rollout_percent": {"schema": {"type": "integer", "minimum": 1, "maximum": 100}, "value": 10},
        "note": {"required": False},
    }

    def _create(self, api: AirflowApi, inputs: object) -> object:
        body = {"dag_id": "billing", "title": "External gate", "allowed_approvers": ["alice"], "inputs": inputs}
        return api.client.post(API, headers=api.headers("op"), json=body)

    def test_the_form_is_stored_shown_and_filled_by_the_approval(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        response = self._create(api, self.FORM)
        assert response.status_code == 201, response.text
        created = ApprovalResponse.model_validate(response.json())
        assert created.inputs == {
            "ticket": {
                "value": None,
                "schema": {"type": "string", "minLength": 3},
                "description": "change ticket",
                "required": True,
            },
            "rollout_percent": {
                "value": 10,
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                "description": None,
                "required": False,
            },
            "note": {"value": None, "schema": {}, "description": None, "required": False},
        }
        assert api_manager.queries.get(created.id).inputs == created.inputs

        url = f"{API}/{created.id}/approve"
        missing = api.client.post(url, headers=api.headers("alice"), json={"inputs": {"rollout_percent": 101}})
        assert missing.status_code == 422, missing.text
        assert sorted(e["loc"][-1] for e in missing.json()["detail"]) == ["rollout_percent", "ticket"]
        assert api_manager.queries.get(created.id).state == "pending"

        done = api.client.post(url, headers=api.headers("alice"), json={"inputs": {"ticket": "CHG-7"}})
        assert done.status_code == 200, done.text
        [vote] = ApprovalResponse.model_validate(done.json()).votes
        assert vote.inputs == {"ticket": "CHG-7", "rollout_percent": 10, "note": None}

    def test_an_items_form_opens_another_request_with_the_same_form(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        first = self._create(api, self.FORM).json()
        again = self._create(api, first["inputs"])
        assert again.status_code == 201, again.text
        assert again.json()["inputs"] == first["inputs"]

    @pytest.mark.parametrize(
        ("inputs", "named"),
        [
            pytest.param(
                {"ticket": {"required": True, "value": "x"}},
                "required input has no default",
                id="required-with-default",
            ),
            pytest.param(
                {"pct": {"schema": {"type": "integer"}, "required": False}},
                "optional input needs",
                id="optional-no-default",
            ),
            pytest.param(
                {"pct": {"schema": {"type": "integer", "maximum": 5}, "value": 50}}, "pct", id="default-refused"
            ),
            pytest.param({"pct": {"schema": {"type": "nonsense"}}}, "pct", id="not-json-schema"),
            pytest.param({"two words": {}}, "two words", id="not-an-identifier"),
            pytest.param({"x" * 101: {}}, "inputs", id="name-too-long"),
            pytest.param({"pct": {"json_schema": {}}}, "json_schema", id="unknown-field"),
            pytest.param({"pct": 5}, "inputs", id="not-an-object"),
            pytest.param({f"i{n}": {} for n in range(101)}, "inputs", id="too-many"),
            pytest.param({"pct": {"schema": {"enum": ["\x00"]}}}, "inputs", id="nul-in-schema"),
            pytest.param({"pct": {"schema": {"$schema": 5}}}, "$schema", id="dialect-not-a-string"),
            pytest.param({"pct": {"schema": {"pattern": "(?<=a)b"}}}, "not supported", id="lookbehind"),
        ],
    )
    def test_a_bad_form_is_a_422_naming_it_and_opens_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, inputs: dict, named: str
    ) -> None:
        before = snapshot(api_manager)
        response = self._create(api, inputs)
        assert response.status_code == 422, response.text
        assert named in str(response.json()["detail"])
        assert snapshot(api_manager) == before


#: The payloads of issue 23: 4,000 distinct objects (49 KiB of JSON), and a draft-04 enum of 3,000 objects.
DISTINCT_OBJECTS = [{"k": i} for i in range(4000)]
DRAFT4_ENUM = {"$schema": "http://json-schema.org/draft-04/schema#", "enum": [{"k": i} for i in range(3000)]}


class TestWhatIsTooCostlyToCheck:
    """Refused with a 422 naming the input, before the work is done (uniqueItems compares every pair)."""

    def test_a_vote_whose_value_is_too_costly_is_a_422_naming_the_input(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        form = {"rows": {"schema": {"type": "array", "uniqueItems": True}, "value": []}}
        approval = open_request(api_manager, inputs=form, allowed_approvers=["alice", "bob"], required_approvals=2)
        before = snapshot(api_manager)
        response = api.client.post(
            f"{API}/{approval.id}/approve", headers=api.headers("alice"), json={"inputs": {"rows": DISTINCT_OBJECTS}}
        )
        assert response.status_code == 422, response.text
        [error] = ErrorResponse.model_validate(response.json()).detail
        assert error.loc == ["body", "inputs", "rows"]
        assert "too costly to check" in error.msg and "uniqueItems compares every pair of its 4000 items" in error.msg
        assert len(response.content) < 2000
        assert snapshot(api_manager) == before
        # The request is not held: another approver decides at once.
        other = api.client.post(f"{API}/{approval.id}/approve", headers=api.headers("bob"), json={})
        assert other.status_code == 200, other.text

    @pytest.mark.parametrize(
        ("form", "says"),
        [
            pytest.param(
                {"rows": {"schema": {"type": "array", "uniqueItems": True}, "value": DISTINCT_OBJECTS}},
                "uniqueItems compares every pair of its 4000 items",
                id="unique-items-default",
            ),
            pytest.param(
                {"choice": {"schema": DRAFT4_ENUM, "value": {"k": 1}}},
                "`enum` has 3000 members that are not all strings or numbers",
                id="draft-04-enum",
            ),
        ],
    )
    def test_a_form_too_costly_to_check_opens_nothing(
        self, api: AirflowApi, api_manager: ApprovalManager, form: dict, says: str
    ) -> None:
        before = snapshot(api_manager)
        body = {"dag_id": "billing", "title": "External gate", "allowed_approvers": ["alice"], "inputs": form}
        response = api.client.post(API, headers=api.headers("op"), json=body)
        assert response.status_code == 422, response.text
        detail = str(response.json()["detail"])
        assert f"inputs['{next(iter(form))}']" in detail and says in detail
        assert snapshot(api_manager) == before


def test_a_rejection_keeps_the_values_given_with_it(api: AirflowApi, api_manager: ApprovalManager) -> None:
    # README: "Values given with a rejection are validated and kept with the vote"; defaults are not filled in.
    approval = open_request(api_manager, inputs=FORM)
    response = api.client.post(
        f"{API}/{approval.id}/reject",
        headers=api.headers("alice"),
        json={"reason": "no", "inputs": {"ticket": "INC-7"}},
    )
    assert response.status_code == 200, response.text
    assert ApprovalResponse.model_validate(response.json()).votes[0].inputs == {"ticket": "INC-7"}
    refused = open_request(api_manager, run_id="manual__2", inputs=FORM)
    before = snapshot(api_manager)
    response = api.client.post(
        f"{API}/{refused.id}/reject",
        headers=api.headers("alice"),
        json={"reason": "no", "inputs": {"rollout_percent": 500}},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "inputs", "rollout_percent"]
    assert snapshot(api_manager) == before


def test_a_page_rejection_keeps_them_too(api: AirflowApi, api_manager: ApprovalManager) -> None:
    approval = open_request(api_manager, inputs=FORM)
    response = api.client.post(
        f"/hitl/ui/api/approvals/{approval.id}/reject",
        cookies={"_token": api.tokens["alice"]},
        headers={"X-Requested-With": "XMLHttpRequest"},
        json={"reason": "no", "inputs": {"ticket": "INC-8"}},
    )
    assert response.status_code == 200, response.text
    assert api_manager.queries.get(approval.id).votes[0].inputs == {"ticket": "INC-8"}

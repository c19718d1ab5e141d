"""Issue 10, impostor requests: a request opened over the API is never taken for a task's gate.

``origin`` is set by the caller of ``ApprovalManager.create`` (the REST API: ``api``; the
operator: ``task``), never by a body, and shown wherever a request is shown: the REST
output, the filters the task-instance tab uses, the CSV export and the notices.
"""

from __future__ import annotations

import csv
import io

from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.notifications.templates import render, template_context
from tests.airflow_api import API, AirflowApi, open_request, snapshot

GATE = {"dag_id": "billing", "run_id": "manual__1", "task_id": "gate"}


def _impostor(api: AirflowApi, **extra: object) -> dict:
    response = api.client.post(API, headers=api.headers("op"), json={**GATE, "title": "Looks like the gate", **extra})
    assert response.status_code == 201, response.text
    return response.json()


class TestOrigin:
    """Who opened a request is recorded by the caller and shown everywhere."""

    def test_api_request_is_marked_api_and_task_gate_task(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gate = open_request(api_manager, try_number=1)
        impostor = _impostor(api)
        assert impostor["origin"] == "api"
        listed = api.client.get(API, headers=api.headers("admin")).json()["approvals"]
        assert {a["id"]: a["origin"] for a in listed} == {gate.id: "task", impostor["id"]: "api"}
        assert api_manager.audit.events(impostor["id"])[0].details["origin"] == "api"

    def test_body_cannot_choose_the_origin(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        before = snapshot(api_manager)
        response = api.client.post(
            API, headers=api.headers("admin"), json={**GATE, "title": "t", "origin": "task", "try_number": 1}
        )
        assert response.status_code == 422
        assert {e["loc"][-1] for e in response.json()["detail"]} == {"origin", "try_number"}
        assert snapshot(api_manager) == before

    def test_task_instance_query_finds_only_the_real_gate(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        gate = open_request(api_manager, try_number=1)
        _impostor(api)
        _impostor(api, map_index=3)
        other_index = open_request(api_manager, try_number=1, map_index=3)
        # What the task-instance tab asks for: this dag/run/task/map_index, origin task only.
        response = api.client.get(
            API,
            headers=api.headers("viewer"),
            params={**GATE, "map_index": -1, "origin": "task", "order_by": "-requested_at"},
        )
        assert response.status_code == 200
        assert [a["id"] for a in response.json()["approvals"]] == [gate.id]
        assert other_index.id != gate.id

    def test_operator_retry_of_the_same_try_never_finds_the_impostor(
        self, api: AirflowApi, api_manager: ApprovalManager
    ) -> None:
        impostor = _impostor(api)
        created = api_manager.create(
            ApprovalSpec(**GATE, title="the real gate", try_number=1, requested_by="trigger-user")
        )
        assert created.id != impostor["id"] and created.origin == "task"
        again = api_manager.create(ApprovalSpec(**GATE, title="the real gate", try_number=1))
        assert again.id == created.id
        # A later try supersedes the task's earlier gate, never the API request.
        api_manager.create(ApprovalSpec(**GATE, title="the real gate", try_number=2))
        assert api_manager.queries.get(created.id).state == "cancelled"
        assert api_manager.queries.get(impostor["id"]).state == "pending"

    def test_notice_says_opened_over_the_api(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        impostor = api_manager.queries.get(_impostor(api)["id"])
        gate = open_request(api_manager, try_number=1)
        for approval, expected in ((impostor, True), (gate, False)):
            links = {"approve": None, "reject": None, "details": "http://localhost:8080/hitl/ui/"}
            context = template_context(approval, event="required", recipient="alice", links=links)
            assert context["opened_over_api"] is expected
            message = render("required", context, html=True)
            assert ("Opened over the REST API" in message.text) is expected
            assert ("opened over the API" in (message.html or "")) is expected


class TestCsv:
    """The export shows the origin, and escapes only text that a spreadsheet would run."""

    def test_origin_column_and_numbers_unescaped(self, api: AirflowApi, api_manager: ApprovalManager) -> None:
        formula = api_manager.create(
            ApprovalSpec(dag_id="billing", title="=HYPERLINK(1)", requested_by="-minus", try_number=1, run_id="r")
        )
        api_manager.cancel(formula.id, actor="admin", reason="@done")
        impostor = _impostor(api)
        api.client.post(f"{API}/{impostor['id']}/cancel", headers=api.headers("admin"), json={"reason": "+plus"})

        response = api.client.get(f"{API}/history", headers=api.headers("admin"), params={"format": "csv"})
        assert response.status_code == 200
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(response.text))}
        assert rows[formula.id]["origin"] == "task" and rows[impostor["id"]]["origin"] == "api"
        assert rows[formula.id]["map_index"] == "-1"
        assert rows[formula.id]["required_approvals"] == "1"
        assert rows[formula.id]["title"] == "'=HYPERLINK(1)"
        assert rows[formula.id]["requested_by"] == "'-minus"
        assert rows[formula.id]["comment"] == "'@done"
        assert rows[impostor["id"]]["comment"] == "'+plus"

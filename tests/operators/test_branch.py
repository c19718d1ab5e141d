"""ApprovalBranchOperator and form inputs on both operators: parse-time errors, the branches followed,
and what Airflow's scheduler relies on to skip the branch not taken.
"""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk import DAG, Param

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator
from airflow_hitl.triggers.approval import SKIPMIXIN_KEY, ApprovalTrigger
from tests.helpers import migrated_sqlite_url
from tests.operators.test_approval import _run_dag, _ti_states, airflow_home, store

__all__ = ["airflow_home", "store"]  # fixtures shared with test_approval.py

START = dt.datetime(2026, 1, 1)


def _fields(err: pytest.ExceptionInfo[InvalidApprovalConfig]) -> list[str]:
    return [field for field, _ in err.value.problems]


class TestInputsAtParseTime:
    def test_form_is_kept_in_its_stored_form(self) -> None:
        op = ApprovalOperator(
            task_id="gate",
            title="t",
            inputs={"rollout_percent": Param(10, type="integer", minimum=1, maximum=100), "ticket": "CHG-0"},
        )
        assert op.inputs["rollout_percent"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
        assert op.inputs["ticket"] == {"value": "CHG-0", "schema": {}, "description": None, "required": False}

    def test_every_bad_input_is_named_with_dag_and_task(self) -> None:
        with DAG("inputs_dag", schedule=None, start_date=START), pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(
                task_id="gate",
                title="t",
                required_approvals=0,
                inputs={
                    "bad name": Param(1),
                    "pct": Param(0, type="integer", minimum=1),
                    "kind": Param(type="nonsense"),
                },
            )
        assert sorted(_fields(err)) == ["inputs['bad name']", "inputs['kind']", "inputs['pct']", "required_approvals"]
        message = str(err.value)
        assert "of task 'gate' in DAG 'inputs_dag'" in message
        assert "identifiers" in message and "does not satisfy the schema" in message

    def test_inputs_must_be_a_dict(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(task_id="gate", title="t", inputs=["ticket"])
        assert _fields(err) == ["inputs"]


class TestBranchesAtParseTime:
    @pytest.mark.parametrize(
        ("branches", "field"),
        [
            pytest.param("deploy", "branches", id="not-a-dict"),
            pytest.param({}, "branches", id="empty"),
            pytest.param({"approve": "a", "maybe": "b"}, "branches", id="unknown-outcome"),
            pytest.param({"approve": []}, "branches['approve']", id="empty-list"),
            pytest.param({"reject": [1]}, "branches['reject']", id="not-task-ids"),
            pytest.param({"approve": "a", "reject": ["a"]}, "branches", id="on-both"),
        ],
    )
    def test_field_is_named(self, branches: object, field: str) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalBranchOperator(task_id="gate", title="t", branches=branches)
        assert _fields(err) == [field]

    def test_branch_problems_join_the_other_options(self) -> None:
        with DAG("branch_dag", schedule=None, start_date=START), pytest.raises(InvalidApprovalConfig) as err:
            ApprovalBranchOperator(
                task_id="gate",
                title="",
                branches={"approve": []},
                on_reject="skip",
                inputs={"n": Param("x", type="integer")},
            )
        assert sorted(_fields(err)) == ["branches['approve']", "inputs['n']", "on_reject", "title"]
        assert "of task 'gate' in DAG 'branch_dag'" in str(err.value)

    def test_inputs_work_on_the_branch_gate(self) -> None:
        op = ApprovalBranchOperator(
            task_id="gate", title="t", branches={"approve": "a"}, inputs={"ticket": Param(type="string")}
        )
        assert op.inputs["ticket"]["required"] is True


class TestFollowedTasks:
    def test_each_outcome_follows_its_branch_and_the_joins_below_it(self) -> None:
        from airflow.providers.standard.operators.empty import EmptyOperator

        with DAG("follow_dag", schedule=None, start_date=START):
            gate = ApprovalBranchOperator(
                task_id="gate", title="t", branches={"approve": ["deploy", "announce"], "reject": "roll_back"}
            )
            deploy, announce, roll_back, join = (
                EmptyOperator(task_id=t) for t in ("deploy", "announce", "roll_back", "join")
            )
            gate >> [deploy, announce, roll_back, join]
            deploy >> join
        assert gate._followed_tasks() == {"approve": ["announce", "deploy", "join"], "reject": ["roll_back"]}

    def test_an_outcome_left_out_follows_nothing(self) -> None:
        from airflow.providers.standard.operators.empty import EmptyOperator

        with DAG("follow_none", schedule=None, start_date=START):
            gate = ApprovalBranchOperator(task_id="gate", title="t", branches={"approve": "deploy"})
            gate >> EmptyOperator(task_id="deploy")
        assert gate._followed_tasks() == {"approve": ["deploy"], "reject": []}

    def test_branch_not_directly_downstream_is_a_clear_error(self) -> None:
        from airflow.providers.standard.operators.empty import EmptyOperator

        with DAG("stray_dag", schedule=None, start_date=START):
            gate = ApprovalBranchOperator(task_id="gate", title="t", branches={"approve": "deploy", "reject": "later"})
            deploy = EmptyOperator(task_id="deploy")
            gate >> deploy >> EmptyOperator(task_id="later")
        with pytest.raises(InvalidApprovalConfig) as err:
            gate._followed_tasks()
        assert err.value.field == "branches"
        assert "['later'] are not direct downstream tasks" in str(err.value)
        assert "of task 'gate' in DAG 'stray_dag'" in str(err.value)

    def test_plain_gate_does_not_branch(self) -> None:
        assert ApprovalOperator(task_id="gate", title="t")._followed_tasks() is None


class TestAirflowSkipsTheOtherBranch:
    """What the scheduler-side skipping rests on; a future Airflow that changes it fails here."""

    def test_serialized_branch_gate_is_a_skipping_task(self) -> None:
        from airflow.serialization.serialized_objects import DagSerialization
        from airflow.ti_deps.deps.not_previously_skipped_dep import NotPreviouslySkippedDep

        with DAG("serialized_branch", schedule=None, start_date=START) as dag:
            ApprovalBranchOperator(task_id="gate", title="t", branches={"approve": "a"})
            ApprovalOperator(task_id="plain", title="t")
        loaded = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert loaded.get_task("gate").inherits_from_skipmixin is True
        assert loaded.get_task("plain").inherits_from_skipmixin is False
        # Every task the scheduler looks at asks its skipping parents' XCom before it runs.
        assert any(isinstance(d, NotPreviouslySkippedDep) for d in loaded.get_task("plain").deps)

    def test_scheduler_reads_our_xcom_key_and_shape(self) -> None:
        from airflow.ti_deps.deps import not_previously_skipped_dep as dep

        assert SKIPMIXIN_KEY == dep.XCOM_SKIPMIXIN_KEY
        assert dep.XCOM_SKIPMIXIN_FOLLOWED == "followed"

    def test_trigger_keeps_the_branches_across_serialization(self) -> None:
        trigger = ApprovalTrigger(request_id="r", end_task=True, follow={"approve": ["a"], "reject": []})
        _classpath, kwargs = trigger.serialize()
        assert kwargs["follow"] == {"approve": ["a"], "reject": []}
        assert ApprovalTrigger(**kwargs).follow == {"approve": ["a"], "reject": []}
        assert "follow" not in ApprovalTrigger(request_id="r").serialize()[1]


class TestEndEvent:
    """What the trigger hands Airflow for a branch gate: success either way, the followed tasks as XCom."""

    @pytest.fixture
    def manager(self, tmp_path) -> ApprovalManager:
        return ApprovalManager(store=ApprovalStore(url=migrated_sqlite_url(tmp_path / "end_events.db")))

    @pytest.mark.parametrize(
        ("action", "followed"), [("approve", ["deploy", "join"]), ("reject", ["roll_back"])], ids=str
    )
    def test_each_outcome_succeeds_following_its_branch(
        self, manager: ApprovalManager, action: str, followed: list[str]
    ) -> None:
        from airflow.triggers.base import TaskSuccessEvent

        from airflow_hitl.manager import ApprovalSpec, Decision
        from airflow_hitl.policy import Principal
        from airflow_hitl.triggers.approval import end_event

        gate = manager.create(ApprovalSpec(dag_id="d", title="t", run_id="r", task_id="gate", try_number=1))
        decided = manager.decide(
            gate.id, Decision(action=action, user=Principal.of("alice"), source="api", reason="no")
        )
        event = end_event(decided, {"approve": ["deploy", "join"], "reject": ["roll_back"]})
        assert isinstance(event, TaskSuccessEvent)
        assert event.xcoms is not None
        assert event.xcoms[SKIPMIXIN_KEY] == {"followed": followed}
        assert event.xcoms["return_value"]["state"] == decided.state

    def test_cancelled_branch_gate_fails_and_follows_nothing(self, manager: ApprovalManager) -> None:
        from airflow.triggers.base import TaskFailedEvent

        from airflow_hitl.manager import ApprovalSpec
        from airflow_hitl.triggers.approval import end_event

        gate = manager.create(ApprovalSpec(dag_id="d", title="t", run_id="r", task_id="gate", try_number=1))
        cancelled = manager.cancel(gate.id, actor="admin", reason="withdrawn")
        event = end_event(cancelled, {"approve": ["deploy"], "reject": ["roll_back"]})
        assert isinstance(event, TaskFailedEvent)
        assert SKIPMIXIN_KEY not in (event.xcoms or {})


@pytest.mark.slow
class TestBranchRuns:
    """The worker path (`airflow dags test` resumes the task on a worker): the same XCom, the same skip."""

    def test_automatic_approval_follows_approve(self, airflow_home: dict[str, str], store: ApprovalStore) -> None:
        result = _run_dag(airflow_home, "op_branch_auto")
        assert ApprovalManager(store=store).queries.get(result["request_id"]).state == "approved"
        assert _ti_states(airflow_home, "op_branch_auto") == {
            "gate": "success",
            "ship": "success",
            "roll_back": "skipped",
        }

    def test_timeout_rejection_follows_reject(self, airflow_home: dict[str, str], store: ApprovalStore) -> None:
        result = _run_dag(airflow_home, "op_branch_timeout")
        approval = ApprovalManager(store=store).queries.get(result["request_id"])
        assert (approval.state, approval.decision) == ("timeout", "rejected")
        assert _ti_states(airflow_home, "op_branch_timeout") == {
            "gate": "success",
            "ship": "skipped",
            "roll_back": "success",
        }

"""Airflow notifiers on a gate (``notifiers=[...]``) and the ``teams_conn_id`` option.

Parse time: only ``BaseNotifier`` instances are taken, on every kind of gate, and a wrong one is
named with its position. When the request opens: each notifier is called with the task's context
and the request, a failing one is logged naming the gate and the notifier and stops nothing, and
a notifier that hangs does not keep the gate from deferring. The notifiers are real
``BaseNotifier`` subclasses (Jinja rendering of their template fields included) and the request
is a real one of a SQLite store; the end-to-end run with Airflow's own ``SlackNotifier`` is in
``tests/e2e/test_taskflow_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from airflow.sdk import DAG, BaseNotifier

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.manager import ApprovalManager, ApprovalSpec
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator
from airflow_hitl.operators.options import parse_notifiers, parse_notify
from airflow_hitl.policy import ConfigProblems
from airflow_hitl.records import Approval
from tests.helpers import migrated_sqlite_url, parse_in_child

START = dt.datetime(2026, 1, 1)


class Recording(BaseNotifier):
    """Keeps the context it was called with and its ``text`` as rendered against it."""

    template_fields = ("text",)

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.text = text
        self.calls: list[dict[str, Any]] = []

    def notify(self, context: Any) -> None:
        self.calls.append({"context": dict(context), "text": self.text})


class Broken(BaseNotifier):
    """A notifier whose service is down."""

    def notify(self, context: Any) -> None:
        raise ConnectionError("chat service unreachable")


class Hanging(BaseNotifier):
    """Blocks until the test lets it go, as a notifier stuck on a network call would."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def notify(self, context: Any) -> None:
        self.entered.set()
        self.release.wait(60)


def _fields(err: pytest.ExceptionInfo[InvalidApprovalConfig]) -> list[str]:
    return [field for field, _ in err.value.problems]


class TestParseTime:
    def test_one_notifier_or_a_list_is_kept_as_a_list(self) -> None:
        one, two = Recording(), Broken()
        assert parse_notifiers(one) == [one]
        assert parse_notifiers([one, two]) == [one, two]
        assert parse_notifiers((two,)) == [two]
        assert parse_notifiers(None) == []
        assert ApprovalOperator(task_id="gate", title="t", notifiers=one).notifiers == [one]
        assert ApprovalOperator(task_id="gate", title="t").notifiers == []

    @pytest.mark.parametrize(
        ("value", "fields", "says"),
        [
            pytest.param([print], ["notifiers[0]"], "got builtin_function_or_method", id="a-callable"),
            pytest.param([Recording(), Recording], ["notifiers[1]"], "pass an instance, Recording(...)", id="a-class"),
            pytest.param([1, "slack"], ["notifiers[0]", "notifiers[1]"], "got int", id="two-wrong"),
            pytest.param("slack", ["notifiers"], "got str", id="a-string"),
            pytest.param({"slack": Recording()}, ["notifiers"], "got dict", id="a-dict"),
        ],
    )
    def test_anything_but_a_base_notifier_is_named(self, value: Any, fields: list[str], says: str) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_notifiers(value)
        assert _fields(err) == fields
        assert says in str(err.value)

    def test_every_gate_names_the_field_with_its_dag_and_task(self) -> None:
        with DAG("notified", schedule=None, start_date=START), pytest.raises(InvalidApprovalConfig) as err:
            ApprovalBranchOperator(
                task_id="route", title="t", branches={"approve": "ship"}, notifiers=[Recording(), object()]
            )
        assert _fields(err) == ["notifiers[1]"]
        assert "of task 'route' in DAG 'notified'" in str(err.value)
        assert "airflow.sdk.BaseNotifier" in str(err.value)

    def test_a_wrong_notifier_is_the_dag_files_import_error(self, tmp_path: Path) -> None:
        bag = parse_in_child(
            tmp_path,
            {
                "notified.py": (
                    "import datetime as dt\n"
                    "from airflow.sdk import DAG\n"
                    "from airflow_hitl.operators.approval import ApprovalOperator\n"
                    "with DAG('notified', schedule=None, start_date=dt.datetime(2026, 1, 1)):\n"
                    "    ApprovalOperator(task_id='gate', title='t', notifiers=[lambda context: None])\n"
                )
            },
        )
        assert "notified" not in bag["dags"]
        [error] = bag["import_errors"].values()
        assert "invalid `notifiers[0]` of task 'gate' in DAG 'notified'" in error
        assert "got function" in error


class TestTeamsConnection:
    def _notify(self, **overrides: Any) -> tuple[dict[str, Any], ConfigProblems]:
        problems = ConfigProblems()
        options: dict[str, Any] = {
            "channels": ["teams"],
            "users": None,
            "roles": None,
            "slack_channel": None,
            "slack_conn_id": None,
            "smtp_conn_id": None,
            "webhook_conn_id": None,
            "webhook_endpoint": None,
            "remind_every": None,
            "templates": None,
        }
        options.update(overrides)
        return parse_notify(**options, problems=problems), problems

    def test_it_is_kept_in_the_requests_notify_options(self) -> None:
        notify, problems = self._notify(teams_conn_id="teams_ops")
        assert not problems
        assert notify == {"channels": ["teams"], "teams_conn_id": "teams_ops"}
        # Left out, the teams helper falls back to its default connection.
        assert "teams_conn_id" not in self._notify()[0]

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            pytest.param({"channels": ["email"], "teams_conn_id": "teams_ops"}, "notify_channels includes 'teams'"),
            pytest.param({"teams_conn_id": " "}, "must be a non-empty string"),
            pytest.param({"teams_conn_id": 7}, "must be a non-empty string"),
        ],
    )
    def test_a_wrong_one_is_named(self, overrides: dict[str, Any], message: str) -> None:
        _, problems = self._notify(**overrides)
        assert [field for field, _ in problems.items] == ["teams_conn_id"]
        assert message in problems.items[0][1]

    def test_the_operator_takes_it(self) -> None:
        gate = ApprovalOperator(task_id="gate", title="t", notify_channels=["teams"], teams_conn_id="teams_ops")
        assert gate.notify["teams_conn_id"] == "teams_ops"
        assert gate._spec(dag_id="d").notify["teams_conn_id"] == "teams_ops"
        with pytest.raises(InvalidApprovalConfig) as err:
            ApprovalOperator(task_id="gate", title="t", notify_channels=["slack"], teams_conn_id="teams_ops")
        assert _fields(err) == ["teams_conn_id"]


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Approval]:
    """A request opened in a SQLite store, as the gate has it when its notifiers are called."""
    store = ApprovalStore(url=migrated_sqlite_url(tmp_path / "hitl.db"))
    manager = ApprovalManager(store=store)
    yield manager.create(
        ApprovalSpec(dag_id="release", run_id="manual__1", task_id="approve", try_number=1, title="Release 2.1.0")
    )
    store.dispose()


def _gate(*notifiers: BaseNotifier, budget: float | None = None) -> ApprovalOperator:
    with DAG("release", schedule=None, start_date=START):
        gate = ApprovalOperator(task_id="approve", title="Release 2.1.0", notifiers=list(notifiers))
    if budget is not None:
        gate.notifier_budget = budget
    return gate


class TestWhenTheRequestOpens:
    def test_each_notifier_gets_the_context_and_the_request(self, opened: Approval) -> None:
        first, second = Recording("Approve {{ approval.title }} ({{ approval.id }}) for {{ run_id }}"), Recording()
        gate = _gate(first, second)
        gate._call_notifiers({"run_id": "manual__1", "task": gate}, opened)  # type: ignore[typeddict-item]
        [call] = first.calls
        assert call["text"] == f"Approve Release 2.1.0 ({opened.id}) for manual__1"
        assert call["context"]["approval"]["state"] == "pending"
        assert call["context"]["task"] is gate
        assert len(second.calls) == 1

    def test_a_failing_notifier_is_logged_and_the_next_one_still_runs(self, opened: Approval) -> None:
        after = Recording()
        gate = _gate(Broken(), after)
        with structlog.testing.capture_logs() as logs:
            gate._call_notifiers({}, opened)  # type: ignore[typeddict-item]
        assert len(after.calls) == 1
        failures = [entry for entry in logs if entry["log_level"] == "error" and "failed" in entry["event"]]
        assert len(failures) == 1
        assert "gate 'approve' of DAG 'release'" in failures[0]["event"]
        assert "notifiers[0] (Broken) failed" in failures[0]["event"]
        assert opened.id in failures[0]["event"]

    def test_a_hanging_notifier_does_not_hold_the_gate(self, opened: Approval) -> None:
        stuck, after = Hanging(), Recording()
        gate = _gate(stuck, after, budget=0.2)
        try:
            with structlog.testing.capture_logs() as logs:
                gate._call_notifiers({}, opened)  # type: ignore[typeddict-item]
            # Back while the notifier is still blocked: it cannot return before the test lets it.
            assert stuck.entered.is_set() and not stuck.release.is_set()
            assert after.calls == []
            [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
            assert "notifiers[0] (Hanging) still running" in warning["event"]
            assert "the gate waits without it" in warning["event"]
        finally:
            stuck.release.set()
        # Let go, the rest of the list still runs on the notifiers' own thread.
        [thread] = [t for t in threading.enumerate() if t.name == f"hitl-notifiers-{opened.id}"]
        thread.join(30)
        assert len(after.calls) == 1

    def test_a_gate_without_notifiers_starts_no_thread(self, opened: Approval) -> None:
        _gate()._call_notifiers({}, opened)  # type: ignore[typeddict-item]
        assert not [t for t in threading.enumerate() if t.name == f"hitl-notifiers-{opened.id}"]

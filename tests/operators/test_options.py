"""operators/options.py: each gate option's parser, and the error that points at the DAG file's line.

The operator's own tests (test_approval.py) check that a constructor reports every problem;
these check each parser on its own: the stored form it returns, and the field it names.
"""

from __future__ import annotations

import datetime as dt
import traceback
from pathlib import Path
from typing import Any

import pytest

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.operators.options import (
    dag_file_frame,
    option_of,
    parse_branches,
    parse_context_from,
    parse_escalation,
    parse_notify,
    raise_at,
)
from airflow_hitl.policy import ConfigProblems, EscalationLevel
from airflow_hitl.vocabulary import CHANNELS


class TestOptionOf:
    @pytest.mark.parametrize(
        ("field", "option"),
        [
            ("escalate_to[0].timeout", "escalate_to"),
            ("context_from['m']", "context_from"),
            ("notify.users", "notify"),
            ("title", "title"),
        ],
    )
    def test_a_reported_field_maps_to_its_argument(self, field: str, option: str) -> None:
        assert option_of(field) == option


class TestContextFrom:
    def test_task_ids_and_pairs_become_xcom_sources(self) -> None:
        assert parse_context_from({"metrics": "evaluate", "loss": ("train", "loss"), "x": ["t", "k"]}) == {
            "metrics": ("evaluate", "return_value"),
            "loss": ("train", "loss"),
            "x": ("t", "k"),
        }
        assert parse_context_from(["a", "b"]) == {"a": ("a", "return_value"), "b": ("b", "return_value")}
        assert parse_context_from(None) == {}

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ("evaluate", "context_from"),
            ({"": "t"}, "context_from"),
            ({1: "t"}, "context_from"),
            ({"m": 3}, "context_from['m']"),
            ({"m": ("t",)}, "context_from['m']"),
            ({"m": ("t", "")}, "context_from['m']"),
            (["a", ""], "context_from"),
            (42, "context_from"),
        ],
    )
    def test_a_wrong_source_names_its_field(self, value: Any, field: str) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_context_from(value)
        assert err.value.field == field


class TestEscalation:
    def test_user_names_are_one_level_with_the_gates_timeout(self) -> None:
        [level] = parse_escalation(["lead", "cto"], dt.timedelta(hours=1))
        assert level.approvers == ("lead", "cto")
        assert level.timeout == dt.timedelta(hours=1)
        [single] = parse_escalation("lead", dt.timedelta(minutes=5))
        assert single.approvers == ("lead",)

    def test_levels_are_parsed_in_order(self) -> None:
        given = EscalationLevel(roles=("admin",), timeout=dt.timedelta(hours=2), required_approvals=1)
        levels = parse_escalation([{"approvers": ["lead"], "timeout": dt.timedelta(hours=1)}, given], None)
        assert [lvl.approvers for lvl in levels] == [("lead",), ()]
        assert levels[1] == given
        assert parse_escalation(None, None) == []

    def test_user_names_without_a_timeout_are_refused(self) -> None:
        with pytest.raises(InvalidApprovalConfig, match="needs `timeout`") as err:
            parse_escalation(["lead"], None)
        assert err.value.field == "escalate_to"

    def test_every_bad_level_is_named_at_once(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_escalation([{"approvers": ["b"]}, {"roles": 3, "timeout": dt.timedelta(hours=1)}], None)
        assert [field for field, _ in err.value.problems] == ["escalate_to[0].timeout", "escalate_to[1].roles"]

    @pytest.mark.parametrize("value", [[], 7])
    def test_empty_or_not_a_list_is_refused(self, value: Any) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_escalation(value, dt.timedelta(hours=1))
        assert err.value.field == "escalate_to"


def _notify(**given: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    options: dict[str, Any] = {
        "channels": None,
        "users": None,
        "roles": None,
        "slack_channel": None,
        "slack_conn_id": None,
        "smtp_conn_id": None,
        "webhook_conn_id": None,
        "webhook_endpoint": None,
        "remind_every": None,
        "templates": None,
        **given,
    }
    problems = ConfigProblems()
    return parse_notify(problems=problems, **options), problems.items


class TestNotify:
    def test_no_channel_tells_no_one(self) -> None:
        assert _notify() == ({}, [])

    def test_the_stored_form_of_every_option(self) -> None:
        notify, problems = _notify(
            channels=["email", "slack", "email", "webhook"],
            users=["alice"],
            roles="ReleaseManagers",
            slack_channel="#releases",
            smtp_conn_id="smtp_ops",
            webhook_conn_id="hooks",
            webhook_endpoint="/gate",
            remind_every=dt.timedelta(minutes=30),
            templates={"required": {"subject": "Approve {{ title }}"}},
        )
        assert problems == []
        assert notify == {
            "channels": ["email", "slack", "webhook"],
            "users": ["alice"],
            "roles": ["ReleaseManagers"],
            "slack_channel": "#releases",
            "smtp_conn_id": "smtp_ops",
            "webhook_conn_id": "hooks",
            "webhook_endpoint": "/gate",
            "remind_every_seconds": 1800.0,
            "templates": {"required": {"subject": "Approve {{ title }}"}},
        }

    def test_every_channel_of_the_vocabulary_is_accepted(self) -> None:
        notify, problems = _notify(channels=list(CHANNELS))
        assert problems == [] and notify["channels"] == list(CHANNELS)

    def test_problems_are_named_in_the_order_of_the_arguments(self) -> None:
        notify, problems = _notify(
            channels=["email", "pager"],
            users=[3],
            slack_channel="#x",
            webhook_endpoint="  ",
            remind_every=dt.timedelta(0),
            templates={"nope": {"subject": "x"}},
        )
        assert [field for field, _ in problems] == [
            "notify_channels",
            "notify_users",
            "slack_channel",
            "webhook_endpoint",
            "remind_every",
            "notify_templates",
        ]
        assert "unknown channel 'pager'" in problems[0][1]
        assert "notify_channels includes 'slack'" in problems[2][1]
        assert notify["channels"] == ["email"]

    @pytest.mark.parametrize(
        ("given", "field", "message"),
        [
            ({"channels": "email"}, "notify_channels", "must be a list"),
            ({"channels": [{"slack": True}]}, "notify_channels", "unknown channel {'slack': True}"),
            ({"channels": [["email"]]}, "notify_channels", "unknown channel ['email']"),
            ({"users": ["alice"]}, "notify_channels", "is required when notify_users"),
            ({"remind_every": dt.timedelta(hours=1)}, "remind_every", "needs notify_channels"),
            ({"remind_every": 60}, "remind_every", "positive datetime.timedelta"),
            ({"templates": {"required": {"subject": "x"}}}, "notify_templates", "needs notify_channels"),
            ({"channels": ["email"], "templates": {"required": {"subject": "{{ x"}}}, "notify_templates", "Jinja2"),
        ],
    )
    def test_one_wrong_option(self, given: dict[str, Any], field: str, message: str) -> None:
        _, problems = _notify(**given)
        assert len(problems) == 1
        assert problems[0][0] == field and message in problems[0][1]


class TestBranches:
    def test_task_ids_per_outcome_each_once(self) -> None:
        assert parse_branches({"approve": "deploy", "reject": ["rollback", "alert", "rollback"]}) == {
            "approve": ["deploy"],
            "reject": ["rollback", "alert"],
        }

    def test_every_problem_in_one_error(self) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_branches({"maybe": "x", "approve": [], "reject": {"a": 1}})
        assert [field for field, _ in err.value.problems] == ["branches", "branches['approve']", "branches['reject']"]

    def test_a_task_on_both_branches_is_refused(self) -> None:
        with pytest.raises(InvalidApprovalConfig, match=r"\['notify'\] are on both branches"):
            parse_branches({"approve": ["deploy", "notify"], "reject": "notify"})

    @pytest.mark.parametrize("value", [None, {}, "deploy", ["deploy"]])
    def test_not_a_dict(self, value: Any) -> None:
        with pytest.raises(InvalidApprovalConfig) as err:
            parse_branches(value)
        assert err.value.field == "branches"


def _gate_line_in_a_dag_file(tmp_path: Path) -> InvalidApprovalConfig:
    """Run code from a file outside the package that raises through dag_file_frame/raise_at."""
    dag_file = tmp_path / "my_dag.py"
    dag_file.write_text(
        "from airflow_hitl.exceptions import InvalidApprovalConfig\n"
        "from airflow_hitl.operators.options import dag_file_frame, raise_at\n"
        "def build():\n"
        "    raise_at(InvalidApprovalConfig('title', 'is required'), dag_file_frame())  # line 4\n"
        "build()\n"
    )
    code = compile(dag_file.read_text(), str(dag_file), "exec")
    with pytest.raises(InvalidApprovalConfig) as err:
        exec(code, {"__name__": "my_dag"})
    return err.value


class TestRaiseAt:
    def test_the_innermost_traceback_entry_is_the_dag_files_line(self, tmp_path: Path) -> None:
        error = _gate_line_in_a_dag_file(tmp_path)
        innermost = traceback.extract_tb(error.__traceback__)[-1]
        assert innermost.filename == str(tmp_path / "my_dag.py")
        assert innermost.lineno == 4

    def test_without_a_frame_the_error_is_raised_as_is(self) -> None:
        error = InvalidApprovalConfig("title", "is required")
        with pytest.raises(InvalidApprovalConfig) as err:
            raise_at(error, None)
        assert err.value is error

    def test_frames_of_the_package_airflow_and_the_stdlib_are_skipped(self) -> None:
        # Called from this test file (outside the package), the caller's frame is this one.
        frame = dag_file_frame()
        assert frame is not None
        assert frame.f_code.co_filename == __file__

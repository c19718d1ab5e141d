"""The gate's options checked when the DAG is parsed, and the error that points at the DAG file.

Each parser turns one option of :class:`~airflow_hitl.operators.approval.ApprovalOperator`
(or of its branch gate) into its stored form, or names the field that is wrong, so one parse of
a DAG file reports every mistake at once (:class:`~airflow_hitl.policy.ConfigProblems`).
:func:`raise_at` raises the collected error with the author's own line as its innermost
traceback entry.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import sysconfig
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import airflow as airflow_package
from airflow.sdk import BaseNotifier

import airflow_hitl as airflow_hitl_package
from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.policy import ConfigProblems, EscalationLevel, str_list
from airflow_hitl.vocabulary import CHANNELS, FINAL_ACTIONS, Action, Channel

if TYPE_CHECKING:
    from types import FrameType

#: Where a context value comes from: a task id (its return value) or ``(task_id, xcom_key)``.
ContextSource = str | tuple[str, str]


def option_of(name: str) -> str:
    """The operator argument a reported field belongs to: ``escalate_to[0].timeout`` -> ``escalate_to``."""
    return name.split("[", 1)[0].split(".", 1)[0]


_LIBRARY_DIRS = tuple(
    str(Path(path).resolve()) + os.sep
    for path in (
        Path(airflow_hitl_package.__file__).parent,
        Path(airflow_package.__file__).parent,
        sysconfig.get_paths()["stdlib"],
    )
)


def dag_file_frame() -> FrameType | None:
    """The innermost frame outside airflow-hitl, Airflow and the standard library: the DAG file's line."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith("<") and not str(Path(filename).resolve()).startswith(_LIBRARY_DIRS):
            return frame
        frame = frame.f_back
    return None


def raise_at(error: InvalidApprovalConfig, frame: FrameType | None) -> NoReturn:
    """Raise ``error`` with the DAG file's line as its innermost traceback entry.

    Airflow keeps only the innermost entries of an import error's traceback
    (``[core] dagbag_import_error_traceback_depth``, 2 by default), which would all be ours;
    a traceback entry for the author's own line (as Jinja2 does for template lines) makes the
    import error point at the line to fix.
    """
    if frame is None:
        raise error
    raise error.with_traceback(types.TracebackType(None, frame, frame.f_lasti, frame.f_lineno))


def parse_context_from(value: Any) -> dict[str, tuple[str, str]]:
    """``context_from`` as context name -> ``(task_id, xcom_key)``; a bare task id means its return value."""
    if value is None:
        return {}
    if isinstance(value, str):
        raise InvalidApprovalConfig("context_from", "must be a dict or a list of task ids, not a string")
    if isinstance(value, Mapping):
        parsed: dict[str, tuple[str, str]] = {}
        for name, source in value.items():
            if not isinstance(name, str) or not name:
                raise InvalidApprovalConfig("context_from", "keys must be non-empty strings")
            if isinstance(source, str) and source:
                parsed[name] = (source, "return_value")
            elif (
                isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(s, str) and s for s in source)
            ):
                parsed[name] = (source[0], source[1])
            else:
                raise InvalidApprovalConfig(
                    f"context_from[{name!r}]", "must be a task id or a (task_id, xcom_key) pair"
                )
        return parsed
    if isinstance(value, Sequence) and all(isinstance(v, str) and v for v in value):
        return {task_id: (task_id, "return_value") for task_id in value}
    raise InvalidApprovalConfig("context_from", "must be a dict or a list of task ids")


def parse_escalation(value: Any, timeout: dt.timedelta | None) -> list[EscalationLevel]:
    """``escalate_to`` as levels; a list of user names is one level that gets ``timeout`` again."""
    if value is None:
        return []
    if isinstance(value, (EscalationLevel, Mapping)):
        value = [value]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise InvalidApprovalConfig("escalate_to", "must be a non-empty list of levels or user names")
    if all(isinstance(v, str) for v in value):
        if not isinstance(timeout, dt.timedelta):
            raise InvalidApprovalConfig("escalate_to", "a list of user names needs `timeout` for the level")
        return [EscalationLevel.parse({"approvers": list(value), "timeout": timeout})]
    problems = ConfigProblems()
    levels = [problems.parse(EscalationLevel.parse, v, index=i, default=None) for i, v in enumerate(value)]
    problems.raise_if_any()
    return [level for level in levels if level is not None]


#: The channels a gate may notify on (every channel of the vocabulary).
NOTIFY_CHANNELS = CHANNELS


def _optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidApprovalConfig(name, "must be a non-empty string")
    return value


def parse_notify(
    *,
    channels: Any,
    users: Any,
    roles: Any,
    slack_channel: Any,
    slack_conn_id: Any,
    smtp_conn_id: Any,
    webhook_conn_id: Any,
    webhook_endpoint: Any,
    remind_every: Any,
    templates: Any,
    problems: ConfigProblems,
    teams_conn_id: Any = None,
) -> dict[str, Any]:
    """The request's ``notify`` options, checked now so a wrong one fails the DAG import naming it.

    Problems are added to ``problems`` in the order of the arguments; the result is empty
    when no channel is chosen (the gate tells no one).
    """
    chosen = _notify_channels(channels, problems)
    notify: dict[str, Any] = {"channels": chosen}
    user_list = problems.parse(str_list, users, "notify_users", default=[])
    role_list = problems.parse(str_list, roles, "notify_roles", default=[])
    if user_list:
        notify["users"] = user_list
    if role_list:
        notify["roles"] = role_list
    per_channel = {
        "slack_channel": (Channel.SLACK, slack_channel),
        "slack_conn_id": (Channel.SLACK, slack_conn_id),
        "smtp_conn_id": (Channel.EMAIL, smtp_conn_id),
        "webhook_conn_id": (Channel.WEBHOOK, webhook_conn_id),
        "webhook_endpoint": (Channel.WEBHOOK, webhook_endpoint),
        "teams_conn_id": (Channel.TEAMS, teams_conn_id),
    }
    for name, (channel, value) in per_channel.items():
        if problems.parse(_optional_str, name, value, default=None) is None:
            continue
        if channel not in chosen:
            problems.add(name, f"is only used when notify_channels includes {channel!r}")
        notify[name] = value
    if (user_list or role_list) and not chosen:
        problems.add("notify_channels", "is required when notify_users or notify_roles is given")
    every = _remind_every_seconds(remind_every, chosen, problems)
    if every is not None:
        notify["remind_every_seconds"] = every
    overrides = _template_overrides(templates, chosen, problems)
    if overrides is not None:
        notify["templates"] = overrides
    return notify if chosen else {}


def _notify_channels(value: Any, problems: ConfigProblems) -> list[str]:
    """The known channels of ``notify_channels``, each once, in the given order."""
    if value is None:
        value = []
    if isinstance(value, str) or not isinstance(value, Sequence):
        problems.add("notify_channels", f"must be a list of channels from {list(NOTIFY_CHANNELS)}")
        value = []
    for channel in value:
        if channel not in NOTIFY_CHANNELS:
            problems.add("notify_channels", f"unknown channel {channel!r}; use {list(NOTIFY_CHANNELS)}")
    # Known ones only: an unknown one (a dict, say) is a problem above, and may not be hashable.
    return list(dict.fromkeys(channel for channel in value if isinstance(channel, str) and channel in NOTIFY_CHANNELS))


def _remind_every_seconds(value: Any, channels: Sequence[str], problems: ConfigProblems) -> float | None:
    """``remind_every`` in seconds; None when not given or wrong (the problem is added)."""
    if value is None:
        return None
    if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
        problems.add("remind_every", "must be a positive datetime.timedelta")
    elif not channels:
        problems.add("remind_every", "needs notify_channels to remind anyone")
    else:
        return value.total_seconds()
    return None


def _template_overrides(value: Any, channels: Sequence[str], problems: ConfigProblems) -> dict[str, Any] | None:
    """``notify_templates`` as event -> parts; None when not given or wrong (the problem is added)."""
    # Imported when a gate is built, not with this module: importing the operator does not
    # load the notifications package.
    from airflow_hitl.notifications.templates import validate_overrides

    problem = validate_overrides(value)
    if problem:
        problems.add("notify_templates", problem)
    elif value:
        if not channels:
            problems.add("notify_templates", "needs notify_channels")
        else:
            return {event: dict(parts) for event, parts in value.items()}
    return None


def parse_notifiers(value: Any) -> list[BaseNotifier]:
    """``notifiers`` as a list of Airflow notifiers; one notifier is a one-item list.

    Each must be an instance of Airflow's ``BaseNotifier`` (``airflow.sdk.BaseNotifier``), as
    Airflow's own HITL operators take them; a class, a callable or anything else is named here,
    with its position, so the DAG's import error says which one.
    """
    if value is None:
        return []
    if isinstance(value, BaseNotifier):
        return [value]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidApprovalConfig(
            "notifiers", f"must be a list of Airflow notifiers (airflow.sdk.BaseNotifier), got {type(value).__name__}"
        )
    problems = ConfigProblems()
    for index, notifier in enumerate(value):
        if isinstance(notifier, BaseNotifier):
            continue
        if isinstance(notifier, type) and issubclass(notifier, BaseNotifier):
            problems.add(
                f"notifiers[{index}]", f"is the class {notifier.__name__}: pass an instance, {notifier.__name__}(...)"
            )
        else:
            problems.add(
                f"notifiers[{index}]",
                f"must be an Airflow notifier (airflow.sdk.BaseNotifier), got {type(notifier).__name__}",
            )
    problems.raise_if_any()
    return list(value)


def parse_distinct_from(value: Any, task_id: str) -> list[str]:
    """``distinct_from`` as the task ids of other gates, each once; one id is a one-item list.

    Whether each names an approval gate of the same DAG is known only once the DAG is complete:
    :func:`distinct_from_problems` answers that.
    """
    names = str_list(value, "distinct_from")
    if task_id in names:
        raise InvalidApprovalConfig("distinct_from", f"names the gate itself ({task_id!r})")
    return list(dict.fromkeys(names))


def distinct_from_problems(names: Sequence[str], tasks: Mapping[str, Any], *, is_gate: Any) -> list[str]:
    """What is wrong with each of ``names`` in a complete DAG whose tasks are ``tasks`` (task id -> task).

    Each must be a task of the DAG for which ``is_gate`` (the gate classes' own test, mapped
    gates included) is true.
    """
    problems: list[str] = []
    for name in names:
        task = tasks.get(name)
        if task is None:
            problems.append(f"{name!r} is no task of this DAG")
        elif not is_gate(task):
            problems.append(f"{name!r} is a {type(task).__name__}, not an approval gate")
    return problems


#: The outcomes a branch gate has a branch for: how its request was decided.
BRANCH_OUTCOMES = FINAL_ACTIONS


def parse_branches(value: Any) -> dict[str, list[str]]:
    """``branches`` as outcome -> task ids; every problem named in one error."""
    if not isinstance(value, Mapping) or not value:
        raise InvalidApprovalConfig("branches", 'must be a dict like {"approve": "deploy", "reject": "rollback"}')
    problems = ConfigProblems()
    parsed: dict[str, list[str]] = {}
    for outcome, targets in value.items():
        if outcome not in BRANCH_OUTCOMES:
            problems.add("branches", f"unknown outcome {outcome!r}; use {list(BRANCH_OUTCOMES)}")
            continue
        ids = [targets] if isinstance(targets, str) else targets
        if (
            isinstance(ids, (str, Mapping))
            or not isinstance(ids, Sequence)
            or not ids
            or not all(isinstance(t, str) and t for t in ids)
        ):
            problems.add(f"branches[{outcome!r}]", "must be a task id or a non-empty list of task ids")
            continue
        parsed[outcome] = list(dict.fromkeys(ids))
    both = set(parsed.get(Action.APPROVE, ())) & set(parsed.get(Action.REJECT, ()))
    if both:
        problems.add("branches", f"tasks {sorted(both)} are on both branches")
    problems.raise_if_any()
    return parsed

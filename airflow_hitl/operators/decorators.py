"""TaskFlow gates: ``@task.approval`` and ``@task.approval_branch``.

The decorated function runs on a worker with its upstream XComs (ordinary TaskFlow arguments)
and returns the request's content, a dict with any of ``title``, ``description``, ``reason``,
``context`` and ``metadata``; then the task is an :class:`~airflow_hitl.operators.approval.ApprovalOperator`
(or :class:`~airflow_hitl.operators.approval.ApprovalBranchOperator`) with the decorator's
options: it waits in the triggerer, quorum, escalation, notices and branches work as they do
there, and its return value (XCom) is the decision. Mapped gates (``.expand``) work too.

The rules of the content, in one place:

- each of ``title``, ``description`` and ``reason`` the function returns replaces the decorator's;
- ``context`` and ``metadata`` are merged over the decorator's (the function's keys win), and
  ``context_from`` is added on top, as on the operator;
- ``title`` may be left out of the decorator only when the function returns one: a gate with
  neither fails when it runs, naming ``title``, before any request is opened;
- what the function returns is taken as it is, never rendered as a template (data from
  upstream tasks must not become Jinja); the decorator's own options are templated as usual;
- a return value that is not a dict, a key that is not one of the five, or a value the
  operator would refuse fails the task at once (no retry: the same function returns the
  same thing), with a message naming the key, the task and the DAG.

The decorator's options are checked when it is applied, as the operator checks them when it
is built; the error names the task, every wrong option and the DAG file's line. A call of the
decorated function in a DAG builds the operator, which checks them again naming the DAG too.

Example::

    from airflow.sdk import task


    @task.approval(allowed_roles=["ml-leads"], timeout=timedelta(hours=4))
    def approve_release(metrics: dict) -> dict:
        return {
            "title": f"Release model at {metrics['accuracy']:.1%} accuracy",
            "context": {"metrics": metrics},
        }


    decision = approve_release(evaluate())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import DAG
from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.operators.approval import ApprovalBranchOperator, ApprovalOperator
from airflow_hitl.operators.options import dag_file_frame, raise_at
from airflow_hitl.policy import ConfigProblems
from airflow_hitl.seam.dags import dag_being_defined
from airflow_hitl.version_compat import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

#: What a gate's function may return: the request's content.
CONTENT_FIELDS = ("title", "description", "reason", "context", "metadata")
#: The fields the function's value replaces; the others are merged over the decorator's.
_REPLACED = ("title", "description", "reason")
#: Stands in for a title the function will return, so the other options can be checked at parse time.
_TITLE_FROM_FUNCTION = "(title returned by the gate's function)"
#: The DAG no task is ever added to but the one that checks a decorator's options.
_CHECK_DAG_ID = "airflow_hitl_option_check"


def content_of(returned: Any) -> dict[str, Any]:
    """The request content a gate's function returned, its shape checked; raise naming every wrong key.

    Only the shape: whether the store can keep each value (lengths, characters, JSON) is the
    operator's own check, once the content is merged with the decorator's.
    """
    if not isinstance(returned, Mapping):
        raise InvalidApprovalConfig(
            "return value", f"must be a dict with any of {list(CONTENT_FIELDS)}, got {type(returned).__name__}"
        )
    problems = ConfigProblems()
    for key, value in returned.items():
        if key not in CONTENT_FIELDS:
            problems.add(str(key), f"is not part of a request's content; return any of {list(CONTENT_FIELDS)}")
        elif key == "title" and (not isinstance(value, str) or not value.strip()):
            problems.add(key, f"must be a non-empty string, got {value!r:.80}")
        elif key in ("description", "reason") and value is not None and not isinstance(value, str):
            problems.add(key, f"must be a string or None, got {type(value).__name__}")
        elif key in ("context", "metadata") and not isinstance(value, Mapping):
            problems.add(key, f"must be a dict, got {type(value).__name__}")
    problems.raise_if_any()
    return dict(returned)


class ApprovalDecoratedOperator(DecoratedOperator, ApprovalOperator):
    """``@task.approval``: a gate whose request's content is what its function returns.

    Takes every option of :class:`~airflow_hitl.operators.approval.ApprovalOperator`;
    ``title`` may be left to the function (see this module's rules).
    """

    custom_operator_name = "@task.approval"
    template_fields = (*DecoratedOperator.template_fields, *ApprovalOperator.template_fields)
    template_fields_renderers = {
        **DecoratedOperator.template_fields_renderers,
        **ApprovalOperator.template_fields_renderers,
    }

    def __init__(self, *, title: str | None = None, **kwargs: Any) -> None:
        # Checked with a stand-in: every other option is checked now, the title when the function returns.
        super().__init__(title=_TITLE_FROM_FUNCTION if title is None else title, **kwargs)
        if title is None:
            self.title = None

    def execute(self, context: Context) -> Any:
        """Run the function with its upstream values, take the content it returns, then be the gate."""
        # The function's arguments: rendered op_kwargs, and any context key its signature names.
        arguments = self.determine_kwargs({**context, **self.op_kwargs})
        returned = self.python_callable(*self.op_args, **arguments)
        try:
            self._take_content(returned)
        except InvalidApprovalConfig as error:
            raise AirflowFailException(str(error)) from error
        return ApprovalOperator.execute(self, context)

    def _take_content(self, returned: Any) -> None:
        """Apply what the function returned to this gate's content, or raise naming each wrong key."""
        where = f"returned by {getattr(self.python_callable, '__name__', 'the function')}() {self._where(None)}"
        try:
            content = content_of(returned)
        except InvalidApprovalConfig as error:
            raise InvalidApprovalConfig.of(error.problems, where=where) from None
        for name in _REPLACED:
            if name in content:
                setattr(self, name, content[name])
        for name in ("context", "metadata"):
            if name in content:
                setattr(self, name, {**getattr(self, name), **content[name]})
        problems = ConfigProblems()
        if self.title is None:
            problems.add("title", "is required: the decorator gives none and the function returned none")
        # What the operator refuses of these five (length, characters the store cannot keep, JSON), now filled in.
        checked = self._spec(dag_id=self.dag_id, title=self.title or _TITLE_FROM_FUNCTION).problems()
        problems.items.extend((name, message) for name, message in checked.items if name in CONTENT_FIELDS)
        problems.raise_if_any(where=where)


class ApprovalBranchDecoratedOperator(ApprovalDecoratedOperator, ApprovalBranchOperator):
    """``@task.approval_branch(branches=...)``: the branch gate, its content returned by its function."""

    custom_operator_name = "@task.approval_branch"


def check_gate_options(gate_class: type[ApprovalOperator], task_id: str, options: Mapping[str, Any]) -> None:
    """Check a TaskFlow gate's options as ``gate_class`` would, without adding a task to any DAG.

    The check is a gate built on a DAG of its own (not registered, not the one being parsed),
    so every option is checked now, mapped gates' too (``.expand`` builds no operator until the
    task runs). Raises :class:`InvalidApprovalConfig` naming the task, every wrong option and
    the DAG file's line.
    """
    probe = {name: value for name, value in options.items() if name not in ("dag", "task_group")}
    problems = ConfigProblems()
    if "multiple_outputs" in probe:
        problems.add("multiple_outputs", "does not apply: a gate's one XCom is its decision")
        probe.pop("multiple_outputs")
    if probe.get("title") is None:
        probe["title"] = _TITLE_FROM_FUNCTION
    check_dag = DAG(dag_id=_CHECK_DAG_ID, schedule=None, auto_register=False)
    with problems.collecting():
        gate_class(task_id=task_id, dag=check_dag, task_group=check_dag.task_group, **probe)
    if problems:
        frame = dag_file_frame()
        where = f"of task {task_id!r}"
        if (dag_id := dag_being_defined(options.get("dag"))) is not None:
            where += f" in DAG {dag_id!r}"
        if frame is not None:
            where += f" at {frame.f_code.co_filename}:{frame.f_lineno}"
        raise_at(InvalidApprovalConfig.of(problems.items, where=where), frame)


def _gate_decorator(
    decorated_class: type[ApprovalDecoratedOperator],
    gate_class: type[ApprovalOperator],
    python_callable: Callable[..., Any] | None,
    options: dict[str, Any],
) -> TaskDecorator:
    def decorate(function: Callable[..., Any]) -> Any:
        task_id = str(options.get("task_id") or getattr(function, "__name__", "gate"))
        check_gate_options(gate_class, task_id, options)
        return task_decorator_factory(
            python_callable=function,
            # The gate's return value is its decision, one XCom, whatever the function's annotation says.
            multiple_outputs=False,
            decorated_operator_class=decorated_class,
            **options,
        )

    if python_callable is not None:
        return cast("TaskDecorator", decorate(python_callable))
    return cast("TaskDecorator", decorate)


def approval_task(python_callable: Callable[..., Any] | None = None, **options: Any) -> TaskDecorator:
    """``@task.approval(**options)``: the function returns the request's content, the task is the gate.

    :param python_callable: The function (when used as ``@task.approval`` without options).
    :param options: Any option of :class:`~airflow_hitl.operators.approval.ApprovalOperator`
        and of Airflow's ``BaseOperator``; ``title`` may be left to the function.
    """
    return _gate_decorator(ApprovalDecoratedOperator, ApprovalOperator, python_callable, options)


def approval_branch_task(python_callable: Callable[..., Any] | None = None, **options: Any) -> TaskDecorator:
    """``@task.approval_branch(branches={...}, **options)``: the branch gate, its content returned by its function.

    :param python_callable: The function (when used without options; ``branches`` is required, so never).
    :param options: ``branches`` and any option of :class:`~airflow_hitl.operators.approval.ApprovalBranchOperator`.
    """
    return _gate_decorator(ApprovalBranchDecoratedOperator, ApprovalBranchOperator, python_callable, options)

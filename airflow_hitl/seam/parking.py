"""Parking a gate's task in Airflow's ``awaiting_input`` state (Airflow 3.3+), from the worker.

Airflow 3.3 parks its own Human-in-the-loop tasks in ``awaiting_input``: the operator raises
``TaskAwaitingInput``, the worker's supervisor reports the state to the Execution API, which
stores it on the task instance row with ``next_method``/``next_kwargs`` and a deadline
(``task_instance.trigger_timeout``), and no trigger, triggerer slot or worker is held while
people decide. Nothing checks the operator's class or asks for a ``hitl_detail`` row, so our
gate parks the same way. The api-server ends a parked gate in place with Airflow's task end
event (:mod:`airflow_hitl.api.gate_closer`), and the scheduler's sweep of passed deadlines
resumes it on a worker with a timeout event, our backstop for when no api-server runs.

``TaskAwaitingInput`` lives in the Task SDK's public exceptions; which runner runs the task
(the in-process one of ``airflow dags test``, which never resumes a parked task by itself) is
internal: see the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

#: How long after a gate's ``expires_at`` Airflow's own deadline sweep resumes it, when nothing
#: acted before: the api-server's deadline worker acts within a second, so the sweep (every
#: ``[scheduler] trigger_timeout_check_interval``, 15 s) only ever finds gates no api-server saw.
BACKSTOP_GRACE = dt.timedelta(seconds=60)

#: The module of the in-process runner's comms (``airflow dags test``), and their class.
_SUPERVISOR_MODULE = "airflow.sdk.execution_time.supervisor"
_IN_PROCESS_COMMS = "InProcessSupervisorComms"


def can_park() -> bool:
    """Whether the task running in this process may park in ``awaiting_input`` now.

    False where the Task SDK has no ``TaskAwaitingInput`` (before Airflow 3.3: the gate defers;
    callers also ask ``version_compat.HAS_AWAITING_INPUT``, since the Execution API must know
    the state too), and under ``airflow dags test``: its in-process runner runs a deferred
    task's trigger inline but leaves a parked task waiting for an api-server to end it, so a
    gate defers there as on 3.1 and 3.2.
    """
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput  # noqa: F401  (the Task SDK has it)
    except ImportError:  # pragma: no cover - a core 3.3 with an older Task SDK
        return False
    # Imported only by the in-process runner's path (dag.test), never by a worker's task runner.
    supervisor = sys.modules.get(_SUPERVISOR_MODULE)
    if supervisor is None:
        return True
    import airflow.sdk.execution_time.task_runner as task_runner

    in_process = getattr(supervisor, _IN_PROCESS_COMMS, None)
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return not (isinstance(in_process, type) and isinstance(comms, in_process))


def park(*, method_name: str, kwargs: Mapping[str, Any], timeout: dt.timedelta | None) -> NoReturn:
    """Park the running task in ``awaiting_input``: raises Airflow's ``TaskAwaitingInput``.

    ``kwargs`` (plain JSON: Airflow stores them as given) come back to ``method_name`` when the
    task is resumed, with Airflow's ``event``; ``timeout`` is how long until Airflow's deadline
    sweep resumes it (None: never). Only where :func:`can_park` says so.
    """
    from airflow.sdk.exceptions import TaskAwaitingInput

    raise TaskAwaitingInput(method_name=method_name, kwargs=dict(kwargs), timeout=timeout)


def backstop_timeout(expires_at: dt.datetime | None, *, now: dt.datetime) -> dt.timedelta | None:
    """How long a gate expiring at ``expires_at`` parks before Airflow's sweep resumes it (None: never)."""
    if expires_at is None:
        return None
    return max(dt.timedelta(0), expires_at - now) + BACKSTOP_GRACE


def backstop_deadline(expires_at: dt.datetime | None) -> dt.datetime | None:
    """The deadline Airflow keeps for a parked gate expiring at ``expires_at`` (None: none)."""
    return None if expires_at is None else expires_at + BACKSTOP_GRACE


def is_timeout_event(event: Any) -> bool:
    """Whether a parked task was resumed by Airflow's deadline sweep (its timeout event)."""
    return isinstance(event, Mapping) and event.get("error_type") == "timeout"

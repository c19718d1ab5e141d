"""Gates of tests/e2e/test_parking_e2e.py: waiting in Airflow's ``awaiting_input`` state (Airflow 3.3+).

``e2e_park_*`` run on a stack whose api-server acts on decisions and deadlines; ``e2e_backstop_*``
on one whose deadline worker is off, so only Airflow's own deadline sweep acts on theirs. The
deadlines are long enough for every gate to park before the test looks (on a loaded two-core
machine a task has taken tens of seconds to start), and no longer: the test waits for them.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)
#: What every DAG here shares: run only when triggered.
COMMON = {"schedule": None, "start_date": START, "catchup": False, "tags": ["e2e"]}
#: A deadline the test can see the gate parked well before.
DEADLINE = dt.timedelta(seconds=90)
#: An escalation level's deadline the tests never reach.
LATER = dt.timedelta(minutes=30)


@task
def after() -> str:
    return "ran"


def escalating(title: str, timeout: dt.timedelta) -> ApprovalOperator:
    """bob does not decide in time: carol is added (level 1)."""
    return ApprovalOperator(
        task_id="gate",
        title=title,
        allowed_approvers=["bob"],
        timeout=timeout,
        timeout_action="escalate",
        escalate_to=[{"approvers": ["carol"], "timeout": LATER}],
        escalation_final_action="reject",
    )


# Decided over the REST API: the api-server ends the parked task in place.
with DAG(dag_id="e2e_park_decide", **COMMON):
    ApprovalOperator(task_id="gate", title="Deploy {{ run_id }}") >> after()

# Nobody decides: at the deadline the api-server applies the timeout action (reject: failed).
with DAG(dag_id="e2e_park_expire", **COMMON):
    ApprovalOperator(task_id="gate", title="Expire {{ run_id }}", timeout=DEADLINE, timeout_action="reject") >> after()

# The api-server escalates it; it stays parked, its backstop moved to the new deadline.
with DAG(dag_id="e2e_park_escalate", **COMMON):
    escalating("Escalate {{ run_id }}", DEADLINE) >> after()

# Marked success while parked: no trigger's on_kill, the api-server's reconcile cancels the request.
with DAG(dag_id="e2e_park_mark", **COMMON):
    ApprovalOperator(task_id="gate", title="Mark {{ run_id }}") >> after()

# Only Airflow's deadline sweep acts (no deadline worker): it resumes the gate on a worker,
# which applies the timeout action.
with DAG(dag_id="e2e_backstop_expire", **COMMON):
    (
        ApprovalOperator(task_id="gate", title="Backstop {{ run_id }}", timeout=DEADLINE, timeout_action="reject")
        >> after()
    )

# Only the sweep acts: the worker it resumes escalates the gate and parks it again.
with DAG(dag_id="e2e_backstop_escalate", **COMMON):
    escalating("Backstop escalation {{ run_id }}", DEADLINE) >> after()

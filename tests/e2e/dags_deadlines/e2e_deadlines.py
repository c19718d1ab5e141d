"""Gates of tests/e2e/test_triggerer_stopped_e2e.py: what the api-server does with every triggerer stopped.

The deadlines are long enough for every gate to defer and its trigger to be taken by the
triggerer before the test freezes it (on a loaded two-core machine that has taken tens of
seconds), and no longer: the test waits for them.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)
#: What every DAG here shares: run only when triggered.
COMMON = {"schedule": None, "start_date": START, "catchup": False, "tags": ["e2e"]}
#: A deadline the test can freeze the triggerer well before.
DEADLINE = dt.timedelta(seconds=90)


@task
def after() -> str:
    return "ran"


# Decided over the REST API while the triggerer is stopped.
with DAG(dag_id="e2e_deadline_decide", **COMMON):
    ApprovalOperator(task_id="gate", title="Deploy {{ run_id }}") >> after()

# Nobody decides: at the deadline the timeout action (reject) fails the gate.
with DAG(dag_id="e2e_deadline_expire", **COMMON):
    (
        ApprovalOperator(task_id="gate", title="Expire {{ run_id }}", timeout=DEADLINE, timeout_action="reject")
        >> after()
    )

# bob does not decide in time: carol is added (level 1), and she approves.
with DAG(dag_id="e2e_deadline_escalate", **COMMON):
    (
        ApprovalOperator(
            task_id="gate",
            title="Escalate {{ run_id }}",
            allowed_approvers=["bob"],
            timeout=DEADLINE,
            timeout_action="escalate",
            escalate_to=[{"approvers": ["carol"], "timeout": dt.timedelta(minutes=30)}],
            escalation_final_action="reject",
        )
        >> after()
    )

# alice is reminded in the app every few seconds until she decides.
with DAG(dag_id="e2e_deadline_remind", **COMMON):
    (
        ApprovalOperator(
            task_id="gate",
            title="Remind {{ run_id }}",
            allowed_approvers=["alice"],
            timeout=dt.timedelta(minutes=30),
            timeout_action="reject",
            notify_channels=["in_app"],
            remind_every=dt.timedelta(seconds=4),
        )
        >> after()
    )

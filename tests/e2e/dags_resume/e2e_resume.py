"""Gates for tests/e2e/test_resume_e2e.py: the trigger ends each gate (issue 12) and the outbox notifies."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)


@task
def after() -> str:
    return "ran"


# Many runs at once, each decided the moment its request appears: nothing may be lost.
with DAG(dag_id="e2e_resume_burst", schedule=None, start_date=START, catchup=False, max_active_runs=100):
    ApprovalOperator(task_id="gate", title="e2e burst {{ run_id }}")

with DAG(dag_id="e2e_resume_gate", schedule=None, start_date=START, catchup=False, max_active_runs=8):
    ApprovalOperator(task_id="gate", title="e2e resume {{ run_id }}") >> after()

with DAG(dag_id="e2e_resume_skip", schedule=None, start_date=START, catchup=False):
    ApprovalOperator(task_id="gate", title="e2e skip {{ run_id }}", on_reject="skip") >> after()

with DAG(dag_id="e2e_resume_retry", schedule=None, start_date=START, catchup=False):
    (
        ApprovalOperator(task_id="gate", title="e2e retry {{ run_id }}", retries=2, retry_delay=dt.timedelta(seconds=1))
        >> after()
    )

with DAG(dag_id="e2e_resume_timeout", schedule=None, start_date=START, catchup=False, max_active_runs=8):
    (
        ApprovalOperator(
            task_id="gate", title="e2e timeout {{ run_id }}", timeout=dt.timedelta(seconds=5), timeout_action="approve"
        )
        >> after()
    )

with DAG(dag_id="e2e_resume_escalate", schedule=None, start_date=START, catchup=False):
    (
        ApprovalOperator(
            task_id="gate",
            title="e2e escalate {{ run_id }}",
            allowed_approvers=["bob"],
            timeout=dt.timedelta(seconds=3),
            timeout_action="escalate",
            escalate_to=[{"approvers": ["carol"], "timeout": dt.timedelta(minutes=10)}],
            escalation_final_action="reject",
            notify_channels=["email"],
        )
        >> after()
    )

with DAG(dag_id="e2e_resume_remind", schedule=None, start_date=START, catchup=False):
    (
        ApprovalOperator(
            task_id="gate",
            title="e2e remind {{ run_id }}",
            allowed_approvers=["alice"],
            timeout=dt.timedelta(minutes=10),
            timeout_action="reject",
            notify_channels=["email"],
            remind_every=dt.timedelta(seconds=3),
        )
        >> after()
    )

with DAG(dag_id="e2e_resume_outage", schedule=None, start_date=START, catchup=False):
    (
        ApprovalOperator(
            task_id="gate",
            title="e2e outage {{ run_id }}",
            allowed_approvers=["alice", "bob"],
            timeout=dt.timedelta(minutes=20),
            timeout_action="reject",
            notify_channels=["email"],
        )
        >> after()
    )

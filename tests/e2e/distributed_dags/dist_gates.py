"""Gates of the distributed e2e suite (CeleryExecutor, FAB auth manager, two api-servers, two triggerers)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)


@task
def after() -> str:
    return "ran"


with DAG(dag_id="dist_instant", schedule=None, start_date=START, catchup=False, max_active_runs=32) as instant:
    ApprovalOperator(task_id="gate", title="distributed instant decision") >> after()

with DAG(dag_id="dist_quorum", schedule=None, start_date=START, catchup=False) as quorum:
    (
        ApprovalOperator(
            task_id="gate",
            title="two of three",
            allowed_approvers=["alice", "bob", "carol"],
            required_approvals=2,
        )
        >> after()
    )

with DAG(dag_id="dist_release_managers", schedule=None, start_date=START, catchup=False) as release_managers:
    ApprovalOperator(task_id="gate", title="release managers only", allowed_roles=["ReleaseManagers"]) >> after()

with DAG(dag_id="dist_takeover", schedule=None, start_date=START, catchup=False, max_active_runs=16) as takeover:
    # Decided by a person while the triggerer that ran its trigger is dead.
    ApprovalOperator(task_id="gate", title="decided during a triggerer crash") >> after()

with DAG(dag_id="dist_takeover_timeout", schedule=None, start_date=START, catchup=False) as takeover_timeout:
    # Nobody answers: the surviving triggerer must still apply the timeout.
    (
        ApprovalOperator(
            task_id="gate",
            title="times out after a triggerer crash",
            timeout=dt.timedelta(seconds=120),
            timeout_action="approve",
        )
        >> after()
    )

with DAG(dag_id="dist_email", schedule=None, start_date=START, catchup=False) as emailed:
    (
        ApprovalOperator(
            task_id="gate",
            title="Ship build {{ run_id }}",
            allowed_approvers=["alice"],
            timeout=dt.timedelta(hours=1),
            notify_channels=["email"],
        )
        >> after()
    )

with DAG(dag_id="dist_no_store", schedule=None, start_date=START, catchup=False) as no_store:
    ApprovalOperator(task_id="gate", title="no hitl_default connection") >> after()

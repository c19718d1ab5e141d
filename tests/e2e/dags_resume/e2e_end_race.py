"""Gates for tests/e2e/test_gate_end_once_e2e.py: rejected in a burst, each task with a retry left.

A rejection ends the gate's task ``failed``, which Airflow routes to ``up_for_retry`` (a
``task_instance_history`` row for the try, a new task instance id): the end that two parties
racing on the same try could each attempt. The retry waits an hour, so the test sees each
task right after its one end and starts no second worker try.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(
    dag_id="e2e_end_race",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=100,
    max_active_tasks=100,
):
    ApprovalOperator(task_id="gate", title="e2e end race {{ run_id }}", retries=1, retry_delay=dt.timedelta(hours=1))

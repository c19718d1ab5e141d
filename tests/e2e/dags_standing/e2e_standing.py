"""Gates of the standing approvals e2e suite (tests/e2e/test_standing_e2e.py).

One DAG per scenario: a standing approval covers every gate of its DAG that opens in its
window, so scenarios on one DAG would vote on each other's gates. Each gate is a plain one
(anyone with edit access but the requester may approve, one vote).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

START = dt.datetime(2026, 1, 1)
#: What every DAG here shares: run only when triggered.
COMMON = {"schedule": None, "start_date": START, "catchup": False, "tags": ["e2e"]}


@task
def after() -> str:
    return "ran"


# alice's standing approval votes on a run someone else triggered.
with DAG(dag_id="e2e_standing_use", **COMMON):
    ApprovalOperator(task_id="gate", title="Load the nightly batch") >> after()

# alice triggers the run herself: her standing approval may not approve it.
with DAG(dag_id="e2e_standing_self", **COMMON):
    ApprovalOperator(task_id="gate", title="Publish the report") >> after()

# Two gates of one run open together (and runs are triggered together) against one use.
with DAG(dag_id="e2e_standing_pair", max_active_runs=8, **COMMON):
    [
        ApprovalOperator(task_id="gate_a", title="Release to region A"),
        ApprovalOperator(task_id="gate_b", title="Release to region B"),
    ] >> after()

# A standing approval revoked while its gate opens.
with DAG(dag_id="e2e_standing_revoke", max_active_runs=16, **COMMON):
    ApprovalOperator(task_id="gate", title="Rotate the keys") >> after()

# Many gates at once, the runs triggered through either api-server.
with DAG(dag_id="e2e_standing_burst", max_active_runs=16, **COMMON):
    ApprovalOperator(task_id="gate", title="Ship build {{ run_id }}") >> after()

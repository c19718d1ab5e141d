"""A gate whose text and context carry HTML and script payloads: the pages must show them as text."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_hitl.operators.approval import ApprovalOperator

SCRIPT = "<script>window.__hitl_xss = 'script'; alert('xss-script')</script>"
IMG = "<img src=x onerror=\"window.__hitl_xss = 'img'; alert('xss-img')\">"

with DAG(dag_id="ui_xss", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    ApprovalOperator(
        task_id="gate",
        title="Payload " + IMG,
        description="Description " + SCRIPT,
        reason="Reason " + IMG,
        context={
            "note": SCRIPT,
            "metrics": {"html": IMG, "accuracy": 0.5},
            IMG: "a key that is markup",
        },
        metadata={"risk": "<b>high</b>"},
        timeout=dt.timedelta(hours=1),
    )

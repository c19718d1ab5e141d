"""A gate with a form (integer with bounds, required string, enum, boolean) for the modal's form tests."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="ui_inputs", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    ApprovalOperator(
        task_id="gate",
        title="Roll out the new ranking model",
        inputs={
            "rollout_percent": Param(10, type="integer", minimum=1, maximum=100, description="Share of traffic"),
            "ticket": Param(type="string", description="Change ticket"),
            "region": Param("eu", enum=["eu", "us"]),
            "dry_run": Param(False, type="boolean"),
        },
    )

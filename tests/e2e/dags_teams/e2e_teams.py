"""Gates that tell Microsoft Teams (``teams_default``: a stand-in of a Teams Workflows webhook).

``e2e_teams`` asks alice, with Markdown, a link and a mention in its title and context (a card
must show them as text); ``e2e_teams_escalation`` reminds every few seconds and escalates to
bob after a short while, so its required, reminder and escalated cards all come;
``e2e_teams_no_url`` names a connection that holds no URL.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_hitl.operators.approval import ApprovalOperator

with DAG(dag_id="e2e_teams", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]) as dag:
    gate = ApprovalOperator(
        task_id="gate",
        title="Ship **{{ run_id }}** [now](https://evil.example)",
        reason="checklist _done_",
        context={"build": "{{ run_id }}", "see": "www.evil.example", "who": "<at>Everyone</at>"},
        allowed_approvers=["alice"],
        timeout=dt.timedelta(hours=1),
        notify_channels=["teams"],
    )

    @task
    def after() -> str:
        return "shipped"

    gate >> after()

with DAG(
    dag_id="e2e_teams_escalation", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]
) as escalation_dag:
    ApprovalOperator(
        task_id="gate",
        title="Rotate keys {{ run_id }}",
        allowed_approvers=["alice"],
        timeout=dt.timedelta(seconds=40),
        timeout_action="escalate",
        escalate_to=[{"approvers": ["bob"], "timeout": dt.timedelta(hours=1)}],
        escalation_final_action="reject",
        remind_every=dt.timedelta(seconds=8),
        notify_channels=["teams"],
    )

with DAG(
    dag_id="e2e_teams_no_url", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, tags=["e2e"]
) as no_url_dag:
    # Its connection names no URL (known only when the notice is sent): the Teams notice fails
    # with the reason, the in-app one is delivered, the gate waits on.
    ApprovalOperator(
        task_id="gate",
        title="Nowhere to post {{ run_id }}",
        allowed_approvers=["alice"],
        timeout=dt.timedelta(hours=1),
        notify_channels=["teams", "in_app"],
        teams_conn_id="teams_no_url",
    )

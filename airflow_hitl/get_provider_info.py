"""Provider metadata read by Airflow's providers manager (``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any

from airflow_hitl import __version__
from airflow_hitl.settings import OPTIONS, SECTION


def get_provider_info() -> dict[str, Any]:
    """Describe airflow-hitl to Airflow: operators, triggers, TaskFlow decorators, CLI and the ``[hitl]`` config.

    The plugin is not listed here: Airflow loads it through the ``airflow.plugins`` entry
    point, and with ``[core] lazy_discover_providers = False`` it would also load the
    providers' plugins and record the second copy as an import error.
    """
    return {
        "package-name": "airflow-hitl",
        "name": "Human-in-the-loop approvals",
        "description": "Human approval gates for Apache Airflow 3: quorum, escalation, signed links, "
        "Slack buttons and an audit trail.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Human-in-the-loop approvals",
                "external-doc-url": "https://pypi.org/project/airflow-hitl/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Human-in-the-loop approvals",
                "python-modules": ["airflow_hitl.operators.approval"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Human-in-the-loop approvals",
                "python-modules": ["airflow_hitl.triggers.approval"],
            }
        ],
        # ``@task.approval`` and ``@task.approval_branch`` (Airflow's TaskFlow looks them up by name).
        "task-decorators": [
            {"name": "approval", "class-name": "airflow_hitl.operators.decorators.approval_task"},
            {"name": "approval_branch", "class-name": "airflow_hitl.operators.decorators.approval_branch_task"},
        ],
        "cli": ["airflow_hitl.cli.definition.get_hitl_cli_commands"],
        "config": {
            SECTION: {
                "description": "Human-in-the-loop approval gates (airflow-hitl).",
                "options": {option.name: option.provider_info() for option in OPTIONS},
            }
        },
    }

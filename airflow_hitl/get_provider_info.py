"""Provider metadata read by Airflow's providers manager (``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any


def _option(description: str, type_: str, default: str | None, example: str | None) -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": type_,
        "default": default,
        "example": example,
    }


def get_provider_info() -> dict[str, Any]:
    """Describe airflow-hitl to Airflow: operators, triggers, plugin, CLI and the ``[hitl]`` config."""
    return {
        "package-name": "airflow-hitl",
        "name": "Human-in-the-loop approvals",
        "description": "Human approval gates for Apache Airflow 3: quorum, escalation, signed links, "
        "Slack buttons and an audit trail.",
        "versions": ["0.1.0"],
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
        "plugins": [{"name": "hitl", "plugin-class": "airflow_hitl.plugins.hitl_plugin.HitlPlugin"}],
        "cli": ["airflow_hitl.cli.definition.get_hitl_cli_commands"],
        "config": {
            "hitl": {
                "description": "Human-in-the-loop approval gates (airflow-hitl).",
                "options": {
                    "conn_id": _option(
                        "Airflow connection of the approval store (postgres). When it is not defined, "
                        "a SQLite file under AIRFLOW_HOME is used (see sqlite_path).",
                        "string",
                        "hitl_default",
                        "hitl_default",
                    ),
                    "sqlite_path": _option(
                        "File of the embedded SQLite store used when the connection is not defined. "
                        "Empty means $AIRFLOW_HOME/hitl.db.",
                        "string",
                        "",
                        "/var/lib/airflow/hitl.db",
                    ),
                    "auto_migrate": _option(
                        "Migrate the approval store on first use when it is behind. Set False in production "
                        "and run `airflow hitl db migrate` from your deployment instead.",
                        "boolean",
                        "True",
                        "False",
                    ),
                    "poll_interval": _option(
                        "Seconds between the triggerer's store polls. One query per interval serves every "
                        "waiting gate in a triggerer; on PostgreSQL, LISTEN/NOTIFY wakes gates at once anyway.",
                        "float",
                        "2.0",
                        "5.0",
                    ),
                    "store_retry_max_backoff": _option(
                        "Upper bound, in seconds, of the backoff between retries when the store is unreachable.",
                        "float",
                        "30.0",
                        "60.0",
                    ),
                    "pool_size": _option(
                        "SQLAlchemy connection pool size per process for a PostgreSQL store.",
                        "integer",
                        "5",
                        "10",
                    ),
                    "max_comment_length": _option(
                        "Longest comment or reason, in characters, accepted with a decision.",
                        "integer",
                        "4000",
                        "10000",
                    ),
                    "resume_grace_seconds": _option(
                        "A decision made within this many seconds of a gate opening resumes the task only "
                        "this long after the gate opened. Airflow 3 can fail a task whose trigger fires "
                        "before the worker of the deferring try has exited (how Airflow's own HITL loses "
                        "instant decisions); this delay avoids that race. 0 disables it.",
                        "float",
                        "10.0",
                        "5.0",
                    ),
                    "base_url": _option(
                        "Public URL of the Airflow api-server, used in links sent to approvers.",
                        "string",
                        "http://localhost:8080",
                        "https://airflow.example.com",
                    ),
                },
            }
        },
    }

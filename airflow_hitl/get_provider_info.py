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
                    "outbox_drainer": _option(
                        "Run the notification outbox drainer in the api-server (every api-server may run one; "
                        "they share the work safely). Turn off only where another process drains it.",
                        "boolean",
                        "True",
                        "False",
                    ),
                    "outbox_poll_interval": _option(
                        "Seconds between outbox polls when nothing wakes the drainer earlier (on PostgreSQL "
                        "it also wakes at once on every transition through LISTEN/NOTIFY, and always at the "
                        "next due reminder or retry).",
                        "float",
                        "1.0",
                        "5.0",
                    ),
                    "outbox_lease_seconds": _option(
                        "How long a claimed notice is reserved for the sender that claimed it; a sender that "
                        "dies leaves a lease that runs out, and another sender takes the notice.",
                        "float",
                        "120.0",
                        "300.0",
                    ),
                    "outbox_final_retry_seconds": _option(
                        "How long a notice about a closed request (decided, timed out, cancelled) keeps being "
                        "retried after the request closed. Notices about an open request are retried while "
                        "it stays open.",
                        "float",
                        "3600.0",
                        "86400.0",
                    ),
                    "base_url": _option(
                        "Public URL of the Airflow api-server, used in links sent to approvers.",
                        "string",
                        "http://localhost:8080",
                        "https://airflow.example.com",
                    ),
                    "notify_smtp_conn_id": _option(
                        "SMTP connection used for approval emails (a gate may name another).",
                        "string",
                        "smtp_default",
                        "smtp_approvals",
                    ),
                    "notify_slack_conn_id": _option(
                        "Slack API connection (bot token) used for approval messages and for updating them.",
                        "string",
                        "slack_api_default",
                        "slack_approvals",
                    ),
                    "notify_webhook_conn_id": _option(
                        "HTTP connection of the approval webhook receiver; its password (or `secret` extra) "
                        "signs every payload.",
                        "string",
                        "hitl_webhook",
                        "approvals_webhook",
                    ),
                    "notify_from_email": _option(
                        "Sender of approval emails when the SMTP connection has no from_email.",
                        "string",
                        "",
                        "Airflow approvals <noreply@example.com>",
                    ),
                    "notify_max_retries": _option(
                        "Retries of a failed notification send (exponential backoff between them).",
                        "integer",
                        "3",
                        "5",
                    ),
                    "notify_retry_backoff": _option(
                        "Seconds before the first retry of a failed send; doubled for each further retry.",
                        "float",
                        "1.0",
                        "2.0",
                    ),
                    "notify_retry_max_backoff": _option(
                        "Longest wait, in seconds, between two retries of a send.",
                        "float",
                        "30.0",
                        "60.0",
                    ),
                    "user_emails": _option(
                        "JSON object mapping Airflow user names to email addresses, for users the auth "
                        "manager has no email for (SimpleAuthManager users have none).",
                        "string",
                        # Airflow formats defaults with str.format: braces are doubled.
                        "{{}}",
                        '{"alice": "alice@example.com"}',
                    ),
                    "slack_users": _option(
                        "JSON object mapping Airflow user names to Slack member ids (direct messages, and "
                        "mapping Slack button clicks back to Airflow users).",
                        "string",
                        # Airflow formats defaults with str.format: braces are doubled.
                        "{{}}",
                        '{"alice": "U012ABCDEF"}',
                    ),
                    "role_members": _option(
                        "JSON object mapping role names to Airflow user names, used to resolve notify_roles "
                        "and allowed_roles to people (SimpleAuthManager users are added automatically).",
                        "string",
                        # Airflow formats defaults with str.format: braces are doubled.
                        "{{}}",
                        '{"ml-leads": ["alice", "bob"]}',
                    ),
                    "signing_key": _option(
                        "Secret that signs emailed approval links. Empty: the password of the signing_conn_id "
                        "connection, else a key derived from [api_auth] jwt_secret.",
                        "string",
                        "",
                        None,
                    ),
                    "signing_conn_id": _option(
                        "Connection whose password is the link signing key when signing_key is empty.",
                        "string",
                        "hitl_signing",
                        "hitl_signing",
                    ),
                    "slack_signing_secret": _option(
                        "Slack app signing secret that verifies button clicks at /hitl/slack/interactions. "
                        "Empty: the `signing_secret` extra of the notify_slack_conn_id connection.",
                        "string",
                        "",
                        None,
                    ),
                    "link_max_age": _option(
                        "Longest life, in seconds, of an emailed link (links also expire with their request).",
                        "integer",
                        "604800",
                        "86400",
                    ),
                },
            }
        },
    }

"""The ``[hitl]`` configuration section: every option declared once, read in one place.

:data:`OPTIONS` is the only declaration of an option (name, type, default, description,
example). ``get_provider_info()`` builds Airflow's config documentation from it, and
:func:`conf_get` falls back to its defaults, because a provider's defaults are only
registered once Airflow's providers manager has loaded, which a test or a bare script may
never do. Nothing here reads configuration at import time.

Booleans and numbers are read as Airflow's ``conf.getboolean``/``getint``/``getfloat`` read
them (:func:`option_value`): a value they refuse is :class:`ConfigInvalid` naming the option,
never a silent default. Secrets are declared ``sensitive``: Airflow masks them in ``airflow
config list`` and reads them from ``AIRFLOW__HITL__<NAME>_CMD`` and ``_SECRET`` as well.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from airflow_hitl.exceptions import ConfigInvalid

log = logging.getLogger(__name__)

SECTION = "hitl"

OptionType = Literal["string", "boolean", "integer", "float"]


@dataclass(frozen=True, kw_only=True)
class Option:
    """One ``[hitl]`` option as ``airflow config list`` documents it."""

    name: str
    type: OptionType
    default: str
    description: str
    example: str | None = None
    version_added: str = "0.1.0"
    #: A secret: Airflow masks it in ``airflow config list`` and the UI, and reads ``_CMD``/``_SECRET``.
    sensitive: bool = False

    def provider_info(self) -> dict[str, Any]:
        """The option in the shape of a provider's ``config`` section."""
        return {
            "description": self.description,
            "version_added": self.version_added,
            "type": self.type,
            # Airflow formats defaults with str.format: braces must be doubled.
            "default": self.default.replace("{", "{{").replace("}", "}}"),
            "example": self.example,
            "sensitive": self.sensitive,
        }


OPTIONS: tuple[Option, ...] = (
    Option(
        name="conn_id",
        type="string",
        default="hitl_default",
        example="hitl_default",
        description=(
            "Airflow connection of the approval store (postgres). A connection named here must exist; only "
            "the default hitl_default, when not defined, falls back to a SQLite file (see sqlite_path), and "
            "only with a single-machine executor (Local, Sequential, Debug)."
        ),
    ),
    Option(
        name="sqlite_path",
        type="string",
        default="",
        example="/var/lib/airflow/hitl.db",
        description=(
            "File of the embedded SQLite store used when hitl_default is not defined. Empty means "
            "$AIRFLOW_HOME/hitl.db, refused with a remote executor (Celery, Kubernetes, Edge). Set "
            "explicitly, it is the one file every component shares (one host, a local volume; never a network "
            "filesystem) and is used with any executor."
        ),
    ),
    Option(
        name="auto_migrate",
        type="boolean",
        default="True",
        example="False",
        description=(
            "Migrate the approval store on first use when it is behind. Set False in production and run "
            "`airflow hitl db migrate` from your deployment instead."
        ),
    ),
    Option(
        name="poll_interval",
        type="float",
        default="2.0",
        example="5.0",
        description=(
            "Seconds between the triggerer's store polls. One query per interval serves every waiting gate in "
            "a triggerer; on PostgreSQL, LISTEN/NOTIFY wakes gates at once anyway."
        ),
    ),
    Option(
        name="store_retry_max_backoff",
        type="float",
        default="30.0",
        example="60.0",
        description=("Upper bound, in seconds, of the backoff between retries when the store is unreachable."),
    ),
    Option(
        name="pool_size",
        type="integer",
        default="5",
        example="10",
        description=("SQLAlchemy connection pool size per process for a PostgreSQL store."),
    ),
    Option(
        name="max_comment_length",
        type="integer",
        default="4000",
        example="10000",
        description=("Longest comment or reason, in characters, accepted with a decision."),
    ),
    Option(
        name="outbox_drainer",
        type="boolean",
        default="True",
        example="False",
        description=(
            "Run the notification outbox drainer in the api-server (every api-server may run one; they share "
            "the work safely). Turn off only where another process drains it."
        ),
    ),
    Option(
        name="gate_closer",
        type="boolean",
        default="True",
        example="False",
        description=(
            "End a decided gate's task from the api-server (Airflow's own task end event, on the task "
            "instance deferred on the gate's trigger) the moment the decision commits, instead of waiting "
            "for the triggerer to start the trigger: a decision made as the gate opens no longer waits "
            "one to three seconds for Airflow's triggerer loops. It listens to the store's NOTIFY (a SQLite "
            "store is polled every gate_closer_poll_interval seconds); safe with several api-servers and "
            "triggerers. The trigger still ends gates this misses."
        ),
    ),
    Option(
        name="api_server_gc_freeze",
        type="boolean",
        default="True",
        example="False",
        description=(
            "Once an api-server worker has started, move the objects it built (Airflow's app, about "
            "700,000 of them) out of the garbage collector's full collections (Python's gc.freeze, as "
            "Airflow's own DAG processor does). Otherwise each full collection walks them all and holds up "
            "every request of that worker: 150-370 ms on a 2-core machine, about once a minute at 100 "
            "decisions a second. Afterwards one takes a few milliseconds."
        ),
    ),
    Option(
        name="gate_closer_wait_seconds",
        type="float",
        default="30.0",
        example="60.0",
        description=(
            "How long the api-server's gate closer keeps trying to end the task of a closed request "
            "(still deferring, locked by another Airflow process, or a database error) before leaving "
            "it to the trigger."
        ),
    ),
    Option(
        name="gate_closer_poll_interval",
        type="float",
        default="0.25",
        example="1.0",
        description=(
            "Seconds between the gate closer's looks for closed gates whose task has not ended yet, on a SQLite "
            "store (no NOTIFY there: every api-server process looks). A decision then ends its gate within about "
            "this long plus the end itself, with no triggerer running. Unused on PostgreSQL."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="deadline_worker",
        type="boolean",
        default="True",
        example="False",
        description=(
            "Act on the gates' deadlines from the api-server: at a waiting gate's expires_at, apply its timeout "
            "action or its next escalation level (the gate closer then ends a timed-out gate's task), without "
            "waiting for the gate's trigger. One api-server process per PostgreSQL store works at a time (an "
            "advisory lock), woken by the store's NOTIFY; on SQLite every api-server process looks. Safe beside "
            "the triggers, which still act on deadlines where no api-server runs."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="deadline_poll_interval",
        type="float",
        default="0.25",
        example="1.0",
        description=(
            "Seconds between the deadline worker's looks for new or changed deadlines on a SQLite store (on "
            "PostgreSQL the store's NOTIFY wakes it, and it sleeps until the soonest deadline). A gate opened "
            "with an earlier deadline than any before is seen within this long."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="park_gates",
        type="boolean",
        default="True",
        description=(
            "On Airflow 3.3+ a waiting gate parks in awaiting_input (no trigger or triggerer slot): the gate closer "
            "ends it, so with gate_closer off, or False here, it defers to its trigger as on 3.1 and 3.2."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="standing_approval_max_days",
        type="integer",
        default="30",
        example="7",
        description=(
            "The longest window, in days, of a standing approval (an approver's vote given ahead of time for a "
            "DAG's gates, POST /hitl/api/v1/standing-approvals); a longer one is refused (422)."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="standing_poll_interval",
        type="float",
        default="0.5",
        example="2.0",
        description=(
            "Seconds between the api-server's looks for gates a standing approval should vote on, on SQLite. On "
            "PostgreSQL LISTEN/NOTIFY wakes it as soon as a gate opens or escalates, and it looks every 30 s."
        ),
        version_added="0.3.0",
    ),
    Option(
        name="outbox_poll_interval",
        type="float",
        default="1.0",
        example="5.0",
        description=(
            "Seconds between outbox polls when nothing wakes the drainer earlier (on PostgreSQL it wakes at "
            "once, through LISTEN/NOTIFY on `hitl_outbox`, whenever a transition queues notices, and polls every "
            "30 s while it listens), and always at the next due reminder or retry."
        ),
    ),
    Option(
        name="outbox_lease_seconds",
        type="float",
        default="120.0",
        example="300.0",
        description=(
            "How long a claimed notice is reserved for the sender that claimed it; a sender that dies leaves "
            "a lease that runs out, and another sender takes the notice."
        ),
    ),
    Option(
        name="outbox_final_retry_seconds",
        type="float",
        default="3600.0",
        example="86400.0",
        description=(
            "How long a notice about a closed request (decided, timed out, cancelled) keeps being retried "
            "after the request closed. Notices about an open request are retried while it stays open."
        ),
    ),
    Option(
        name="max_request_bytes",
        type="integer",
        default="1048576",
        example="262144",
        description=(
            "Largest request body, in bytes, the /hitl app accepts; a larger one is answered 413 before it is "
            "read further."
        ),
    ),
    Option(
        name="max_json_bytes",
        type="integer",
        default="65536",
        example="16384",
        description=(
            "Largest `context` or `metadata` of a request or a vote, in bytes of compact JSON (both are read "
            "with every view of the request)."
        ),
    ),
    Option(
        name="max_json_depth",
        type="integer",
        default="16",
        example="8",
        description=("Deepest nesting of objects and arrays accepted in `context` and `metadata`."),
    ),
    Option(
        name="store_connect_timeout",
        type="float",
        default="5",
        example="2",
        description=(
            "Seconds to wait for a connection to a PostgreSQL store before the call fails (the REST API then "
            "answers 503 with Retry-After)."
        ),
    ),
    Option(
        name="store_statement_timeout",
        type="float",
        default="15",
        example="30",
        description=(
            "Seconds one statement on a PostgreSQL store may run (statement_timeout) before it is cancelled "
            "and its transaction rolled back."
        ),
    ),
    Option(
        name="store_pool_timeout",
        type="float",
        default="10",
        example="30",
        description=("Seconds to wait for a free pooled store connection before the call fails."),
    ),
    Option(
        name="base_url",
        type="string",
        default="http://localhost:8080",
        example="https://airflow.example.com",
        description=("Public URL of the Airflow api-server, used in links sent to approvers."),
    ),
    Option(
        name="notify_smtp_conn_id",
        type="string",
        default="smtp_default",
        example="smtp_approvals",
        description=("SMTP connection used for approval emails (a gate may name another)."),
    ),
    Option(
        name="notify_slack_conn_id",
        type="string",
        default="slack_api_default",
        example="slack_approvals",
        description=("Slack API connection (bot token) used for approval messages and for updating them."),
    ),
    Option(
        name="notify_webhook_conn_id",
        type="string",
        default="hitl_webhook",
        example="approvals_webhook",
        description=(
            "HTTP connection of the approval webhook receiver; its password (or `secret` extra) signs every payload."
        ),
    ),
    Option(
        name="notify_from_email",
        type="string",
        default="",
        example="Airflow approvals <noreply@example.com>",
        description=("Sender of approval emails when the SMTP connection has no from_email."),
    ),
    Option(
        name="notify_max_retries",
        type="integer",
        default="3",
        example="5",
        description=("Retries of a failed notification send (exponential backoff between them)."),
    ),
    Option(
        name="notify_retry_backoff",
        type="float",
        default="1.0",
        example="2.0",
        description=("Seconds before the first retry of a failed send; doubled for each further retry."),
    ),
    Option(
        name="notify_retry_max_backoff",
        type="float",
        default="30.0",
        example="60.0",
        description=("Longest wait, in seconds, between two retries of a send."),
    ),
    Option(
        name="user_emails",
        type="string",
        default="{}",
        example='{"alice": "alice@example.com"}',
        description=(
            "JSON object mapping Airflow user names to email addresses, for users the auth manager has no "
            "email for (SimpleAuthManager users have none)."
        ),
    ),
    Option(
        name="slack_users",
        type="string",
        default="{}",
        example='{"alice": "U012ABCDEF"}',
        description=(
            "JSON object mapping Airflow user names to Slack member ids (direct messages, and mapping Slack "
            "button clicks back to Airflow users)."
        ),
    ),
    Option(
        name="role_members",
        type="string",
        default="{}",
        example='{"ml-leads": ["alice", "bob"]}',
        description=(
            "JSON object mapping role names to Airflow user names, used to resolve notify_roles and "
            "allowed_roles to people (SimpleAuthManager users are added automatically)."
        ),
    ),
    Option(
        name="signing_key",
        type="string",
        default="",
        example=None,
        sensitive=True,
        description=(
            "Secret that signs emailed approval links. Empty: the password of the signing_conn_id connection, "
            "else a key derived from [api_auth] jwt_secret."
        ),
    ),
    Option(
        name="signing_conn_id",
        type="string",
        default="hitl_signing",
        example="hitl_signing",
        description=("Connection whose password is the link signing key when signing_key is empty."),
    ),
    Option(
        name="slack_signing_secret",
        type="string",
        default="",
        example=None,
        sensitive=True,
        description=(
            "Slack app signing secret that verifies button clicks at /hitl/slack/interactions. Empty: the "
            "`signing_secret` extra of the notify_slack_conn_id connection."
        ),
    ),
    Option(
        name="link_max_age",
        type="integer",
        default="604800",
        example="86400",
        description=("Longest life, in seconds, of an emailed link (links also expire with their request)."),
    ),
    Option(
        name="audit_key",
        type="string",
        default="",
        example=None,
        sensitive=True,
        version_added="0.2.0",
        description=(
            "Secret that keys the audit trail's chain: each event's link is HMAC-SHA256 under it, so write "
            "access to the store is not enough to forge a consistent chain. Empty: links are plain SHA-256 "
            "(`airflow hitl db check` warns). Set it on every component that writes the store; events written "
            "before it was set keep verifying as they were."
        ),
    ),
    Option(
        name="evidence_signing_key",
        type="string",
        default="",
        example=None,
        sensitive=True,
        version_added="0.2.0",
        description=(
            "Ed25519 private key (PEM) that signs each request's evidence (a compact JWS, EdDSA) at "
            "/hitl/api/v1/approvals/{id}/evidence. `airflow hitl evidence keygen` prints a new one. Empty: "
            "the evidence endpoints answer 503."
        ),
    ),
    Option(
        name="evidence_previous_public_keys",
        type="string",
        default="",
        example=None,
        version_added="0.2.0",
        description=(
            "Public keys (PEM, concatenated) of earlier evidence signing keys: still listed in the JWKS at "
            "/hitl/api/v1/evidence/jwks.json after a rotation, so evidence signed before it keeps verifying."
        ),
    ),
)

_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def option(name: str) -> Option:
    """The declaration of one option; a ``KeyError`` names an option that does not exist."""
    return _BY_NAME[name]


def conf_get(key: str) -> str:
    """One ``[hitl]`` option as a string: Airflow's config (environment included), else its default.

    Airflow reads a secret (an option declared ``sensitive``) from ``AIRFLOW__HITL__<NAME>_CMD``
    (a command's output) and ``_SECRET`` (a secrets backend) too; a secret read so has its
    trailing line break removed (``echo``, ``cat`` of a file). When Airflow cannot read the
    option (the command fails, the backend is down) the error is :class:`ConfigInvalid`, never
    the default: a secret silently replaced by an empty one would change what it protects.
    """
    declared = _BY_NAME[key]
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - the package depends on Airflow
        value = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{key.upper()}")
        return declared.default if value is None else value
    if declared.sensitive:
        _declare_sensitive(conf, key)
    try:
        value = conf.get(SECTION, key, fallback=None)
    except Exception as err:
        # Airflow's message may quote a failing command's output: not for a secret.
        why = "Airflow could not read it" + ("" if declared.sensitive else f": {err}")
        raise ConfigInvalid(key, why) from None
    if value is None:
        return declared.default
    text = str(value)
    return text.rstrip("\r\n") if declared.sensitive else text


def _declare_sensitive(conf: Any, key: str) -> None:
    """Make sure Airflow knows ``[hitl] key`` as sensitive, which is when it reads its ``_CMD`` and ``_SECRET``.

    Airflow 3.2 and later read every provider's option declarations lazily, as soon as they
    are asked for. Airflow 3.1 merges them into its config only when the providers manager
    has loaded them, which its commands do but a bare script or a test may not: load them
    here then, once (the providers manager caches it).
    """
    try:
        if (SECTION, key) in conf.sensitive_config_values:
            return
        from airflow_hitl.seam.providers import load_provider_configuration

        load_provider_configuration()
        # A set cached before the declarations were loaded would still leave the option out.
        conf.__dict__.pop("sensitive_config_values", None)
    except Exception:
        # Without the declarations Airflow still reads the plain variable and airflow.cfg.
        log.warning("could not load the providers' configuration; [hitl] %s _CMD/_SECRET may be ignored", key)


def _parse_boolean(text: str) -> bool | None:
    # Airflow's conf.getboolean: case and surrounding blanks ignored, a trailing "# comment" too.
    value = text.lower().strip()
    if "#" in value:
        value = value.split("#")[0].strip()
    if value in ("t", "true", "1"):
        return True
    if value in ("f", "false", "0"):
        return False
    return None


def _parse_integer(text: str) -> int | None:
    # Airflow's conf.getint: what int() reads, or a float with no fraction ("1e3").
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
        whole = int(number)
    except (ValueError, OverflowError):
        return None
    return whole if number == whole else None


def _parse_float(text: str) -> float | None:
    # Airflow's conf.getfloat, finite only: an infinite timeout or NaN interval breaks what reads it.
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


#: How each type is read, and what the reader is told when a value is not of it.
_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "boolean": (_parse_boolean, "is not a boolean (Airflow reads true/false, t/f or 1/0, in any case)"),
    "integer": (_parse_integer, "is not an integer"),
    "float": (_parse_float, "is not a finite number"),
}


def option_value(key: str) -> Any:
    """One ``[hitl]`` option read as its declared type, as Airflow's ``conf.getboolean``/``getint``/``getfloat`` would.

    A value Airflow's reading refuses (``auto_migrate = Ture``, ``pool_size = five``) is
    :class:`ConfigInvalid` naming the option and the value, never the default.
    """
    text = conf_get(key)
    declared = _BY_NAME[key]
    if declared.type not in _PARSERS:
        return text
    parse, expected = _PARSERS[declared.type]
    value = parse(text)
    if value is None:
        shown = "the value" if declared.sensitive else repr(text)
        raise ConfigInvalid(key, f"{shown} {expected}")
    return value


def conf_getboolean(key: str) -> bool:
    """A boolean ``[hitl]`` option (see :func:`option_value`)."""
    return bool(_typed(key, "boolean"))


def conf_getint(key: str) -> int:
    """An integer ``[hitl]`` option (see :func:`option_value`)."""
    return int(_typed(key, "integer"))


def conf_getfloat(key: str) -> float:
    """A float ``[hitl]`` option (see :func:`option_value`)."""
    return float(_typed(key, "float"))


def _typed(key: str, expected: OptionType) -> Any:
    if _BY_NAME[key].type != expected:
        raise TypeError(f"[hitl] {key} is declared {_BY_NAME[key].type}, not {expected}")
    return option_value(key)


def read_options(keys: Iterable[str]) -> dict[str, Any]:
    """Each of ``keys`` read as its declared type; one :class:`ConfigInvalid` names every one that cannot be."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key in keys:
        try:
            values[key] = option_value(key)
        except ConfigInvalid as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigInvalid(problems[0][0], problems[0][1], problems=problems)
    return values


def check_options() -> None:
    """Read every ``[hitl]`` option as its type (secrets' ``_CMD`` run too); :class:`ConfigInvalid` names each bad one.

    What ``airflow hitl db check`` and the api-server's start ask first, so a misspelt option
    stops them by name instead of failing the first gate that reads it.
    """
    read_options(option.name for option in OPTIONS)


def airflow_home() -> str:
    """Return ``AIRFLOW_HOME`` the way Airflow itself resolves it."""
    return os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))


@dataclass(frozen=True, kw_only=True)
class HitlSettings:
    """Typed view of the store and API options of ``[hitl]`` (notifications: ``NotifySettings``)."""

    conn_id: str
    sqlite_path: str
    #: True when ``[hitl] sqlite_path`` is set: the file every component shares, any executor.
    sqlite_path_configured: bool
    auto_migrate: bool
    poll_interval: float
    store_retry_max_backoff: float
    pool_size: int
    max_comment_length: int
    base_url: str
    max_request_bytes: int
    max_json_bytes: int
    max_json_depth: int
    store_connect_timeout: float
    store_statement_timeout: float
    store_pool_timeout: float
    outbox_drainer: bool
    gate_closer: bool
    api_server_gc_freeze: bool
    gate_closer_wait_seconds: float
    gate_closer_poll_interval: float
    deadline_worker: bool
    deadline_poll_interval: float
    park_gates: bool
    standing_approval_max_days: int
    standing_poll_interval: float
    outbox_poll_interval: float
    outbox_lease_seconds: float
    outbox_final_retry_seconds: float

    @classmethod
    def load(cls) -> HitlSettings:
        """Read the current configuration (environment variables included); :class:`ConfigInvalid` names bad options."""
        values = read_options(f.name for f in fields(cls) if f.name != "sqlite_path_configured")
        configured_path = values["sqlite_path"]
        values["sqlite_path"] = configured_path or os.path.join(airflow_home(), "hitl.db")
        values["base_url"] = values["base_url"].rstrip("/")
        return cls(**values, sqlite_path_configured=bool(configured_path))

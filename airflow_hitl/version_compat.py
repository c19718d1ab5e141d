"""Airflow version checks, kept in one place so the rest of the package reads plainly."""

from __future__ import annotations

from packaging.version import Version


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    """Return the running Airflow version as ``(major, minor, micro)`` without pre-release parts."""
    from airflow import __version__

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_V_3_2_PLUS = get_base_airflow_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS = get_base_airflow_version_tuple() >= (3, 3, 0)

#: Airflow 3.2 added the provider ``cli`` entry (``airflow hitl ...``); 3.1 has only ``airflow-hitl``.
HAS_PROVIDER_CLI = AIRFLOW_V_3_2_PLUS
#: Triggerers call ``BaseTrigger.on_kill`` when a deferred task is cleared or marked from 3.3 on;
#: before, the next try's supersede cancels a cleared gate's request, a marked one stays pending.
TRIGGER_ON_KILL = AIRFLOW_V_3_3_PLUS
#: Airflow 3.3 added the ``awaiting_input`` task state (``TaskAwaitingInput``): a waiting gate parks
#: there, holding no trigger, triggerer slot or worker; 3.1 and 3.2 defer it to its trigger.
HAS_AWAITING_INPUT = AIRFLOW_V_3_3_PLUS

# The task exceptions moved to the Task SDK in 3.2; 3.1 only has them in airflow.exceptions
# (3.2+ still has those too, but deprecated).
if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
else:  # pragma: no cover - exercised by scripts/test-airflow-versions.sh
    from airflow.exceptions import (  # type: ignore[no-redef,assignment,unused-ignore]
        AirflowFailException,
        AirflowSkipException,
    )

__all__ = [
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "HAS_AWAITING_INPUT",
    "HAS_PROVIDER_CLI",
    "TRIGGER_ON_KILL",
    "AirflowFailException",
    "AirflowSkipException",
    "get_base_airflow_version_tuple",
]

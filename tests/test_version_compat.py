"""version_compat: the Airflow version flags and the task exceptions the operator raises."""

from __future__ import annotations

import airflow
from packaging.version import Version

from airflow_hitl import version_compat
from airflow_hitl.version_compat import (
    AIRFLOW_V_3_2_PLUS,
    AIRFLOW_V_3_3_PLUS,
    HAS_PROVIDER_CLI,
    TRIGGER_ON_KILL,
    AirflowFailException,
    AirflowSkipException,
    get_base_airflow_version_tuple,
)


def test_the_version_tuple_is_the_installed_airflows_without_pre_release_parts() -> None:
    installed = Version(airflow.__version__)
    assert get_base_airflow_version_tuple() == (installed.major, installed.minor, installed.micro)


def test_the_flags_follow_the_version() -> None:
    major_minor = get_base_airflow_version_tuple()[:2]
    assert AIRFLOW_V_3_2_PLUS is (major_minor >= (3, 2))
    assert AIRFLOW_V_3_3_PLUS is (major_minor >= (3, 3))
    assert HAS_PROVIDER_CLI is AIRFLOW_V_3_2_PLUS
    assert TRIGGER_ON_KILL is AIRFLOW_V_3_3_PLUS


def test_the_task_exceptions_are_the_ones_the_running_airflow_handles() -> None:
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk import exceptions as source
    else:
        from airflow import exceptions as source  # type: ignore[no-redef]
    assert AirflowFailException is source.AirflowFailException
    assert AirflowSkipException is source.AirflowSkipException
    assert set(version_compat.__all__) >= {"AirflowFailException", "AirflowSkipException", "TRIGGER_ON_KILL"}

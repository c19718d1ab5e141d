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

__all__ = ["AIRFLOW_V_3_2_PLUS", "AIRFLOW_V_3_3_PLUS", "get_base_airflow_version_tuple"]

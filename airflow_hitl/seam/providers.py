"""Airflow's providers manager: the providers' ``[section] option`` declarations.

See the table in :mod:`airflow_hitl.seam`.
"""

from __future__ import annotations


def load_provider_configuration() -> None:
    """Merge every provider's option declarations into Airflow's config (Airflow 3.1 needs it asked).

    The providers manager caches them, so a second call costs nothing.
    """
    from airflow.providers_manager import ProvidersManager

    ProvidersManager().initialize_providers_configuration()  # type: ignore[no-untyped-call]

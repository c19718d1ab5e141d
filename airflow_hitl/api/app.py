"""FastAPI application factory of the ``/hitl`` sub-app."""

from __future__ import annotations

from fastapi import FastAPI

from airflow_hitl import __version__


def create_app() -> FastAPI:
    """Build the ``/hitl`` app; routes are added by the routers in :mod:`airflow_hitl.api.routes`."""
    app = FastAPI(
        title="airflow-hitl",
        version=__version__,
        description="Human approval gates for Apache Airflow 3.",
    )

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app

"""Loads the airflow-hitl plugin for deployments that load plugins from a folder, not entry points."""

from __future__ import annotations

from airflow_hitl.plugins.hitl_plugin import HitlPlugin

__all__ = ["HitlPlugin"]

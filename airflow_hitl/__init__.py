"""airflow-hitl: human approval gates for Apache Airflow 3."""

from __future__ import annotations

from airflow_hitl.canonical import verify_bound
from airflow_hitl.exceptions import ApprovalMismatch

__version__ = "0.1.0"

__all__ = ["ApprovalMismatch", "__version__", "verify_bound"]

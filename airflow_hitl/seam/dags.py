"""Whether Airflow knows a DAG: a look at the ``dag`` table of its metadata DB.

Airflow's public REST API answers it (``GET /api/v2/dags/{dag_id}``), but only to a caller
with a token and read access to that DAG; the api-server process asks its own metadata DB
instead, as Airflow's routes do, through ``DagModel`` (internal: see the table in
:mod:`airflow_hitl.seam`). Callers get a plain answer, never Airflow's ORM class or session.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def dag_exists(dag_id: str) -> bool | None:
    """True when Airflow's metadata DB has a DAG ``dag_id``, False when it has none.

    A row of the ``dag`` table counts, paused or stale (its file gone) alike: the question is
    whether the name is a DAG's at all, not whether it will run. None when this process cannot
    tell: it has no metadata DB configured, the DB has no ``dag`` table, or it cannot be read.
    """
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with create_session() as session:
            found = session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id).limit(1))
    except (RuntimeError, SQLAlchemyError) as err:
        # RuntimeError: Airflow set up no session in this process ("Session must be set before!").
        log.warning("cannot tell whether DAG %r exists, Airflow's metadata DB did not answer: %s", dag_id, err)
        return None
    return found is not None


def dag_being_defined(explicit: object = None) -> str | None:
    """The id of the DAG a task is being added to now: ``explicit`` (a ``dag=`` argument), else the open ``with DAG``.

    What a TaskFlow decorator's parse-time error names: the decorator runs inside the DAG's
    ``with`` block or ``@dag`` function, before any operator exists to ask. Airflow's context
    stack (``DagContext``) is internal; None outside any DAG.
    """
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    dag = explicit if explicit is not None else DagContext.get_current()
    dag_id = getattr(dag, "dag_id", None)
    return dag_id if isinstance(dag_id, str) else None

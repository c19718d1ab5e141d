"""Parse a folder of DAG files with Airflow's DagBag and print what it found, as JSON.

Run by ``tests/docs/test_examples.py`` in a child process whose ``AIRFLOW_HOME`` is a temporary
folder: Airflow reads its configuration once, at import, so the test process (which may have
imported Airflow with another home already) cannot parse in a clean one itself.

Usage: ``python tests/docs/dagbag_report.py DAG_FOLDER`` prints
``{"import_errors": {file: traceback}, "dags": {dag_id: {...}}}`` on stdout's last line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: Attribute of a task that means "an airflow-hitl gate" (our operators' module prefix).
OUR_PACKAGE = "airflow_hitl."


def describe_task(task: Any) -> dict[str, Any]:
    """What a test needs to know of one task: its class, neighbours and, for our gates, their options."""
    cls = type(task)
    found: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "ours": cls.__module__.startswith(OUR_PACKAGE),
        "upstream": sorted(task.upstream_task_ids),
        "all_upstream": sorted(task.get_flat_relative_ids(upstream=True)),
        "downstream": sorted(task.downstream_task_ids),
    }
    if found["ours"]:
        found["templated"] = {
            name: getattr(task, name) for name in task.template_fields if isinstance(getattr(task, name), str)
        }
        found["context_from"] = {name: source[0] for name, source in task.context_from.items()}
        found["branches"] = {str(outcome): list(ids) for outcome, ids in getattr(task, "branches", {}).items()}
        found["inputs"] = sorted(task.inputs)
    return found


def report(folder: str) -> dict[str, Any]:
    """Every DAG of ``folder`` and every import error, as DagBag sees them."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=folder)
    return {
        "import_errors": dict(bag.import_errors),
        "dags": {
            dag_id: {
                "file": dag.fileloc,
                "params": dag.params.dump(),
                "tasks": {task.task_id: describe_task(task) for task in dag.tasks},
            }
            for dag_id, dag in bag.dags.items()
        },
    }


if __name__ == "__main__":
    # Airflow logs to stdout while it fills the bag: the report is the last line.
    print("\n" + json.dumps(report(sys.argv[1]), default=str))

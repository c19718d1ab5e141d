"""The README's "Try it" walkthrough, executed as written, against Airflow started the demo's way.

The commands are not copied here: the test extracts the ``bash`` blocks of the README's
"Try it" section and runs them in one shell, in order, as a person pasting them would. The
Airflow stack is the e2e harness with the demo's own settings, read by sourcing
``scripts/demo-env.sh`` (users and roles, DAGs unpaused at creation, ports); only what keeps
the stack isolated (its temporary AIRFLOW_HOME, metadata DB, DAG folder and secrets) stays
the harness's. A walkthrough that stops working, or a demo setting that breaks it (DAGs
created paused, say), fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, AirflowHarness

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = REPO_ROOT / "README.md"
SECTION = "## Try it"
# The harness keeps these: they point at its own temporary folders and database.
HARNESS_OWNED = {
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
}


def walkthrough_blocks(readme: Path = README) -> list[str]:
    """The ``bash`` code blocks of the README's "Try it" section, in order."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else None]
    return re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)


def demo_settings(*, port: int, home: Path) -> dict[str, str]:
    """The environment ``scripts/demo-env.sh`` exports for a demo on ``port`` in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HITL_DEMO"))}
    env.update({"ROOT": str(REPO_ROOT), "HITL_DEMO_PORT": str(port), "AIRFLOW_HOME": str(home)})
    dump = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; source "$ROOT/scripts/demo-env.sh"; env -0'],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    exported = dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
    return {k: v for k, v in exported.items() if k.startswith("AIRFLOW__") and k not in HARNESS_OWNED}


def demo_users(settings: dict[str, str]) -> dict[str, str]:
    """``user -> role`` of the demo's SimpleAuthManager."""
    users = settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    return dict(pair.split(":", 1) for pair in users.split(","))


@pytest.fixture(scope="module")
def demo_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHarness]:
    """An Airflow configured as ``make demo`` configures it (plus the harness's isolation)."""
    root = tmp_path_factory.mktemp("airflow-demo")
    users = demo_users(demo_settings(port=8080, home=root / "unused"))
    harness = AirflowHarness(root=root, users=users)
    # The harness's own conveniences must not hide a demo setting: the demo decides this one.
    harness.env.pop("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", None)
    harness.env.update(demo_settings(port=harness.port, home=harness.home))
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def test_walkthrough_blocks_are_found() -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) >= 4
    assert any("/approve" in block for block in blocks)


def test_readme_walkthrough_runs_as_written(demo_airflow: AirflowHarness) -> None:
    script = "set -euo pipefail\n" + "\n".join(walkthrough_blocks())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "HITL": demo_airflow.base_url,
            "PASSWORDS": str(demo_airflow.home / "simple_auth_manager_passwords.json.generated"),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=demo_airflow.root, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + "\n" + demo_airflow.dump_logs(lines=40)

    run_id = re.search(r"bob triggered run (\S+)", output)
    assert run_id, output
    assert '{"detail":"you triggered this run and cannot approve it yourself"} (HTTP 403)' in output
    assert '{"state":"approved","decided_by":"alice","comment":"metrics look right"}' in output
    assert f"run {run_id.group(1)}: success" in output
    assert output.rstrip().endswith("deployed after approval by alice")

    # What the walkthrough says happened is what the store and Airflow recorded.
    [approval] = demo_airflow.approvals("hitl_model_release", run_id.group(1), "approve_release")
    assert (approval.state, approval.requested_by, approval.decided_by) == ("approved", "bob", "alice")
    assert [(v.user, v.vote) for v in approval.votes] == [("alice", "approve")]
    assert demo_airflow.dag_run("hitl_model_release", run_id.group(1))["state"] == "success"

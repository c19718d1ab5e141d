"""Small helpers shared by the unit tests."""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_hitl.manager import ApprovalSpec
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore

if TYPE_CHECKING:
    # Typing only: importing Airflow here would configure it before a test sets AIRFLOW_HOME.
    from airflow.triggers.base import TriggerEvent

    from airflow_hitl.triggers.approval import ApprovalTrigger


class Clock:
    """A clock the test moves by hand, so expiry is exact rather than slept for."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        """Move forward by ``timedelta(**delta)`` and return the new time."""
        self.now += dt.timedelta(**delta)
        return self.now


_counter = 0


def spec(**overrides: Any) -> ApprovalSpec:
    """An ApprovalSpec for a unique task try, with sensible defaults."""
    global _counter
    _counter += 1
    fields: dict[str, Any] = {
        "dag_id": "release",
        "run_id": f"manual__{_counter}",
        "task_id": "gate",
        "try_number": 1,
        "title": "Release model",
        "requested_by": "ricky",
    }
    fields.update(overrides)
    return ApprovalSpec(**fields)


#: A SQLite store migrated once in this process, copied by :func:`migrated_sqlite_url`.
_migrated_template: Path | None = None


def migrated_sqlite_url(path: Path) -> str:
    """The URL of a migrated, empty SQLite store at ``path`` (which must not exist yet).

    A copy of a store this process migrated once: a migration takes about 0.2 s of CPU, and a
    thousand tests start from a fresh store; the copy takes milliseconds and holds the very
    schema and revision that migrating gives.
    """
    global _migrated_template
    if _migrated_template is None:
        folder = Path(tempfile.mkdtemp(prefix="hitl-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = ApprovalStore(url=f"sqlite:///{folder / 'hitl.db'}")
        migrate(template)
        template.dispose()  # every connection closed: the file alone is the whole store
        _migrated_template = folder / "hitl.db"
    if path.exists():
        raise FileExistsError(f"{path} exists: a migrated store is copied only to a new file")
    shutil.copyfile(_migrated_template, path)
    return f"sqlite:///{path}"


class StatsdListener:
    """A UDP server that keeps every StatsD line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.lines.extend(data.decode().splitlines())

    def wait_for(self, prefix: str, *, timeout: float = 30.0) -> str:
        """The first line starting with ``prefix``, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            time.sleep(0.02)
        ours = [line for line in self.lines if ".hitl." in line]
        raise AssertionError(f"no StatsD line starting {prefix!r}; of {len(self.lines)} lines, ours: {ours}")

    def wait_for_count(self, name: str, count: int, *, timeout: float = 30.0) -> None:
        """Wait until metric ``name`` arrived at least ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.names().count(name) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} arrived {self.names().count(name)} times, not {count}")
            time.sleep(0.05)

    def names(self) -> list[str]:
        """The metric names received so far, in order."""
        return [line.split(":", 1)[0] for line in self.lines]

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


async def next_event(trigger: ApprovalTrigger, timeout: float = 30.0) -> TriggerEvent:
    """Run the trigger until its first event, as the triggerer would."""
    events = trigger.run()
    try:
        return await asyncio.wait_for(events.__anext__(), timeout)
    finally:
        await events.aclose()


async def first_event(trigger: ApprovalTrigger, timeout: float = 30.0) -> dict[str, Any]:
    """The payload of the trigger's first event."""
    return dict((await next_event(trigger, timeout)).payload)


def later(delay: float, fn: Any, *args: Any, **kwargs: Any) -> threading.Thread:
    """Call ``fn`` from another thread after ``delay`` seconds (a person deciding)."""

    def run() -> None:
        time.sleep(delay)
        fn(*args, **kwargs)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def parse_in_child(home: Path, files: Mapping[str, str]) -> dict[str, Any]:
    """DagBag's view (dag ids, import errors) of ``files`` written to ``home/dags``, parsed in a child process.

    A fresh AIRFLOW_HOME per call: Airflow reads its configuration once, at import, so the
    parse runs in a process of its own (``tests/docs/dagbag_report.py``), as a dag-processor does.
    """
    dags = home / "dags"
    dags.mkdir()
    for name, text in files.items():
        (dags / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW_HITL_STORE_URL": f"sqlite:///{home / 'hitl.db'}",
        }
    )
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("docs") / "dagbag_report.py"), str(dags)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))

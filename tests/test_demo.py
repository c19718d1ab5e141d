"""``make demo`` (scripts/demo.sh) as a person runs it: it starts, says where things are, and stops.

Each test starts the real demo on a free port in a temporary ``AIRFLOW_HOME`` (the settings of
``scripts/demo-env.sh``; nothing is written into the repository), waits for its banner (the
api-server answers and the example DAGs are unpaused), then ends it the way people do: a TERM
to the script, an INT to the script, a TERM to ``make`` (which passes it on), or Ctrl-C on
``make`` (the terminal sends INT to its whole process group). Within 15 s no process the demo
started may remain: every descendant of the top process seen while it ran, everything in their
sessions and process groups (Airflow moves task runners into groups of their own), and every
process whose environment names the temporary ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import REPO_ROOT, free_port, tail_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: What the issue asks: every component gone this long after the signal.
STOP_WITHIN = 15.0
#: Starting on a loaded machine (migrations, four Airflow components, DAGs parsed and unpaused).
READY_WITHIN = 360.0
StartDemo = Callable[[list[str]], "RunningDemo"]
BANNER = re.compile(r"^airflow-hitl demo: (http://\S+)", re.M)
#: The banner's last line: the lines before it (users, logs, CLI) are all printed once it is.
BANNER_END = re.compile(r"^ {2}\.venv/bin/airflow hitl evidence verify FILE ", re.M)


@dataclass
class RunningDemo:
    """A demo started by a test: its top process, where it writes, what it started."""

    popen: subprocess.Popen[bytes]
    home: Path
    output: Path
    #: Session and process group ids of every process seen under the top process.
    groups: set[int] = field(default_factory=set)

    def text(self) -> str:
        """Everything the demo printed so far."""
        return self.output.read_text(errors="replace")

    def diagnostics(self) -> str:
        """The demo's output and the end of each component's log, for a failure message."""
        logs = "".join(f"\n--- {log.name}\n{tail_file(log, 30)}" for log in sorted(self.home.glob("*.log")))
        return f"--- demo output\n{self.text()}{logs}"

    def remember_processes(self) -> None:
        """Record the sessions and process groups of the top process and all its descendants."""
        top = psutil.Process(self.popen.pid)
        for proc in [top, *top.children(recursive=True)]:
            try:
                self.groups.update({os.getsid(proc.pid), os.getpgid(proc.pid)})
            except ProcessLookupError:
                continue

    def leftovers(self) -> list[str]:
        """Live processes (zombies aside) of the demo's sessions and groups, or naming its home."""
        found = []
        for proc in psutil.process_iter(["pid", "status", "cmdline"]):
            pid = proc.info["pid"]
            if pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                ours = os.getsid(pid) in self.groups or os.getpgid(pid) in self.groups
                # A process that renames itself (setproctitle) may hide its environment: the
                # sessions and groups above catch those.
                ours = ours or proc.environ().get("AIRFLOW_HOME") == str(self.home)
            except (psutil.Error, ProcessLookupError):
                continue
            if ours:
                found.append(f"{pid}: {' '.join(proc.info['cmdline'] or [])[:120]}")
        return found

    def kill_everything(self) -> None:
        """Clean up after a failed test: KILL whatever of the demo is still running."""
        for _ in range(3):
            for line in self.leftovers():
                pid = int(line.split(":", 1)[0])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def demo_environment(home: Path) -> dict[str, str]:
    """A shell's environment without any Airflow or demo setting, plus the demo's home and port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HITL_DEMO", "_AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "HITL_DEMO_PORT": str(free_port()),
            # The DAG files of dags/ are parsed: leave no __pycache__ in the repository.
            "PYTHONDONTWRITEBYTECODE": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def signals_as_a_terminal_leaves_them() -> None:
    """In the demo's process, before it starts: INT and QUIT at their defaults, as in a terminal's job.

    A test run from a background job of a script without job control (a CI lane) inherits
    them ignored, and bash cannot trap a signal that was ignored when it started: the demo
    would not hear Ctrl-C there, whatever the script does.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[[list[str]], RunningDemo]]:
    """Start ``argv`` in the repository as a person would, wait for the banner; stop leftovers after."""
    started: list[RunningDemo] = []

    def start(argv: list[str]) -> RunningDemo:
        home = tmp_path / "airflow"
        output = tmp_path / "demo-output.txt"
        with output.open("wb") as sink:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=demo_environment(home),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal gives a foreground job
                preexec_fn=signals_as_a_terminal_leaves_them,
            )
        demo = RunningDemo(popen=popen, home=home, output=output)
        started.append(demo)
        deadline = time.monotonic() + READY_WITHIN
        # The banner is printed line by line (its users' table by a Python process): wait for its end.
        while not (BANNER.search(text := demo.text()) and BANNER_END.search(text)):
            demo.remember_processes()
            assert popen.poll() is None, f"the demo exited with {popen.returncode} before it was ready\n" + (
                demo.diagnostics()
            )
            assert time.monotonic() < deadline, "the demo was not ready in time\n" + demo.diagnostics()
            time.sleep(1)
        demo.remember_processes()
        return demo

    yield start
    for demo in started:
        demo.kill_everything()


def stop_and_wait(demo: RunningDemo, send: Callable[[], None]) -> tuple[int, float]:
    """Signal the demo (``send()``); wait until it and everything it started are gone."""
    demo.remember_processes()
    assert demo.leftovers(), "the demo's processes are not found: the check below would prove nothing"
    started = time.monotonic()
    send()
    left: list[str] = []
    while time.monotonic() - started < STOP_WITHIN:
        left = demo.leftovers()
        if demo.popen.poll() is not None and not left:
            return int(demo.popen.returncode), time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(
        f"{STOP_WITHIN:.0f} s after the signal the demo still runs (top process exit: {demo.popen.poll()}):\n"
        + "\n".join(left)
        + "\n"
        + demo.diagnostics()
    )


def run_shell_line(line: str) -> subprocess.CompletedProcess[str]:
    """Run a command line the banner printed from the repository, in a shell with nothing activated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HITL_DEMO", "_AIRFLOW", "VIRTUAL_ENV"))}
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        ["bash", "-c", line], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_term_to_the_script_stops_every_component_and_exits_0(start_demo: StartDemo) -> None:
    demo = start_demo(["bash", "scripts/demo.sh"])
    text = demo.text()

    # What the banner promises: one migration line, where the DAGs are, CLI lines that work as printed.
    assert len(re.findall(r"approval store", text)) == 1, text
    assert "DAGs: dags/ " in text, text
    [cli_list] = re.findall(r"^ {2}(AIRFLOW_HOME=\S+ \.venv/bin/airflow hitl approvals list)$", text, re.M)
    listed = run_shell_line(cli_list)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "hitl.db" not in listed.stderr, listed.stderr  # it found the demo's store, not a missing one

    code, took = stop_and_wait(demo, lambda: os.kill(demo.popen.pid, signal.SIGTERM))
    assert code == 0, demo.diagnostics()
    assert demo.text().rstrip().endswith("demo stopped"), demo.text()
    assert took < STOP_WITHIN


def test_interrupt_to_the_script_stops_every_component_and_exits_0(start_demo: StartDemo) -> None:
    demo = start_demo(["bash", "scripts/demo.sh"])
    # Only the script gets the INT: the components, in sessions of their own, must be stopped by it.
    code, _ = stop_and_wait(demo, lambda: os.kill(demo.popen.pid, signal.SIGINT))
    assert code == 0, demo.diagnostics()
    assert demo.text().rstrip().endswith("demo stopped"), demo.text()


def test_term_to_make_stops_every_component(start_demo: StartDemo) -> None:
    demo = start_demo(["make", "--no-print-directory", "demo"])
    code, _ = stop_and_wait(demo, lambda: os.kill(demo.popen.pid, signal.SIGTERM))
    # make passes the TERM on, waits for the script's clean stop, then ends by the signal it got
    # (GNU make re-raises it): the script itself finished its stop.
    assert code in (0, -signal.SIGTERM), demo.diagnostics()
    assert demo.text().rstrip().endswith("demo stopped"), demo.text()


def test_ctrl_c_on_make_stops_every_component(start_demo: StartDemo) -> None:
    demo = start_demo(["make", "--no-print-directory", "demo"])
    # Ctrl-C in a terminal: INT to the foreground process group (make and the script, not the
    # components, which run in sessions of their own).
    code, _ = stop_and_wait(demo, lambda: os.killpg(demo.popen.pid, signal.SIGINT))
    assert code in (0, -signal.SIGINT), demo.diagnostics()
    assert demo.text().rstrip().endswith("demo stopped"), demo.text()

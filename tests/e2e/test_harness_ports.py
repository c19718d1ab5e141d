"""tests/e2e/harness.free_port: ports picked by test processes running side by side never collide."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from tests.e2e import harness

HOLD = textwrap.dedent(
    """
    import sys
    from tests.e2e import harness
    assert harness._reserve(int(sys.argv[1]))
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    """
)


def _unused_port() -> int:
    # A port nobody in this process reserved yet (free_port reserves what it returns).
    while True:
        port = random.randint(20000, 30000)
        if not (harness.PORT_LOCKS / str(port)).exists():
            return port


def test_a_port_another_test_process_picked_is_never_picked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _unused_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(taken)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # The other process picked `taken` but its server has not bound it yet: the port is free.
        pick = random.randint
        picks = iter([taken])
        monkeypatch.setattr(random, "randint", lambda a, b: next(picks, None) or pick(a, b))
        assert harness.free_port() != taken
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert harness._reserve(taken), "free again once the process that picked it is gone"

"""Stop signals: during a process's start (status 0, not a kill) and after (its own stop)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from daemon.shutdown import on_stop_signals, stop_while_starting
    mode = sys.argv[1]
    if mode != "bare":
        stop_while_starting("test")
    if mode == "started":
        on_stop_signals(lambda: print("own stop called", flush=True), "test")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # a start that would go on (waiting on Redis, loading models)
    finally:
        print("finally ran", flush=True)
    sys.exit(3)  # reached only when the signal did not end the process
""")


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(("mode", "returncode", "printed"), [
    # Without it the default action kills the process by signal, mid-start.
    ("bare", -signal.SIGTERM, ""),
    # While starting: a clean exit with status 0 at once, finally blocks run.
    ("starting", 0, "finally ran\n"),
    # Once the process's own stop is installed, that stop is called and the process goes on.
    ("started", 3, "own stop called\nfinally ran\n"),
])
def test_a_stop_signal_while_starting_is_a_clean_exit(mode: str, returncode: int,
                                                      printed: str) -> None:
    done = _run(mode)
    assert done.returncode == returncode, done.stderr
    assert done.stdout == printed

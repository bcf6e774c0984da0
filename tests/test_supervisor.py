"""The supervisor's own life (issue 16): its children die with it, and its exit code says
whether they stopped cleanly. Real `leukoscope run` process trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon.cli.reliability import child_pids as children_of
from daemon.store.connection import stop_embedded
from tests.conftest import REPO, http_json, start_daemon, wait_for


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_children_die_with_a_killed_supervisor_and_the_next_run_starts(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    daemon = start_daemon(tmp_path / "d", tiny_models)
    second = None
    children: list[int] = []
    try:
        children = children_of(daemon.process.pid)
        assert len(children) == 3  # capture, one worker, API
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        # PR_SET_PDEATHSIG: each child gets SIGTERM and stops; no orphan keeps the port.
        wait_for(lambda: not any(alive(c) for c in children), 30, "the orphans to stop")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSCOPE_")}
        log = (tmp_path / "second.log").open("wb")
        second = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config",
                                   str(daemon.config)], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            try:
                return http_json(f"{daemon.api_url}/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, "the next leukoscope run on the same port and data")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for process in (second, daemon.process):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for pid in children:  # orphans, if the test failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        # The first supervisor started the embedded Redis and was killed: the second one
        # used it without owning it, so it is still running.
        stop_embedded(daemon.data_dir / "redis")


def test_sigterm_with_frames_in_flight_exits_0(tmp_path: Path,
                                               tiny_models: tuple[Path, Path]) -> None:
    from tests.conftest import synthetic_jpeg, write_frame

    daemon = start_daemon(tmp_path / "d", tiny_models)
    for i in range(6):
        write_frame(daemon.inbox / "S-TERM", f"f{i}.jpg", synthetic_jpeg(300 + i))
    wait_for(lambda: daemon.results(), 60, "the first result")  # the rest are in flight
    assert daemon.stop() == 0  # computed from the children's exits (was a constant)
    assert "child did not stop cleanly" not in daemon.log.read_text()


def test_sigkill_of_a_worker_holding_pending_frames_loses_nothing(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """The worker is killed while it holds delivered, unacknowledged frames (asserted from
    Redis right after the kill); every frame still ends done, stored once."""
    import redis

    from daemon.store import keys
    from daemon.store.connection import SOCKET_NAME
    from tests.conftest import synthetic_jpeg, write_frame

    daemon = start_daemon(tmp_path / "d", tiny_models, workers={"batch_frames": 4})
    client = redis.Redis(unix_socket_path=str(daemon.data_dir / "redis" / SOCKET_NAME))
    try:
        total = 120
        for i in range(total):
            write_frame(daemon.inbox / "S-KILL", f"f{i:03d}.jpg", synthetic_jpeg(500 + i))

        def worker_pid() -> int | None:
            for pid in children_of(daemon.process.pid):
                if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    return pid
            return None

        def held() -> int:
            return sum(int(c["pending"]) for c in
                       client.xinfo_consumers(keys.STREAM_KEY, keys.GROUP))

        pid = wait_for(worker_pid, 10, "the worker process")
        killed_holding = 0
        for _ in range(50):  # bounded: freeze the worker until it is caught holding frames
            wait_for(lambda: held() > 0 or len(daemon.results()) == total, 60,
                     "the worker to hold frames")
            os.kill(pid, signal.SIGSTOP)
            if held() > 0:  # frozen while holding them: now it dies with them
                os.kill(pid, signal.SIGKILL)
                killed_holding = held()
                break
            os.kill(pid, signal.SIGCONT)
        assert killed_holding > 0, "never killed the worker while it held frames"
        items = wait_for(lambda: (r := daemon.results()) and len(r) >= total and r, 120,
                         "every frame stored")
        names = [Path(r["source"]).name for r in items if "/S-KILL/" in r["source"]]
        assert len(names) == total == len(set(names))
        assert all(r["status"] == "done" for r in items)
        assert "child exited" in daemon.log.read_text()  # the supervisor restarted it
    finally:
        client.close()
        assert daemon.stop() == 0

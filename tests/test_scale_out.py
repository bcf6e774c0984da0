"""Two `leukoscope worker` processes on different hosts share one Redis (issue 6 scale-out)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis
import yaml

from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from tests.conftest import REPO, free_port, http_json, settings_dict, synthetic_jpeg, wait_for


def spawn(role: str, config: Path, log: Path, host: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSCOPE_")}
    if host:
        env["LEUKOSCOPE_HOSTNAME"] = host
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", role, "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_killed_worker_frames_are_taken_over_and_status_follows(
    tmp_path: Path, tiny_models: tuple[Path, Path], redis_url: str
) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    data = settings_dict(
        tmp_path,
        tiny_models,
        redis={"url": redis_url},
        api={"port": port},
        workers={"stale_after_seconds": 2, "forget_after_seconds": 4, "batch_frames": 4},
        queue={"claim_idle_seconds": 1.5},
    )
    config.write_text(yaml.safe_dump(data))
    client = redis.Redis.from_url(redis_url)
    queue = FrameQueue(client)
    n = 160
    frames = [synthetic_jpeg(i % 20, 1 + i % 3) for i in range(n)]
    api = spawn("api", config, tmp_path / "api.log")
    a = spawn("worker", config, tmp_path / "a.log", host="host-a")
    b = spawn("worker", config, tmp_path / "b.log", host="host-b")
    try:
        base = f"http://127.0.0.1:{port}"

        def workers() -> list[dict]:
            try:
                code, status = http_json(f"{base}/status")
            except OSError:
                return []
            return status["workers"] if code == 200 else []

        wait_for(lambda: len(workers()) == 2, 60, "both workers in /status")
        assert {w["host"] for w in workers()} == {"host-a", "host-b"}
        for i, data_bytes in enumerate(frames):
            queue.enqueue(f"f{i:04d}", "S1", f"/in/S1/{i}.jpg", "rig-1", data_bytes)
        store = ResultStore(client)
        wait_for(lambda: store.count() >= 10, 60, "processing to start")
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        wait_for(lambda: store.count() >= n, 120, "every frame after the kill")
        items, _ = store.page(None, 1000)
        assert len(items) == n and len({r.frame_id for r in items}) == n
        assert {r.worker for r in items} == {"host-a-w0", "host-b-w0"}
        assert queue.backlog() == 0 and queue.pending() == 0
        wait_for(
            lambda: [w["host"] for w in workers()] == ["host-b"], 30, "the dead worker to leave"
        )
    finally:
        for process in (a, b, api):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
    assert b.returncode == 0 and api.returncode == 0

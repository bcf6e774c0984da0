"""/readyz says whether this API process can serve (Redis answers); worker lag and backlog
are /status and alerts. ``?scope=installation`` keeps the former checks: Redis gone, no
worker, backlog over ``queue.ready_max_backlog``."""

from __future__ import annotations

from pathlib import Path

import redis

from daemon.api.app import create_app
from daemon.store import heartbeats, keys
from daemon.store.connection import stop_embedded
from daemon.store.queue import FrameQueue
from tests.conftest import serve_http


def test_readyz_is_per_process(make_settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """No worker and a backlog over the bound: this API process still serves, so it stays in
    its Service; Redis gone: it cannot."""
    settings = make_settings(queue={"ready_max_backlog": 3})
    queue = FrameQueue(redis_client)
    for i in range(4):
        queue.enqueue(f"p{i}", "S1", f"/in/{i}.jpg", "rig-1", b"x")
    with serve_http(create_app(settings, redis_client)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
        assert api.get("/readyz?scope=installation").status_code == 503
        assert api.get("/readyz?scope=everything").status_code == 422
        stop_embedded(tmp_path / "redis")
        gone = api.get("/readyz")
        assert gone.status_code == 503
        assert "redis unreachable" in gone.json()["reasons"][0]


def test_readyz_installation_scope_reasons(make_settings, redis_client: redis.Redis,
                                           tmp_path: Path) -> None:
    settings = make_settings(queue={"ready_max_backlog": 3})
    with serve_http(create_app(settings, redis_client)) as api:
        api.params = {"scope": "installation"}
        not_ready = api.get("/readyz")
        assert not_ready.status_code == 503
        assert "no worker" in " ".join(not_ready.json()["reasons"])

        heartbeats.beat(redis_client, keys.WORKERS_KEY, "w0", {
            "id": "w0", "host": "h", "provider": "CPUExecutionProvider", "frames_done": 0,
        })
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}

        queue = FrameQueue(redis_client)
        for i in range(4):
            queue.enqueue(f"f{i}", "S1", f"/in/{i}.jpg", "rig-1", b"x")
        over = api.get("/readyz")
        assert over.status_code == 503
        assert "over queue.ready_max_backlog (3)" in " ".join(over.json()["reasons"])

        stop_embedded(tmp_path / "redis")  # the fixture's server: Redis is gone
        gone = api.get("/readyz")
        assert gone.status_code == 503
        assert "redis unreachable" in gone.json()["reasons"][0]
        assert api.get("/healthz").status_code == 200  # the process itself still lives
        status = api.get("/status")
        assert status.status_code == 503 and "redis unavailable" in status.json()["detail"]

"""Who is alive: worker and capture heartbeats in Redis, read by /status, /readyz and metrics."""

from __future__ import annotations

import json
import os
import socket
import time

import redis


def host_name() -> str:
    """The host name shown in /status; LEUKOSCOPE_HOSTNAME overrides it (containers, tests)."""
    return os.environ.get("LEUKOSCOPE_HOSTNAME") or socket.gethostname()


def beat(client: redis.Redis, key: str, member: str, info: dict) -> None:
    client.hset(key, member, json.dumps({**info, "last_heartbeat": time.time()}))


def leave(client: redis.Redis, key: str, member: str) -> None:
    client.hdel(key, member)


def members(client: redis.Redis, key: str, stale_after: float | None = None) -> list[dict]:
    """Registered members with ``heartbeat_age_seconds`` and ``alive`` (age < stale_after)."""
    now = time.time()
    out = []
    for _, raw in sorted(client.hgetall(key).items()):
        info = json.loads(raw)
        age = max(0.0, now - float(info.get("last_heartbeat", 0)))
        info["heartbeat_age_seconds"] = round(age, 3)
        info["alive"] = stale_after is None or age < stale_after
        out.append(info)
    return out


def prune(client: redis.Redis, key: str, older_than: float) -> int:
    """Forget members silent for ``older_than`` seconds (a host that went away for good)."""
    gone = [m["id"] for m in members(client, key) if m["heartbeat_age_seconds"] > older_than]
    if gone:
        client.hdel(key, *gone)
    return len(gone)

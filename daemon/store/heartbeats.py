"""Who is alive: worker and capture heartbeats in Redis, read by /status, /readyz and metrics."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable

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


class Heartbeat:
    """One process's entry in a heartbeat hash, written at most every ``every`` seconds.

    ``beat(info)`` calls ``info()`` only when a beat is due (or forced) and adds ``id``,
    ``host`` and ``pid`` to what it returns.
    """

    def __init__(self, client: redis.Redis, key: str, member: str, every: float) -> None:
        self.client = client
        self.key = key
        self.member = member
        self.every = every
        self._last = 0.0

    def beat(self, info: Callable[[], dict], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        identity = {"id": self.member, "host": host_name(), "pid": os.getpid()}
        beat(self.client, self.key, self.member, {**identity, **info()})

    def leave(self) -> None:
        leave(self.client, self.key, self.member)

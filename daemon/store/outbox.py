"""The MLLP outbox's Redis state: ``lks:outbox`` and the ``outbox_*`` fields of a specimen.

``lks:outbox`` is a sorted set of specimen ids scored by the next attempt time (``+inf``: held
until an order names it); the specimen hash keeps ``outbox_attempts``, ``outbox_state``,
``outbox_last_error``, ``outbox_next_at`` and ``delivered_at``. Specimens enter the outbox in
the completion script (scripts/complete_specimen.lua); the sender in daemon/lis/mllp.py moves
them on with the functions below.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store.keys import OUTBOX_KEY, SPECIMEN_KEY


@dataclass(frozen=True)
class OutboxEntry:
    specimen_id: str
    next_at: float  # +inf: held until its order arrives
    attempts: int
    last_error: str | None


def pending(client: redis.Redis) -> int:
    return int(client.zcard(OUTBOX_KEY))


def due(client: redis.Redis, now: float, limit: int) -> list[str]:
    """Specimen ids whose next attempt is at or before ``now``, earliest first."""
    return [m.decode() for m in client.zrangebyscore(OUTBOX_KEY, "-inf", now, 0, limit)]


def drop(client: redis.Redis, specimen_id: str) -> None:
    client.zrem(OUTBOX_KEY, specimen_id)


def count_attempt(client: redis.Redis, specimen_id: str) -> int:
    """Count one more delivery attempt; returns the attempts so far."""
    return int(client.hincrby(SPECIMEN_KEY.format(specimen_id), "outbox_attempts", 1))


def schedule_retry(client: redis.Redis, specimen_id: str, error: str, next_at: float) -> None:
    """After a failed attempt (already counted): note the error and when to try again.

    ``xx``: a specimen taken out of the outbox meanwhile is not put back."""
    pipe = client.pipeline()
    pipe.hset(
        SPECIMEN_KEY.format(specimen_id),
        mapping={
            "outbox_state": "retrying",
            "outbox_last_error": error[:500],
            "outbox_next_at": repr(next_at),
        },
    )
    pipe.zadd(OUTBOX_KEY, {specimen_id: next_at}, xx=True)
    pipe.execute()


def mark_delivered(client: redis.Redis, specimen_id: str, at: float) -> None:
    """The LIS acknowledged the message: out of the outbox, the attempt counted, state kept."""
    key = SPECIMEN_KEY.format(specimen_id)
    pipe = client.pipeline()
    pipe.zrem(OUTBOX_KEY, specimen_id)
    pipe.hincrby(key, "outbox_attempts", 1)
    pipe.hset(key, mapping={"outbox_state": "delivered", "delivered_at": repr(at)})
    pipe.hdel(key, "outbox_next_at")
    pipe.execute()


def entries(client: redis.Redis) -> list[OutboxEntry]:
    """Everything in the outbox with its attempts so far and last error (for /status)."""
    found = []
    for member, score in client.zrange(OUTBOX_KEY, 0, -1, withscores=True):
        specimen_id = member.decode()
        raw = client.hmget(SPECIMEN_KEY.format(specimen_id), "outbox_attempts",
                           "outbox_last_error")
        attempts = int(float(raw[0])) if raw[0] else 0
        found.append(OutboxEntry(specimen_id, float(score), attempts,
                                 raw[1].decode() if raw[1] else None))
    return found

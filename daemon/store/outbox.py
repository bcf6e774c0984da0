"""The MLLP outbox's Redis state: ``lks:outbox`` and the ``outbox_*`` fields of a specimen.

``lks:outbox`` is a sorted set of specimen ids scored by the next attempt time (``+inf``: held
until an order names it); the specimen hash keeps ``outbox_attempts``, ``outbox_state``,
``outbox_last_error``, ``outbox_next_at`` and ``delivered_at``. Specimens enter the outbox in
the completion script (scripts/complete_specimen.lua); the sender in daemon/lis/mllp.py moves
them on with the functions below.

A message that fails for good (it cannot be built, the LIS rejects it with a code in
``lis.mllp.park_on``, or it failed ``lis.mllp.max_attempts`` times) is *parked*: moved from
``lks:outbox`` to ``lks:outbox:parked`` (the dead letters) with ``outbox_state: parked`` and
its reason, so it no longer takes the sender's time from other specimens. An operator sends it
again with :func:`retry` (``leukoscope outbox retry``, ``POST /lis/outbox/{id}/retry``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store.keys import OUTBOX_KEY, PARKED_KEY, SPECIMEN_KEY


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
    pipe.zrem(PARKED_KEY, specimen_id)  # a parked message later sent (its final report)
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


@dataclass(frozen=True)
class ParkedEntry:
    specimen_id: str
    parked_at: float
    attempts: int
    reason: str | None


PARKED_STATE = "parked"


def park(client: redis.Redis, specimen_id: str, reason: str, at: float) -> None:
    """Move a message that failed for good to the dead letters (attempt already counted)."""
    pipe = client.pipeline()
    pipe.zrem(OUTBOX_KEY, specimen_id)
    pipe.zadd(PARKED_KEY, {specimen_id: at})
    pipe.hset(SPECIMEN_KEY.format(specimen_id), mapping={
        "outbox_state": PARKED_STATE, "outbox_last_error": reason[:500]})
    pipe.hdel(SPECIMEN_KEY.format(specimen_id), "outbox_next_at")
    pipe.execute()


def parked(client: redis.Redis, limit: int | None = None) -> list[ParkedEntry]:
    """The dead letters, oldest first. A specimen whose final report re-entered the outbox
    after it was parked (sign-off) is listed only while its state is still ``parked``."""
    found = []
    end = -1 if limit is None else limit - 1
    for member, score in client.zrange(PARKED_KEY, 0, end, withscores=True):
        specimen_id = member.decode()
        raw = client.hmget(SPECIMEN_KEY.format(specimen_id), "outbox_state", "outbox_attempts",
                           "outbox_last_error")
        if raw[0] != PARKED_STATE.encode():
            continue
        found.append(ParkedEntry(specimen_id, float(score), int(float(raw[1] or 0)),
                                 raw[2].decode() if raw[2] else None))
    return found


def parked_count(client: redis.Redis) -> int:
    return int(client.zcard(PARKED_KEY))


def retry(client: redis.Redis, specimen_id: str, now: float) -> bool:
    """Put a parked message back in the outbox, due now, with its attempts at 0 (the
    operator fixed the cause). False when it is not parked. WATCH makes a concurrent
    retry or delivery of the same specimen a no-op rather than a second queue entry."""
    key = SPECIMEN_KEY.format(specimen_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(PARKED_KEY, key)
            if pipe.zscore(PARKED_KEY, specimen_id) is None or pipe.hget(
                    key, "outbox_state") != PARKED_STATE.encode():
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.zrem(PARKED_KEY, specimen_id)
            pipe.zadd(OUTBOX_KEY, {specimen_id: now})
            pipe.hset(key, mapping={"outbox_state": "pending", "outbox_attempts": 0})
            pipe.execute()
            return True
        except redis.WatchError:
            return False

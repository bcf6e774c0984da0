"""The audit trail: one append-only Redis stream of who read or ingested what, and when.

Entries survive Redis restarts with the rest of the data (AOF). ``GET /audit`` (admin)
pages them with a cursor. The stream is bounded by time and length (``audit.*``): the
housekeeping process takes the oldest entries with :func:`oldest`, appends them to files
(daemon/ops/housekeeping.py) and only then removes them with :func:`remove`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from pydantic import BaseModel

from daemon.domain.pages import Paged
from daemon.store import paging
from daemon.store.keys import AUDIT_KEY


class AuditEntry(BaseModel):
    cursor: str
    time: float
    key: str
    role: str
    action: str
    specimen_id: str | None = None
    frame_id: str | None = None
    detail: str | None = None
    client: str | None = None


class AuditPage(Paged, BaseModel):
    items: list[AuditEntry]
    next: str


def record(
    client: redis.Redis,
    key: str,
    role: str,
    action: str,
    *,
    specimen_id: str | None = None,
    frame_id: str | None = None,
    detail: str | None = None,
    address: str | None = None,
) -> str:
    fields = {"time": repr(time.time()), "key": key, "role": role, "action": action}
    for name, value in (
        ("specimen_id", specimen_id),
        ("frame_id", frame_id),
        ("detail", detail),
        ("client", address),
    ):
        if value is not None:
            fields[name] = value[:200]
    return client.xadd(AUDIT_KEY, fields).decode()


def append_past(client: redis.Redis, entries: Iterable[tuple[str, dict[str, str]]],
                chunk: int = 10_000) -> None:
    """Append ``(stream id, fields)`` entries with the ids given, pipelined ``chunk`` at a
    time: for tools that build a trail of the past (``leukoscope reliability``)."""
    pipe = client.pipeline(transaction=False)
    for i, (entry_id, fields) in enumerate(entries):
        pipe.xadd(AUDIT_KEY, fields, id=entry_id)
        if i % chunk == chunk - 1:
            pipe.execute()
    pipe.execute()


def page(client: redis.Redis, after: str | None, limit: int) -> tuple[list[AuditEntry], str]:
    """Audit entries after cursor ``after``; raises ``paging.BadCursor`` for a bad cursor."""
    entries = paging.entries_after(client, AUDIT_KEY, after, limit)
    return [_entry(e) for e in entries], paging.next_cursor(entries, after)


def length(client: redis.Redis) -> int:
    return int(client.xlen(AUDIT_KEY))


def oldest(client: redis.Redis, count: int, before: float | None = None) -> list[AuditEntry]:
    """Up to ``count`` of the oldest entries (only those before Unix time ``before``)."""
    top = "+" if before is None else f"({int(before * 1000)}-0"
    return [_entry(e) for e in client.xrange(AUDIT_KEY, min="-", max=top, count=count)]


def _entry(entry: paging.Entry) -> AuditEntry:
    entry_id, fields = entry
    return AuditEntry(cursor=entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()})


def remove(client: redis.Redis, cursors: list[str]) -> int:
    return int(client.xdel(AUDIT_KEY, *cursors)) if cursors else 0

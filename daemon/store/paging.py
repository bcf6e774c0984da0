"""Cursor paging over an append-only Redis stream (results log, specimen logs, audit).

A cursor is a stream entry id (``<ms>-<seq>``): a page holds the entries strictly after it,
oldest first, and its ``next`` is the id of its last entry, so a client that keeps passing
``next`` back sees every entry once, across restarts of the daemon and of Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis

from daemon.domain.ids import valid_cursor

START = "0-0"  # the cursor before the first entry

Entry = tuple[bytes, dict[bytes, bytes]]


class BadCursor(ValueError):
    """A cursor that is not of the form the API hands out."""


def entries_after(client: redis.Redis, stream: str, after: str | None, limit: int) -> list[Entry]:
    """Up to ``limit`` entries strictly after cursor ``after`` (None: from the oldest)."""
    if after is not None and not valid_cursor(after):
        raise BadCursor(f"malformed cursor {after!r}: expected the 'next' value of a page")
    start = "-" if after is None else f"({after}"
    return client.xrange(stream, min=start, max="+", count=limit)


def next_cursor(entries: list[Entry], after: str | None) -> str:
    """The cursor to continue from after ``entries`` (unchanged when the page is empty)."""
    return entries[-1][0].decode() if entries else after or START


def last_cursor(client: redis.Redis, stream: str) -> str:
    """The id of the newest entry ever added to ``stream`` (START if it does not exist)."""
    info = client.xinfo_stream(stream) if client.exists(stream) else None
    return info["last-generated-id"].decode() if info else START


def batches_before(client: redis.Redis, stream: str, before: float, batch: int
                   ) -> Iterator[list[Entry]]:
    """The entries of ``stream`` added before ``before`` (Unix s; entry ids are server
    times), oldest first, in lists of up to ``batch``. Each read starts after the last entry
    handed out, so the caller may delete or keep entries between batches (retention)."""
    top = f"({int(before * 1000)}-0"
    after = "-"
    while entries := client.xrange(stream, min=after, max=top, count=batch):
        yield entries
        after = "(" + entries[-1][0].decode()

"""The frame store: bytes of queued frames that are too large to sit in Redis.

A 1920x1280 camera JPEG is 0.3-1 MB and a lossless PNG page several MB; with the bytes in the
stream entry, Redis memory grows with queue length times frame size (256 queued 6.9 MB
frames: 1.7 GB). Above ``queue.inline_max_bytes`` the queue entry therefore carries only a
reference (``data_ref``, the file's name) and the bytes are a file in ``<data_dir>/frames/``.

Lifecycle: written (temporary name, fsync, rename) before the queue entry exists, read by the
worker that takes the entry, deleted by that worker only after the frame's result is stored.
A capture that dies between write and enqueue, or a worker that dies between store and
delete, leaves an orphan; :func:`sweep` (housekeeping) deletes files older than
``queue.frame_store_orphan_seconds`` whose frame has a result or is no longer in flight.

Several hosts: capture, API and workers must see the same ``data_dir/frames`` (a shared
filesystem such as NFS); an object store (S3, MinIO) keyed the same way is the option for
hosts without one, not built here.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import redis

from daemon.store.keys import INFLIGHT_KEY, RESULT_KEY, STREAM_KEY

_NAME = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


class MissingFrame(Exception):
    """The referenced frame is not in the store (deleted, or a host without the share)."""


class FrameStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, ref: str) -> Path:
        # A reference comes out of Redis: never let it name a path outside the store.
        if not _NAME.match(ref):
            raise MissingFrame(f"not a frame store reference: {ref!r}")
        return self.directory / ref

    def put(self, frame_id: str, data: bytes) -> str:
        """Store ``data`` under the frame's id; returns the reference for the queue entry.

        Written under a temporary name and renamed, so a reader never sees half a frame; the
        same frame stored again (a restarted capture) replaces it with the same bytes.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(frame_id)
        temporary = self.directory / f".{frame_id}.{os.getpid()}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            # The queue entry (Redis AOF) outlives a power cut; its bytes must too.
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        return frame_id

    def read(self, ref: str) -> bytes:
        try:
            return self.path(ref).read_bytes()
        except FileNotFoundError as exc:
            raise MissingFrame(f"frame {ref} is not in the frame store {self.directory} "
                               "(deleted, or this host does not share it)") from exc

    def delete(self, ref: str) -> None:
        try:
            self.path(ref).unlink(missing_ok=True)
        except MissingFrame:
            pass

    def files(self) -> list[Path]:
        try:
            return [p for p in self.directory.iterdir() if p.is_file()]
        except FileNotFoundError:
            return []

    def usage(self) -> tuple[int, int]:
        """(files, bytes) in the store."""
        sizes = []
        for p in self.files():
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                continue
        return len(sizes), sum(sizes)


def _referenced(client: redis.Redis, refs: set[str], chunk: int = 64) -> set[str]:
    """Which of ``refs`` a queue entry still names (read in chunks: inline entries are at
    most ``queue.inline_max_bytes`` each, and only run when there is a candidate)."""
    found: set[str] = set()
    start = "-"
    while True:
        entries = client.xrange(STREAM_KEY, min=start, max="+", count=chunk)
        for _, fields in entries:
            ref = fields.get(b"data_ref")
            if ref is not None and ref.decode() in refs:
                found.add(ref.decode())
        if len(entries) < chunk:
            return found
        start = "(" + entries[-1][0].decode()


def sweep(client: redis.Redis, store: FrameStore, older_than_seconds: float,
          now: float | None = None) -> int:
    """Delete orphaned frames; returns how many.

    A file is an orphan when it is older than ``older_than_seconds`` and its frame has a
    stored result (its worker died before deleting it), or has none and no queue entry names
    it (its capture died before queueing it; the original is still in the inbox and is
    offered again). A frame in flight without a result is kept whatever its age: a worker
    will read it. Temporary files of a write that died are deleted by age alone.
    """
    now = time.time() if now is None else now
    doomed: list[Path] = []
    unsure: dict[str, Path] = {}
    for path in store.files():
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < older_than_seconds:
            continue
        name = path.name
        if name.startswith("."):
            doomed.append(path)
        elif not _NAME.match(name):
            continue  # not ours: leave it
        elif client.exists(RESULT_KEY.format(name)):
            doomed.append(path)
        elif not client.hexists(INFLIGHT_KEY, name):
            unsure[name] = path  # no record: ask the queue itself (live cameras forget theirs)
    if unsure:
        kept = _referenced(client, set(unsure))
        doomed += [p for name, p in unsure.items() if name not in kept]
    for path in doomed:
        path.unlink(missing_ok=True)
    return len(doomed)

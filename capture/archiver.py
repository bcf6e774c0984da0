"""The archiver: moves an original out of the inbox once its frame's result is stored.

Done and failed frames go to ``<data_dir>/archive/<specimen_id>/``; frames a worker rejected
go to ``<data_dir>/quarantine/<specimen_id>/`` beside a reason file. The in-flight record is
dropped only after the file has moved, so a crash at any point is finished by the next
start's :meth:`Archiver.reconcile`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from capture.mover import move_file, write_reason
from daemon.domain.results import FrameResult
from daemon.imaging.frames import frame_id_for
from daemon.settings import REASON_SUFFIX
from daemon.store.connection import Outage
from daemon.store.queue import FrameQueue, Inflight
from daemon.store.results import LogEntry, ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """What the move of a finished frame's original needs to know of its result."""

    status: str | None  # None: no result found (archived, as done frames are)
    reason: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, result: FrameResult | None) -> Finished:
        if result is None:
            return cls(None)
        return cls(result.status, result.reason, result.error)


class Archiver:
    """Finishes frames of one rig: file to archive/quarantine, then forget the record."""

    def __init__(
        self,
        queue: FrameQueue,
        results: ResultStore,
        rig_id: str,
        archive_dir: Path,
        quarantine_dir: Path,
        owner: Callable[[Path], str | None] = lambda path: None,
        on_moved: Callable[[Path], None] = lambda path: None,
    ) -> None:
        self.queue = queue
        self.results = results
        self.rig_id = rig_id
        self.archive_dir = archive_dir
        self.quarantine_dir = quarantine_dir
        self.owner = owner
        self.on_moved = on_moved
        self.lock = threading.Lock()  # one file move at a time (archiver thread + capture loop)
        self.archived = 0
        self.quarantined = 0

    # --- file moves ---------------------------------------------------------------------
    def quarantine(
        self, path: Path, specimen_id: str, reason: str, message: str, frame_id: str
    ) -> Path:
        """Move ``path`` to quarantine beside ``<name>.reason.txt``; returns the new path."""
        with self.lock:
            target = move_file(
                path, self.quarantine_dir / specimen_id, path.name, companion=REASON_SUFFIX,
                before=lambda t: write_reason(t, reason, message, str(path), frame_id),
            )
            self.quarantined += 1
        self.on_moved(path)
        log.warning("frame quarantined", extra={
            "frame_id": frame_id, "specimen_id": specimen_id, "reason": reason,
            "source": str(path), "target": str(target),
        })
        return target

    def _belongs(self, path: Path, record: Inflight) -> bool:
        """Is the file at ``path`` still the frame of ``record`` (not a newer file)?"""
        if self.owner(path) == record.frame_id:
            return True
        try:
            data = path.read_bytes()
        except OSError:
            return False
        return frame_id_for(record.specimen_id, path.name, data) == record.frame_id

    def finish(self, record: Inflight, result: FrameResult | None) -> None:
        """Move the original of a frame whose ``result`` is stored, then forget the record
        (OSError, the record kept, when the file could not be moved)."""
        self._settle([self._move(record, Finished.of(result))])

    def finish_many(self, items: list[tuple[Inflight, Finished]]) -> None:
        """``finish`` for a batch of the results log: each file is moved, then where each
        went is recorded and every record forgotten in one Redis round trip (capture spent
        four round trips per frame on this; a 224x224 frame is analysed in ~15 ms of CPU). A
        file that cannot be moved is logged and keeps its record: the next reconcile
        retries it."""
        done = []
        for record, finished in items:
            try:
                done.append(self._move(record, finished))
            except OSError as exc:
                log.error("could not move a finished frame; the next reconcile retries",
                          extra={"frame_id": record.frame_id, "error": str(exc)})
        self._settle(done)

    def _move(self, record: Inflight, finished: Finished) -> tuple[Inflight, Path | None]:
        """Move the original to the archive (done, failed) or quarantine (rejected); returns
        the record and where the file went (None: not moved, nothing to move)."""
        path = Path(record.path)
        extra = {"frame_id": record.frame_id, "specimen_id": record.specimen_id}
        with self.lock:
            if not (path.is_file() and self._belongs(path, record)):
                if path.exists():
                    log.warning("file changed since it was queued; left in the inbox",
                                extra={**extra, "source": str(path)})
                else:
                    log.info("original already gone", extra={**extra, "source": str(path)})
                return record, None
            if finished.status == "rejected":
                target = move_file(
                    path, self.quarantine_dir / record.specimen_id, path.name,
                    companion=REASON_SUFFIX,
                    before=lambda t: write_reason(
                        t, finished.reason or "rejected", finished.error or "", str(path),
                        record.frame_id),
                )
                self.quarantined += 1
                log.warning("frame quarantined", extra={
                    **extra, "reason": finished.reason, "target": str(target)})
            else:
                target = move_file(path, self.archive_dir / record.specimen_id, path.name)
                self.archived += 1
                log.info("frame archived", extra={
                    **extra, "status": finished.status, "target": str(target)})
        return record, target

    def _settle(self, done: list[tuple[Inflight, Path | None]]) -> None:
        """Record where moved originals went (``archived_path``) and forget the records, in
        one round trip; the in-flight records go only now, after their files moved."""
        if not done:
            return
        try:
            self.results.record_moved([(record.frame_id, str(target))
                                       for record, target in done if target is not None])
            self.queue.forget_many([record.frame_id for record, _ in done])
        finally:
            for record, target in done:
                if target is not None:
                    self.on_moved(Path(record.path))

    # --- finding frames to finish -------------------------------------------------------
    def reconcile(self) -> int:
        """Finish every in-flight frame of this rig that already has a result."""
        done = 0
        for record in self.queue.inflight(self.rig_id):
            result = self.results.get(record.frame_id)
            if result is not None:
                self.finish(record, result)
                done += 1
        return done

    def handle(self, entries: list[LogEntry]) -> int:
        """Results were stored for ``entries`` (of the results log): finish those this rig
        queued, with one round trip for their records; returns how many."""
        if not entries:
            return 0
        records = self.queue.inflight_many([e.frame_id for e in entries])
        mine: list[tuple[Inflight, Finished]] = []
        for entry, record in zip(entries, records, strict=True):
            if record is None or record.rig_id != self.rig_id:
                continue
            if entry.status == "rejected":  # the reason note needs the result (rare)
                mine.append((record, Finished.of(self.results.get(entry.frame_id))))
            else:  # archived: the log entry's status is all the move needs
                mine.append((record, Finished(entry.status)))
        self.finish_many(mine)
        return len(mine)

    def follow(self, cursor: str, stopping: threading.Event, block_ms: int = 500) -> None:
        """Tail the results log from ``cursor`` until ``stopping`` is set."""
        outage = Outage("archiver", rig=self.rig_id)
        while not stopping.is_set():
            try:
                entries = self.results.wait_after(cursor, block_ms)
                outage.ok()
            except redis.RedisError as exc:
                stopping.wait(outage.failed(exc))
                continue
            try:
                self.handle([e for e in entries if not e.rig or e.rig == self.rig_id])
            except redis.RedisError as exc:
                # The cursor stays before these entries: they are handled again (a file
                # already moved is "already gone" then, and its record is forgotten).
                stopping.wait(outage.failed(exc))
                continue
            if entries:
                cursor = entries[-1].cursor

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
from pathlib import Path

import redis

from capture.mover import move_file, write_reason
from daemon.domain.results import FrameResult
from daemon.imaging.frames import frame_id_for
from daemon.store.connection import Outage
from daemon.store.queue import FrameQueue, Inflight
from daemon.store.results import ResultStore

log = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.txt"


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
        """Move the original of a frame whose ``result`` is stored, then forget the record."""
        path = Path(record.path)
        extra = {"frame_id": record.frame_id, "specimen_id": record.specimen_id}
        moved = False
        with self.lock:
            if path.is_file() and self._belongs(path, record):
                if result is not None and result.status == "rejected":
                    target = move_file(
                        path, self.quarantine_dir / record.specimen_id, path.name,
                        companion=REASON_SUFFIX,
                        before=lambda t: write_reason(
                            t, result.reason or "rejected", result.error or "", str(path),
                            record.frame_id),
                    )
                    self.quarantined += 1
                    log.warning("frame quarantined", extra={
                        **extra, "reason": result.reason, "target": str(target)})
                else:
                    target = move_file(path, self.archive_dir / record.specimen_id, path.name)
                    self.archived += 1
                    log.info("frame archived", extra={
                        **extra, "status": result.status if result else None,
                        "target": str(target)})
                moved = True
                try:
                    ResultStore(self.queue.client).record_moved(record.frame_id, str(target))
                except Exception:  # the move is done; only the pointer to it is missing
                    log.warning("could not record where the original went", extra=extra)
            elif path.exists():
                log.warning("file changed since it was queued; left in the inbox",
                            extra={**extra, "source": str(path)})
            else:
                log.info("original already gone", extra={**extra, "source": str(path)})
            self.queue.forget(record.frame_id)
        if moved:
            self.on_moved(path)

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

    def handle(self, frame_id: str) -> bool:
        """A result for ``frame_id`` was stored: finish it if this rig queued it."""
        record = self.queue.inflight_of(frame_id)
        if record is None or record.rig_id != self.rig_id:
            return False
        self.finish(record, self.results.get(frame_id))
        return True

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
            for entry in entries:
                try:
                    if not entry.rig or entry.rig == self.rig_id:
                        self.handle(entry.frame_id)
                except redis.RedisError as exc:
                    stopping.wait(outage.failed(exc))
                    break  # the cursor stays before this entry: it is handled again
                except OSError as exc:
                    log.error("could not move a finished frame; the next reconcile retries",
                              extra={"frame_id": entry.frame_id, "error": str(exc)})
                cursor = entry.cursor

"""The capture process: watched folder in, frames on the Redis queue, originals archived.

Start-up order matters for "never re-queue a stored frame, never skip an unstored one": the
results-log cursor is taken first, then in-flight frames that already have results are
finished (reconcile), then the archiver tails the log from that cursor while the loop takes
files from the inbox. A file still in the inbox is read and offered to the queue; the queue
answers 'stored' for a frame with a result (it is archived at once) and 'queued' for one
already waiting, so nothing is queued twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from capture.archiver import Archiver
from capture.intake import Frames, Intake, derived_frame_id, expand
from capture.layout import BAD_LOCATION, is_image_name
from capture.markers import MarkerScanner
from capture.mover import move_file
from capture.watcher import InboxWatcher, Ready
from daemon.domain.ids import UNASSIGNED
from daemon.domain.results import FrameResult
from daemon.imaging.frames import (
    IMAGE_SUFFIXES,
    FrameRejected,
    check_encoded,
    frame_id_for,
    printable_name,
)
from daemon.settings import Settings
from daemon.shutdown import on_stop_signals
from daemon.store import counters, heartbeats, keys
from daemon.store.connection import Outage, connect, server_run_id
from daemon.store.queue import FrameQueue, Inflight
from daemon.store.results import ResultStore
from daemon.store.specimens import SpecimenStore

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
RECONCILE_SECONDS = 30.0
BACKPRESSURE_POLL_SECONDS = 0.25
UNREADABLE = "unreadable"  # capture's reason code for a file it may not read
FULL = "full"  # take()'s answer when the queue has no room for the file's frame (not taken)


class CaptureService:
    """One rig's capture loop. ``run()`` blocks until ``stop()`` (thread-safe) is called."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.rig_id = settings.capture.rig_id
        self.inbox = Path(os.path.abspath(settings.capture.directory))
        self.client = client if client is not None else connect(settings)
        self.queue = FrameQueue.for_settings(self.client, settings)
        self.results = ResultStore(self.client)
        self.watcher = InboxWatcher(
            self.inbox,
            settle_seconds=settings.capture.settle_seconds,
            poll_seconds=settings.capture.poll_seconds,
            native_events=settings.capture.native_events,
            exclude=[settings.data_dir],
            empty_folder_seconds=settings.capture.empty_folder_seconds,
        )
        self.archiver = Archiver(
            self.queue, self.results, self.rig_id,
            Path(os.path.abspath(settings.archive_dir)),
            Path(os.path.abspath(settings.quarantine_dir)),
            owner=self.watcher.owner, on_moved=self.watcher.moved_away,
        )
        self.intake = Intake(settings, self.client, self.queue, self.results, self.rig_id)
        self.markers = MarkerScanner(
            self.inbox,
            SpecimenStore(self.client, mllp_enabled=settings.lis.mllp is not None),
            settings.specimens.complete_grace_seconds,
            settings.capture.poll_seconds,
        )
        self.stopping = threading.Event()
        self.state = "starting"
        self.frames_queued = 0
        self.passes = 0  # loop ticks done (paused or not): tests wait on it rather than sleep
        self.frames_rejected = 0
        self.started_at = time.time()
        self._archiver_thread: threading.Thread | None = None
        self._run_id: str | None = None
        self._next_run_id_check = 0.0
        self.heart = heartbeats.Heartbeat(
            self.client, keys.CAPTURES_KEY, self.rig_id, HEARTBEAT_SECONDS
        )

    # --- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking frames; ``run()`` returns within about a second."""
        self.stopping.set()
        self.watcher.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop (main thread only)."""

        on_stop_signals(self.stop, "capture")

    def run(self) -> None:
        """Reconcile, then watch the inbox until stopped."""
        cursor = self.results.last_cursor()
        finished = self.archiver.reconcile()
        log.info("capture started", extra={
            "rig": self.rig_id, "directory": str(self.inbox), "reconciled": finished})
        self.watcher.start()
        self._archiver_thread = threading.Thread(
            target=self.archiver.follow, args=(cursor, self.stopping),
            name="capture-archiver", daemon=True,
        )
        self._archiver_thread.start()
        self.state = "watching"
        next_reconcile = time.monotonic() + RECONCILE_SECONDS

        def tick() -> float:
            nonlocal next_reconcile
            self.heartbeat()
            self.check_redis_restart()
            self.markers.maybe_scan()  # .complete files complete their specimen
            if time.monotonic() >= next_reconcile:
                self.archiver.reconcile()
                next_reconcile = time.monotonic() + RECONCILE_SECONDS
            paused = not self.step()
            self.passes += 1  # loop passes, counted for those who wait on one (tests)
            if paused:  # the backlog is full
                return BACKPRESSURE_POLL_SECONDS
            self.watcher.wait(self.watcher.tick_seconds())  # until files change, or a tick
            return 0.0

        try:
            Outage("capture", rig=self.rig_id).run(self.stopping, tick)
        finally:
            # The archiver (stopping is set) moves its last files first; then the watcher
            # stops, once watchdog has reported those moves (InboxWatcher.stop says why).
            self._archiver_thread.join(timeout=5)
            self.watcher.stop()
            self.state = "stopped"
            try:
                self.heartbeat(force=True)
            except redis.RedisError:
                pass
            log.info("capture stopped", extra={
                "rig": self.rig_id, "frames_queued": self.frames_queued,
                "frames_rejected": self.frames_rejected})

    # --- one pass -----------------------------------------------------------------------
    def step(self) -> bool:
        """Take every complete file the backlog has room for; False while paused."""
        bound = self.settings.queue.max_backlog
        backlog = self.queue.backlog()
        if backlog >= bound:
            self._set_state("paused_backpressure", backlog)
            return False
        if not self._room_on_disk(backlog):
            return False
        self._set_state("watching", backlog)
        for ready in self.watcher.ready():
            if self.stopping.is_set():
                break
            if backlog >= bound:
                self._set_state("paused_backpressure", backlog)
                return False
            if not self._room_on_disk(backlog):
                return False
            outcome = self.take_safely(ready)
            if outcome == FULL:  # HTTP pushes hold the room left (admission, see take)
                self._set_state("paused_backpressure", self.queue.backlog())
                return False
            if outcome == "new":
                # frames, not files: a multi-page TIFF or a CZI queued one frame per page;
                # the queue's length as its last enqueue left it, with no XLEN more
                backlog = self.queue.backlog_seen
        return True

    def take_safely(self, ready: Ready) -> str | None:
        """``take``, where anything but a Redis outage rejects this one file, never the loop:
        one file (a decoder bug, an odd name) must not stop every folder behind it."""
        try:
            return self.take(ready)
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            log.exception("could not take a file; rejecting it", extra={
                "source": printable_name(str(ready.placement.path))})
            try:
                return self.reject(ready, b"", "unreadable",
                                   f"capture failed on this file: {type(exc).__name__}: {exc}")
            except redis.RedisError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("could not reject a file either; it is skipped until it changes")
                self.watcher.taken(ready, "skipped")
                return None

    def _room_on_disk(self, backlog: int) -> bool:
        """False (and paused) while the data disk is under queue.min_free_bytes: the files
        wait in the inbox, nothing is taken that could not be stored."""
        ok = self.intake.disk_room.check().ok
        if not ok:
            self._set_state("paused_disk_low", backlog)
        return ok

    def _set_state(self, state: str, backlog: int) -> None:
        if state != self.state:
            log.info("capture state", extra={"state": state, "backlog": backlog})
            self.state = state
            self.heartbeat(force=True)

    def take(self, ready: Ready) -> str | None:
        """Handle one complete file: queue it, archive it (already stored) or reject it.

        Returns the queue's answer ('new', 'queued', 'stored'), 'rejected', FULL when the
        queue has no room for it (it is offered again), or None when the file vanished or
        changed while it was read.
        """
        placement = ready.placement
        path = placement.path
        limit = self.settings.capture.max_frame_bytes
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
            st = path.stat()
        except FileNotFoundError:
            self.watcher.release(path)
            return None
        except OSError as exc:
            return self.reject(ready, b"", UNREADABLE, f"cannot read the file: {exc.strerror}")
        if (st.st_size, st.st_mtime_ns) != (ready.size, ready.mtime_ns):
            self.watcher.unsettle(path)  # still being written after all
            return None
        if placement.problem is not None:
            return self.reject(ready, data, BAD_LOCATION, placement.problem)
        if printable_name(str(path)) != str(path):
            return self.reject(ready, data, "bad_name", "the file name is not valid UTF-8 "
                               f"({printable_name(placement.name)}); rename it and drop it again")
        if st.st_size > limit:
            return self.reject(
                ready, data, "too_large", f"{st.st_size} bytes exceeds the limit of {limit}")
        if not is_image_name(placement.name):
            kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
            return self.reject(ready, data, "not_an_image",
                               f"file name suffix is not a frame type ({kinds})")
        try:
            check_encoded(data, limit)
            frames = expand(data, self.settings)
            if frames.container:
                return self.take_container(ready, data, frames)
            (frame,) = frames
        except FrameRejected as exc:
            return self.reject(ready, data, exc.reason, exc.message)
        # No decoding and no quality control here: the worker decodes the frame once, for
        # both; a frame it rejects comes back through the archiver into quarantine.
        frame_id = frame_id_for(placement.specimen_id, placement.name, data)
        extra = {"frame_id": frame_id, "specimen_id": placement.specimen_id}
        # Admitted by the script HTTP pushes use (queue.admission): a push reserves its
        # frames while its file is decoded, and the backlog capture sees counts them, so
        # pushes and capture together never pass queue.max_backlog.
        with self.queue.admission(1, self.settings.queue.max_backlog) as (admitted, _):
            if not admitted:
                return FULL
            outcome = self.queue.enqueue(
                frame_id, placement.specimen_id, str(path), self.rig_id, data, time.time(),
                um_per_pixel=self.intake.scale_of(frame))
        if outcome == "stored":
            log.info("frame already has a result; archiving", extra=extra)
            record = Inflight(frame_id, str(path), self.rig_id, placement.specimen_id)
            self.watcher.taken(ready, frame_id)
            self.archiver.finish(record, self.results.get(frame_id))
            return outcome
        self.watcher.taken(ready, frame_id)
        if outcome == "new":
            self.frames_queued += 1
            log.info("frame queued", extra={**extra, "source": str(path), "bytes": len(data)})
        else:
            log.info("frame already queued", extra=extra)
        return outcome

    def take_container(self, ready: Ready, data: bytes, frames: Frames) -> str:
        """A CZI or multi-page/>8-bit TIFF: offer each frame, then archive the file at once.

        Its frames travel as PNG bytes, so the file is not needed once they are all queued
        (or rejected: a worker's QC rejection of one page is a result only, the file is
        archived).
        A crash before the move re-reads the file; the queue answers 'queued' or 'stored'.
        Frames are decoded one at a time. A page that cannot be read after others were
        queued gets its own 'rejected' result and the file is archived with the rest.
        """
        placement = ready.placement
        path = placement.path
        outcomes: dict[str, int] = {}
        now = time.time()
        first_label: str | None = None
        count = 0
        produce = iter(frames)
        while True:
            try:
                frame = next(produce)
            except StopIteration:
                break
            except FrameRejected as exc:
                if not count:
                    raise  # nothing of the file was taken: the whole file is rejected
                label = f"p{count}"
                frame_id = derived_frame_id(placement.specimen_id, placement.name, label, data)
                self.intake.store_rejected(frame_id, placement.specimen_id,
                                           f"{path}#{label}", exc.reason, exc.message)
                outcomes["rejected"] = outcomes.get("rejected", 0) + 1
                break
            count += 1
            first_label = first_label or frame.label
            frame_id = derived_frame_id(placement.specimen_id, placement.name, frame.label, data)
            with self.room() as admitted:
                if not admitted:  # stopping: the file stays; its queued pages answer 'queued'
                    return None
                # Quality control is the worker's, on the page it decodes for analysis.
                offer = self.intake.offer(frame, frame_id, placement.specimen_id,
                                          f"{path}#{frame.label}", now, check=False)
            outcomes[offer.outcome] = outcomes.get(offer.outcome, 0) + 1
        self.frames_queued += outcomes.get("new", 0)
        self.frames_rejected += outcomes.get("rejected", 0)
        try:
            with self.archiver.lock:
                target = move_file(path, self.archiver.archive_dir / placement.specimen_id,
                                   placement.name)
                self.archiver.archived += 1
        except OSError as exc:
            log.error("could not archive a multi-frame file; leaving it in the inbox", extra={
                "source": str(path), "error": str(exc)})
            self.watcher.taken(ready, derived_frame_id(
                placement.specimen_id, placement.name, first_label, data))
            return "new" if outcomes.get("new") else next(iter(outcomes), "stored")
        self.watcher.moved_away(path)
        log.info("multi-frame file queued and archived", extra={
            "specimen_id": placement.specimen_id, "source": str(path), "target": str(target),
            "frames": count, **outcomes})
        return "new" if outcomes.get("new") else next(iter(outcomes), "stored")

    @contextlib.contextmanager
    def room(self) -> Iterator[bool]:
        """Room for one page of a container, admitted as HTTP pushes are; waits while the
        queue is full (the pages before it are queued, and a page is held decoded only one
        at a time), so a file of more pages than the room left, or than max_backlog, goes
        in as the workers make room and never passes the bound. False: stopping."""
        bound = self.settings.queue.max_backlog
        while True:
            with self.queue.admission(1, bound) as (admitted, backlog):
                if admitted:
                    self._set_state("watching", backlog)
                    yield True
                    return
            if self.stopping.is_set():
                yield False
                return
            self._set_state("paused_backpressure", backlog)
            self.heartbeat()
            self.stopping.wait(BACKPRESSURE_POLL_SECONDS)

    def reject(self, ready: Ready, data: bytes, reason: str, message: str,
               quality: dict[str, float] | None = None) -> str:
        """Store a 'rejected' result for the file, then quarantine it beside the reason."""
        placement = ready.placement
        path = placement.path
        name = placement.name if placement.problem is None else str(
            path.relative_to(self.inbox))
        specimen = placement.specimen_id if placement.problem is None else UNASSIGNED
        frame_id = frame_id_for(specimen, name, data)
        now = time.time()
        result = FrameResult(
            frame_id=frame_id, specimen_id=specimen, source=printable_name(str(path)),
            rig_id=self.rig_id, status="rejected", error=printable_name(message), reason=reason,
            captured_at=now, completed_at=now, models={}, quality=quality,
        )
        captured = counters.counter("leukoscope_frames_captured_total", {"rig": self.rig_id})
        if self.results.store(result, extra=captured):
            self.frames_rejected += 1
        try:
            self.archiver.quarantine(path, specimen, reason, message, frame_id)
        except OSError as exc:
            log.error("could not quarantine a rejected file; leaving it in the inbox", extra={
                "frame_id": frame_id, "specimen_id": specimen, "error": str(exc)})
            self.watcher.taken(ready, frame_id)  # not offered again until it changes
        return "rejected"

    def check_redis_restart(self) -> None:
        """After Redis restarted (its run id changed), offer every taken file again: the
        last second of writes before a crash may be lost from the AOF, and a file whose
        queue entry was lost would otherwise wait in the inbox until capture restarts."""
        now = time.monotonic()
        if now < self._next_run_id_check:
            return
        self._next_run_id_check = now + HEARTBEAT_SECONDS
        run_id = server_run_id(self.client)
        if self._run_id is not None and run_id != self._run_id:
            count = self.watcher.reoffer_all()
            log.warning("redis restarted; offering taken files again", extra={"files": count})
            self.archiver.reconcile()
        self._run_id = run_id

    # --- heartbeat ----------------------------------------------------------------------
    def heartbeat(self, force: bool = False) -> None:
        self.heart.beat(lambda: {
            "state": self.state, "directory": str(self.inbox),
            "frames_queued": self.frames_queued, "frames_rejected": self.frames_rejected,
            "frames_archived": self.archiver.archived,
            "frames_quarantined": self.archiver.quarantined,
            "native_events": self.watcher.using_events, "started_at": self.started_at,
        }, force)


def run_capture(settings: Settings) -> int:
    """``leukoscope capture``: run until SIGTERM/SIGINT; 0 on a clean stop, 1 on failure."""
    try:
        if settings.capture.source == "opencv":
            from capture.stream import StreamCapture

            service: CaptureService | StreamCapture = StreamCapture(settings)
        else:
            service = CaptureService(settings)
    except (redis.RedisError, RuntimeError, OSError) as exc:
        log.error("capture cannot start", extra={"error": str(exc)})
        return 1
    if threading.current_thread() is threading.main_thread():
        service.install_signal_handlers()
    try:
        service.run()
    except Exception:
        log.exception("capture failed")
        return 1
    return 0

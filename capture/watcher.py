"""The inbox watcher: finds files that are complete and not yet handed to capture.

A file is complete once its size and mtime have not changed for ``settle_seconds``, or as
soon as it is renamed into place (write-then-rename delivery). Native file-system events
(watchdog) make this prompt; a full rescan every ``poll_seconds`` is the fallback that also
covers network shares, which send no events. Events are only hints: every decision is made
from ``stat``, so a missed or spurious event can delay a file but never hand over a partial
one.

A specimen folder that has stayed empty for ``empty_folder_seconds`` (by its own mtime: the
last file added or moved out) is removed by the rescan. Without that the inbox keeps one
folder per specimen for ever, and every rescan, inotify watch and marker scan visits each of
them: at 10,000 empty folders one local rescan took 0.3-0.4 s of a core, every
``poll_seconds``, and a network share pays a round trip per folder.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from capture.layout import Placement, is_ignored_name, place
from daemon import telemetry
from daemon.imaging.frames import printable_name

log = logging.getLogger(__name__)

#: How long ``stop`` waits at most for watchdog to report files capture moved out of the
#: inbox (watchdog holds an IN_MOVED_FROM 0.5 s for its IN_MOVED_TO before it reports it).
MOVES_SETTLE_SECONDS = 2.0


@dataclass
class _Track:
    size: int
    mtime_ns: int
    since: float  # clock time this (size, mtime) was first seen
    renamed: bool = False  # arrived by a rename into place: complete at once
    frame_id: str | None = None  # set once handed over; not offered again while unchanged


@dataclass(frozen=True)
class Ready:
    """A complete file: where it sits and the stat it was judged complete by."""

    placement: Placement
    size: int
    mtime_ns: int


class InboxWatcher:
    """Tracks files under ``inbox``; :meth:`ready` returns the complete ones, oldest first."""

    def __init__(
        self,
        inbox: Path,
        settle_seconds: float,
        poll_seconds: float,
        native_events: bool = True,
        exclude: Iterable[Path] = (),
        clock: Callable[[], float] = time.monotonic,
        empty_folder_seconds: float = 0.0,
    ) -> None:
        self.inbox = Path(os.path.abspath(inbox))
        self.empty_folder_seconds = empty_folder_seconds  # 0: empty folders stay
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self.rescans = 0  # full rescans done: tests wait on it rather than sleep
        self.folders_removed = 0  # empty folders removed (as the metric): tests read it
        self.native_events = native_events
        self.exclude = {Path(os.path.abspath(p)) for p in exclude}
        self._exclude_prefixes = tuple(os.path.join(p, "") for p in map(str, self.exclude))
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._files: dict[Path, _Track] = {}
        self._skipped_paths: set[Path] = set()
        self._hinted: set[Path] = set()
        self._renamed: set[Path] = set()
        self._rescan_now = True
        self._next_rescan = 0.0
        self._observer = None
        # Files capture moved out of the inbox that watchdog has not reported yet (path ->
        # when): stop() waits for them (see there). Guarded by _lock; _moves_reported wakes it.
        self._moved_out: dict[str, float] = {}
        self._moves_reported = threading.Condition(self._lock)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the inbox if needed and start native events (when enabled and available)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        if self.empty_folder_seconds > 0:  # exported at 0 from the start, not from a removal
            telemetry.metric("leukoscope_inbox_folders_removed_total")
        if not self.native_events:
            log.info("watching by polling only", extra={"directory": str(self.inbox)})
            return
        try:
            from watchdog.observers import Observer

            observer = Observer()
            observer.schedule(_Handler(self), str(self.inbox), recursive=True,
                              event_filter=_hint_events())
            observer.start()
            self._observer = observer
            log.info("watching with native events and polling",
                     extra={"directory": str(self.inbox), "observer": type(observer).__name__})
        except Exception as exc:  # noqa: BLE001 - any failure leaves polling, which always works
            log.warning("native file events unavailable, polling only",
                        extra={"directory": str(self.inbox), "error": str(exc)})
            self._observer = None

    def stop(self) -> None:
        """Stop native events: once watchdog has reported capture's last moves, then the
        observer (stop, join), as watchdog asks.

        The wait is what keeps watchdog quiet. It holds a file's IN_MOVED_FROM for 0.5 s in
        case the matching IN_MOVED_TO follows (a rename inside the watched tree); capture's
        moves out of the inbox (archive, quarantine) never get one. An emitter stopped
        while it sleeps out that delay wakes with the event after the stop cleared its
        inotify group, and logs "InotifyEmitter.queue_events() called when the thread is
        inactive" at error level: after nearly every stop shortly after an archived frame.
        So capture's archiver stops moving first (capture.service), this waits, bounded,
        until every move it was told of (``moved_away``) came back as an event, and only
        then is the observer stopped, its emitters blocked on an empty queue."""
        observer, self._observer = self._observer, None
        if observer is not None:
            self._wait_for_moves(MOVES_SETTLE_SECONDS)
            observer.stop()
            observer.join(timeout=5)
        self._wake.set()

    def _wait_for_moves(self, timeout: float) -> bool:
        """Wait until watchdog reported every recent move out (True), or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._moves_reported:
            while True:
                now = time.monotonic()
                for path, at in list(self._moved_out.items()):
                    if now - at > MOVES_SETTLE_SECONDS:  # never reported: not waited for
                        del self._moved_out[path]
                if not self._moved_out:
                    return True
                if now >= deadline:
                    return False
                self._moves_reported.wait(deadline - now)

    @property
    def using_events(self) -> bool:
        return self._observer is not None

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early on a file event or :meth:`wake`."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def tick_seconds(self) -> float:
        """How often the capture loop should call :meth:`ready` to see files settle."""
        return max(0.02, min(self.settle_seconds / 4, self.poll_seconds, 0.5))

    # --- event hints (watchdog thread) --------------------------------------------------
    def _hint(self, path: str, renamed: bool = False) -> None:
        with self._lock:
            (self._renamed if renamed else self._hinted).add(Path(path))
        self._wake.set()

    def _hint_rescan(self) -> None:
        with self._lock:
            self._rescan_now = True
        self._wake.set()

    # --- bookkeeping by capture ---------------------------------------------------------
    def taken(self, ready: Ready, frame_id: str) -> None:
        """Capture has the file (queued, waiting for its result): do not offer it again."""
        with self._lock:
            track = self._files.get(ready.placement.path)
            if track is None or (track.size, track.mtime_ns) != (ready.size, ready.mtime_ns):
                track = _Track(ready.size, ready.mtime_ns, self.clock())
                self._files[ready.placement.path] = track
            track.frame_id = frame_id

    def owner(self, path: Path) -> str | None:
        """The frame id ``path`` was taken as, if it is unchanged since; else None."""
        with self._lock:
            track = self._files.get(path)
            if track is None or track.frame_id is None:
                return None
            try:
                st = path.stat()
            except OSError:
                return None
            if (st.st_size, st.st_mtime_ns) != (track.size, track.mtime_ns):
                return None
            return track.frame_id

    def release(self, path: Path) -> None:
        """The file was moved away (or changed): forget it."""
        with self._lock:
            self._files.pop(path, None)

    def moved_away(self, path: Path) -> None:
        """Capture moved the file out of the inbox: forget it, and let ``stop`` wait for
        watchdog to report the move."""
        with self._lock:
            self._files.pop(path, None)
            if self._observer is not None:
                self._moved_out[os.path.abspath(path)] = time.monotonic()

    def _move_reported(self, path: str) -> None:
        """watchdog reported a file gone from where it was (watchdog thread)."""
        with self._moves_reported:
            if self._moved_out.pop(os.path.abspath(path), None) is not None:
                self._moves_reported.notify_all()

    def reoffer_all(self) -> int:
        """Offer every taken file again (Redis restarted and may have lost its last second
        of writes: the queue answers 'queued' or 'stored' for what it still has)."""
        with self._lock:
            count = 0
            for track in self._files.values():
                if track.frame_id is not None:
                    track.frame_id = None
                    count += 1
            self._rescan_now = True
        return count

    def _skipped(self, path: Path, why: str) -> None:
        """Log once per path an inbox entry that is not a regular file or folder."""
        if path not in self._skipped_paths:
            self._skipped_paths.add(path)
            log.warning("inbox entry skipped", extra={
                "source": printable_name(str(path)), "why": why})

    def unsettle(self, path: Path) -> None:
        """The file changed while being read: start its settle time again."""
        with self._lock:
            self._files.pop(path, None)
            self._hinted.add(path)

    # --- the scan -----------------------------------------------------------------------
    def _walk(self) -> set[Path]:
        found: set[Path] = set()
        empty: list[Path] = []
        stack = [self.inbox]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            if not entries and folder != self.inbox:
                empty.append(folder)
            for entry in entries:
                if is_ignored_name(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if path not in self.exclude:
                            stack.append(path)
                    elif entry.is_file():
                        found.add(path)
                    elif entry.is_symlink():
                        self._skipped(path, "a symbolic link to a folder or to nothing "
                                      "(dangling); frames must be files or links to files")
                    else:
                        self._skipped(path, "not a regular file (a FIFO, socket or device)")
                except OSError as exc:
                    self._skipped(path, f"cannot be examined: {exc.strerror}")
                    continue
        if self.empty_folder_seconds > 0:
            self._remove_idle(empty)
        return found

    def _remove_idle(self, folders: list[Path]) -> None:
        """Remove each of ``folders`` (empty when scanned) that has been idle, by its mtime,
        for ``empty_folder_seconds``. ``os.rmdir`` refuses a folder that is no longer empty,
        so a file that arrived since the scan is never touched. Excluded folders are never
        scanned, so never among ``folders``."""
        now = time.time()
        for folder in folders:
            try:
                idle = now - folder.stat().st_mtime
                if idle < self.empty_folder_seconds:
                    continue
                os.rmdir(folder)
            except OSError:
                continue  # not empty any more, or gone, or not ours: the next rescan sees
            self.folders_removed += 1
            telemetry.count("leukoscope_inbox_folders_removed_total")
            log.info("empty inbox folder removed", extra={
                "folder": printable_name(str(folder)), "idle_seconds": round(idle)})

    def ready(self) -> list[Ready]:
        """Complete files not yet taken, oldest mtime first (rescans when due)."""
        now = self.clock()
        with self._lock:
            hinted, self._hinted = self._hinted, set()
            renamed, self._renamed = self._renamed, set()
            rescan = self._rescan_now or now >= self._next_rescan
            self._rescan_now = False
        if rescan:
            scanned = self._walk()
            self._next_rescan = self.clock() + self.poll_seconds
            self.rescans += 1
        out: list[Ready] = []
        with self._lock:
            if rescan:
                for gone in set(self._files) - scanned:
                    del self._files[gone]
                paths = scanned | hinted | renamed
            else:
                paths = {p for p, t in self._files.items() if t.frame_id is None}
                paths |= hinted | renamed
            for path in paths:
                item = self._check(path, now, path in renamed)
                if item is not None:
                    out.append(item)
        out.sort(key=lambda r: (r.mtime_ns, str(r.placement.path)))
        return out

    def _check(self, path: Path, now: float, renamed: bool) -> Ready | None:
        try:
            st = path.stat()
        except OSError:
            self._files.pop(path, None)
            return None
        track = self._files.get(path)
        placement = None
        if track is None or (track.size, track.mtime_ns) != (st.st_size, st.st_mtime_ns):
            # New or changed: is it a frame here at all? (Every rescan checks every file in
            # the inbox, so an unchanged one, the common case, skips the path parsing.)
            placement = place(self.inbox, path)
            if placement is None or self._excluded(path) or not stat.S_ISREG(st.st_mode):
                return None
            track = _Track(st.st_size, st.st_mtime_ns, now)
            self._files[path] = track
        if renamed:
            track.renamed = True
        if track.frame_id is not None:
            return None
        if track.renamed or now - track.since >= self.settle_seconds:
            placement = placement or place(self.inbox, path)
            assert placement is not None  # tracked only with one
            return Ready(placement, st.st_size, st.st_mtime_ns)
        return None

    def _excluded(self, path: Path) -> bool:
        """Is ``path`` inside an excluded folder? (A string prefix test: ``path.parents``
        builds a Path per level and took a fifth of capture's CPU in rescans.)"""
        text = str(path)
        return any(text.startswith(prefix) for prefix in self._exclude_prefixes)


def _hint_events() -> list[type]:
    """The watchdog events that are hints; only these are asked of inotify. Capture's own
    reads (open, close-nowrite), every write() (modify), attribute changes and the
    directory-modified events watchdog derives from each would otherwise each take a trip
    through watchdog's threads and queues: about 40 % of capture's CPU in a 224x224 bench.
    A file written in place is hinted at its creation and at its close; while it settles,
    the watcher checks it on every tick anyway."""
    from watchdog.events import (
        DirCreatedEvent,
        DirMovedEvent,
        FileClosedEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileMovedEvent,
    )

    # FileDeletedEvent: how watchdog reports a file moved out of the inbox (an IN_MOVED_FROM
    # with no IN_MOVED_TO), which InboxWatcher.stop waits for.
    return [DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileMovedEvent, FileClosedEvent,
            FileDeletedEvent]


class _Handler:
    """watchdog event handler: turns events into hints for the watcher."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def dispatch(self, event) -> None:  # watchdog calls dispatch(event)
        kind = event.event_type
        if event.is_directory:
            if kind in ("created", "moved"):
                self.watcher._hint_rescan()
            return
        if kind in ("moved", "deleted"):
            self.watcher._move_reported(os.fsdecode(event.src_path))
        if kind == "moved":
            self.watcher._hint(os.fsdecode(event.dest_path), renamed=True)
        elif kind in ("created", "modified", "closed"):
            self.watcher._hint(os.fsdecode(event.src_path))

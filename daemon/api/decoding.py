"""The decoding work of ``POST /frames``, done outside the API process (issue 16).

Header budgets (``capture.max_frame_pixels``, ``max_file_pages``) stop a decompression bomb
before any decode, but a decode that passes them still needs hundreds of MB, and one in the
API process can take the process (and every client it serves) down with it. So the pixels of
a pushed frame are only ever decoded in a child process with an address-space limit:
expanding a CZI or multi-page TIFF into frames, decoding a plain image and its quality
control all run there. The API gets back encoded bytes (the original, or the lossless PNG of
a page) and the quality verdict, never pixels.

``api.decode_memory_bytes`` is what decoding may add to the child: the limit is the child's
own address space once started (interpreter and libraries, about 0.5 GB mapped, little of it
resident) plus that budget. Counted from zero, as it was, the libraries' mappings took most
of a small budget before any image. The child decodes in one thread (OpenCV's pool is set to
one), and a decode's buffers are written as soon as they are mapped, so within the budget
the address space a decode adds and the resident memory it adds are the same bytes
(measured: peak address space and peak RSS above the start-up size within 1 % of each
other, decode_push on 1000x1000 to 6000x6000 JPEG and PNG and a 2-page 4000x4000 TIFF).

A decode that needs more memory than the limit raises MemoryError (or OpenCV's out-of-memory
error) in the child, which answers ``too_large`` with the budget named. A child that dies
outright (killed, crashed) breaks the pool: the pool is replaced and the file tried once more
alone, so a neighbour's bomb does not fail a good frame; a second death is the file's fault.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import redis

from capture.intake import Intake, expand
from daemon.imaging.frames import FrameRejected
from daemon.imaging.quality import Quality
from daemon.imaging.scale import HISTORY, MAX_RIGS
from daemon.settings import Settings
from daemon.store.rigs import RedCellHistory

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One frame of a pushed file as the child hands it back: bytes to queue, no pixels."""

    data: bytes  # the encoded bytes the worker decodes (the original, or a page as PNG)
    label: str | None
    um_per_pixel: float | None
    um_per_pixel_source: str
    metadata: dict[str, str]
    quality: Quality


@dataclass
class Decoded:
    """What the child made of one pushed file.

    ``rejected``: the file as a whole was refused (reason, message) before any frame.
    ``failed``: a page after ``frames`` could not be read (reason, message); the frames
    before it stand, as when intake iterates a container itself.
    """

    pid: int
    frames: list[Prepared] = field(default_factory=list)
    rejected: tuple[str, str] | None = None
    failed: tuple[str, str] | None = None
    measured: list[float] = field(default_factory=list)  # red-cell diameters for the rig


# State of a pool child (set by _init_child; the child lives for many pushes).
_settings: Settings | None = None
_budget = 0  # api.decode_memory_bytes: what decoding may add to the child's start-up size


def address_space() -> int:
    """This process's address space now, bytes (Linux; 0 where /proc cannot tell)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _init_child(settings: Settings, memory_bytes: int) -> None:
    """Pool initializer: cap the child's address space at its start-up size plus the
    budget, before it decodes anything."""
    global _settings, _budget
    # OpenCV's thread pool reserves stacks per core: address space the limit would count
    # against every decode; one push is one decode, so one thread is enough.
    cv2.setNumThreads(1)
    # The decoders a push may need, loaded now so their mappings are part of the start-up
    # size rather than taken from the first TIFF's or CZI's budget.
    import tifffile  # noqa: F401
    with contextlib.suppress(ImportError):
        import pylibCZIrw.czi  # noqa: F401
    limit = address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _settings, _budget = settings, memory_bytes


def _memory_message() -> str:
    return (f"decoding this image needs more memory than the API's decoder may use "
            f"({_budget} bytes, api.decode_memory_bytes)")


def decode_push(data: bytes, scale: float | None, rig: str, history: list[float]) -> Decoded:
    """In the child: the file's frames (expanded, decoded, quality-checked) as bytes.

    ``history``: the rig's red-cell diameters as Redis holds them (``store.rigs``); quality
    control of a frame with too few red cells of its own runs at the scale they give, and
    the diameters this file adds go back in ``Decoded.measured``.
    """
    assert _settings is not None, "decode_push runs in a pool child"
    settings = _settings
    checker = _checker_for(settings, rig, history)
    learned = checker.rescaler.learned
    assert learned is not None  # set by _checker_for
    out = Decoded(os.getpid(), measured=learned.setdefault(rig, []))  # filled as it measures
    try:
        try:
            frames = expand(data, settings)
        except FrameRejected as exc:
            out.rejected = _memory_reason(exc) or (exc.reason, exc.message)
            return out
        try:
            for frame in frames:
                if scale is not None and frame.um_per_pixel is None:
                    frame.um_per_pixel, frame.um_per_pixel_source = scale, "configured"
                quality = checker.check(frame)
                out.frames.append(Prepared(frame.data, frame.label, frame.um_per_pixel,
                                           frame.um_per_pixel_source, frame.metadata, quality))
                frame._rgb = None  # drop the pixels before the next page is decoded
        except FrameRejected as exc:
            memory = _memory_reason(exc)
            if memory is not None:
                raise MemoryError from exc
            out.failed = (exc.reason, exc.message)
    except (MemoryError, cv2.error) as exc:
        if isinstance(exc, cv2.error) and exc.code != cv2.Error.StsNoMem:
            raise
        # The file as a whole is refused: a frame of it cannot be decoded within the limit.
        out.frames, out.failed = [], None
        out.rejected = ("too_large", _memory_message())
    return out


def _memory_reason(exc: FrameRejected) -> tuple[str, str] | None:
    """('too_large', ...) when ``exc`` is OpenCV running out of memory (the RLIMIT_AS)."""
    cause = exc.__cause__
    if isinstance(cause, MemoryError) or (
            isinstance(cause, cv2.error) and cause.code == cv2.Error.StsNoMem):
        return "too_large", _memory_message()
    return None


class _NoQueue:
    """Stands in for the frame queue in the child's Intake: the child never talks to Redis."""


_checker: Intake | None = None


def _checker_for(settings: Settings, rig: str, history: list[float]) -> Intake:
    """One Intake (QC only) for the child's life, so the models' scale is read once. The
    red-cell history is the rig's in Redis, handed over with each file: a history of the
    child's own would make a frame's verdict depend on which child decoded it (a replaced
    child, or one of several, starts with none), as one of the API's own did on which API
    replica took the push."""
    global _checker
    if _checker is None:
        _checker = Intake(settings, None, _NoQueue(), _NoQueue(), rig)  # type: ignore[arg-type]
    _checker.rig_id = rig
    _checker.rescaler.reset(rig, history)
    _checker.rescaler.learned = {}
    return _checker


class DecoderDied(Exception):
    """The decoding child died twice on one file."""


class DecodePool:
    """The app's decoding processes: created on first use, replaced when one dies."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.memory_bytes = settings.api.decode_memory_bytes
        self.workers = settings.api.decode_workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        # The rigs' red-cell diameters measured by the children (bounded per rig and in
        # rigs, as a worker's): kept in Redis, so every child of every API process checks
        # a rig's frames with the same history.
        self.history = RedCellHistory(client, HISTORY, MAX_RIGS)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode pool is shut down")
            if self._pool is None:
                # spawn: a fresh interpreter, none of the API's threads, sockets or memory.
                # No PR_SET_PDEATHSIG: it follows the creating thread (a thread-pool thread
                # that may end); a child whose API dies reads EOF on its queue and exits.
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_child, initargs=(self.settings, self.memory_bytes))
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def decode(self, data: bytes, scale: float | None, rig: str) -> Decoded:
        """Blocking (the route calls it in the thread pool)."""
        for attempt in (1, 2):
            pool = self._current()
            history = self.history.diameters(rig)
            try:
                decoded = pool.submit(decode_push, data, scale, rig, history).result()
            except BrokenProcessPool:
                self._replace(pool)
                log.error("a decoding process died; the decode pool is replaced",
                          extra={"attempt": attempt, "bytes": len(data),
                                 "decode_memory_bytes": self.memory_bytes})
                continue
            self.history.remember(rig, decoded.measured)
            return decoded
        raise DecoderDied(
            f"the decoding process died twice reading this image; it may need more memory "
            f"than api.decode_memory_bytes ({self.memory_bytes} bytes) allows")

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

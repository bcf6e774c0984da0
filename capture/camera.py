"""A camera (or anything cv2.VideoCapture opens) read by a thread, reconnected when it fails.

Live sources (device index, URL, GStreamer pipeline): the reader keeps only the newest frame,
so the consumer never gets a stale buffered one, and frame times come from the monotonic
clock. Video files and image sequences (``img_%04d.png``) are played frame by frame with
nothing dropped, timed by their position (frame index / fps), so tests are deterministic.

A source that fails to open, fails ``max_read_failures`` reads in a row, delivers the same
frame (bit-identical) for ``stall_seconds``, or ends (a file) is released and reopened after
a backoff that doubles from ``reconnect_min_seconds`` to ``reconnect_max_seconds`` (reset by
a good frame); meanwhile :attr:`Camera.state` is ``disconnected``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

BACKENDS = {
    "any": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER,
    "v4l2": cv2.CAP_V4L2, "dshow": cv2.CAP_DSHOW, "msmf": cv2.CAP_MSMF,
    "images": cv2.CAP_IMAGES,
}
FILE_QUEUE = 4  # frames a file source may read ahead of the consumer


@dataclass
class Grab:
    seq: int
    t: float  # seconds: stream position (files) or monotonic clock (live)
    rgb: np.ndarray


def is_file_source(uri: str) -> bool:
    """A video file or an image sequence (played frame by frame), not a live source."""
    if uri.isdigit() or "://" in uri or "!" in uri or uri.startswith("/dev/"):
        return False
    return "%" in uri or os.path.isfile(uri)


class Camera:
    def __init__(self, config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.uri = config.uri
        self.clock = clock
        self.file_mode = is_file_source(self.uri)
        self.latest_only = (not self.file_mode) if config.latest_only is None \
            else config.latest_only
        self.state = "connecting"
        self.reconnects: Counter[str] = Counter()
        self.frames_read = 0
        self.settings_applied: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._frames: deque[Grab] = deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._time_base = 0.0
        self._last_t = 0.0

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def get(self, timeout: float) -> Grab | None:
        """The next frame (the newest one for live sources), or None after ``timeout``."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout)
            if not self._frames:
                return None
            grab = self._frames.popleft()
            self._cond.notify_all()
            return grab

    # --- the reader thread --------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture | None:
        source: int | str = int(self.uri) if self.uri.isdigit() else self.uri
        api = BACKENDS[self.config.backend]
        params: list[int] = []
        if not self.file_mode and isinstance(source, str) and "://" in source:
            timeout_ms = int(self.config.stall_seconds * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(source, api, params) if params else cv2.VideoCapture(source, api)
        if not cap.isOpened():
            cap.release()
            return None
        self._apply(cap)
        return cap

    def _apply(self, cap: cv2.VideoCapture) -> None:
        """Set width/height/fps/exposure/fourcc; check and log each set() result."""
        c = self.config
        wanted: list[tuple[str, int, float]] = []
        if c.fourcc:
            wanted.append(("fourcc", cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*c.fourcc)))
        for name, prop, value in (("width", cv2.CAP_PROP_FRAME_WIDTH, c.width),
                                  ("height", cv2.CAP_PROP_FRAME_HEIGHT, c.height),
                                  ("fps", cv2.CAP_PROP_FPS, c.fps),
                                  ("exposure", cv2.CAP_PROP_EXPOSURE, c.exposure)):
            if value is not None:
                wanted.append((name, prop, float(value)))
        for name, prop, value in wanted:
            accepted = bool(cap.set(prop, value))
            actual = cap.get(prop)
            self.settings_applied[name] = {"wanted": value, "accepted": accepted,
                                           "actual": actual}
            level = logging.INFO if accepted and abs(actual - value) < 1e-6 else logging.WARNING
            log.log(level, "camera setting", extra={
                "setting": name, "wanted": value, "accepted": accepted, "actual": actual})

    def _deliver(self, grab: Grab) -> None:
        with self._cond:
            if self.latest_only:
                self._frames.clear()
            else:
                while len(self._frames) >= FILE_QUEUE and not self._stopping.is_set():
                    self._cond.wait(0.2)
            self._frames.append(grab)
            self._cond.notify_all()

    def _run(self) -> None:
        c = self.config
        backoff = c.reconnect_min_seconds
        while not self._stopping.is_set():
            cap = self._open()
            if cap is None:
                reason = "open_failed"
            else:
                self.state = "connected"
                log.info("camera connected", extra={"uri": self.uri, "file": self.file_mode})
                reason, good = self._read(cap)
                cap.release()
                if good:
                    backoff = c.reconnect_min_seconds
            if self._stopping.is_set():
                break
            self.state = "disconnected"
            self.reconnects[reason] += 1
            log.warning("camera disconnected; reconnecting", extra={
                "uri": self.uri, "reason": reason, "backoff_seconds": backoff})
            self._stopping.wait(backoff)
            self._time_base = self._last_t + backoff  # file time keeps increasing
            backoff = min(c.reconnect_max_seconds, backoff * 2)
        self.state = "stopped"

    def _read(self, cap: cv2.VideoCapture) -> tuple[str, bool]:
        c = self.config
        fps = cap.get(cv2.CAP_PROP_FPS) if self.file_mode else 0.0
        if not fps or fps <= 0 or fps > 1000:
            fps = c.fps or 25.0
        failures = 0
        index = 0
        good = False
        last_digest = b""
        changed_at = None
        last_frame_wall = self.clock()
        while not self._stopping.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                if self.file_mode:
                    return "ended", good
                failures += 1
                if failures >= c.max_read_failures:
                    return "read_failures", good
                if self.clock() - last_frame_wall > c.stall_seconds:
                    return "stalled", good
                self._stopping.wait(0.01)
                continue
            failures = 0
            last_frame_wall = self.clock()
            t = self._time_base + index / fps if self.file_mode else self.clock()
            index += 1
            self._last_t = t
            digest = hashlib.blake2b(bgr.tobytes(), digest_size=16).digest()
            if digest != last_digest or changed_at is None:
                last_digest, changed_at = digest, t
            elif t - changed_at > c.stall_seconds:
                return "stalled", good  # the same frame over and over: a frozen source
            good = True
            self.frames_read += 1
            self._seq += 1
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else \
                cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            self._deliver(Grab(self._seq, t, rgb))
        return "stopped", good

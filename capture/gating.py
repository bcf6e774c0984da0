"""Field gating for live streams: which of the many near-identical frames to capture.

``every``: all frames. ``interval``: the first frame, then one every ``interval_seconds``.
``settle``: one frame per field. Each frame is compared with the previous one and with the
first frame of the current still period, on a grey copy 160 px wide: the share of pixels
whose grey level changed by more than 15 (sensor noise stays below that). Above
``motion_threshold`` (default 0.005, i.e. 0.5 % of the pixels) the stage is moving. A share
rather than a mean difference, because a sparse smear is mostly background: panning it
changes few pixels, but those change a lot. Once the image has been
still for ``settle_seconds`` (and, with ``require_focus``, the frame is in focus by
``qc.min_focus``) the gate opens once; it re-arms only after the next movement. A stream
that starts on a still field captures that field too.

Times are the frames' own times (capture/camera.py: the stream position for files and
image sequences, the monotonic clock for live sources), so gating a file is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

THUMB_WIDTH = 160
MOTION_DELTA = 15  # grey levels: a pixel changed by more than this counts as changed


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    height, width = gray.shape
    if width > THUMB_WIDTH:
        size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray.astype(np.int16)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Share (0-1) of pixels whose grey level differs by more than MOTION_DELTA."""
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b) > MOTION_DELTA).mean())


class Gate:
    def __init__(self, mode: str, motion_threshold: float = 0.005, settle_seconds: float = 0.5,
                 interval_seconds: float = 5.0,
                 focus_ok: Callable[[np.ndarray], bool] | None = None) -> None:
        if mode not in ("settle", "interval", "every"):
            raise ValueError(f"unknown gating mode {mode!r}")
        self.mode = mode
        self.motion_threshold = motion_threshold
        self.settle_seconds = settle_seconds
        self.interval_seconds = interval_seconds
        self.focus_ok = focus_ok
        self._prev: np.ndarray | None = None
        self._ref: np.ndarray | None = None
        self._still_since: float | None = None
        self._armed = True
        self._last: float | None = None

    @classmethod
    def from_settings(cls, gating, focus_ok: Callable[[np.ndarray], bool] | None) -> Gate:
        return cls(gating.mode, gating.motion_threshold, gating.settle_seconds,
                   gating.interval_seconds, focus_ok if gating.require_focus else None)

    def decide(self, rgb: np.ndarray, t: float) -> bool:
        """True when the frame taken at time ``t`` (seconds) is to be captured."""
        if self.mode == "every":
            return True
        if self.mode == "interval":
            if self._last is None or t - self._last >= self.interval_seconds or t < self._last:
                self._last = t
                return True
            return False
        small = thumbnail(rgb)
        moving = self._prev is not None and (
            difference(small, self._prev) > self.motion_threshold
            or (self._ref is not None and difference(small, self._ref) > self.motion_threshold)
        )
        self._prev = small
        if moving:
            self._armed = True
            self._still_since = None
            self._ref = None
            return False
        if self._still_since is None or t < self._still_since:
            self._still_since = t
            self._ref = small
        if not self._armed or t - self._still_since + 1e-9 < self.settle_seconds:
            return False
        if self.focus_ok is not None and not self.focus_ok(rgb):
            return False
        self._armed = False
        return True

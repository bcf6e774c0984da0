"""A rig's stain hue, brought to the models' own: stain calibration per rig.

A second laboratory's stain batch, camera white balance or lamp filter turns the colour of
every stained pixel by a few degrees; the background gain (``acquisition``) cannot see it, as
glass stays white. The hue of a field here is the angle of its stained pixels' median chroma
in the YIQ plane (:func:`stain_hue`), the plane the evaluation's hue shifts turn
(``daemon.training.shifts.chroma``).

One field's hue says little about its rig: fields of the models' own training blocks spread
p10-p90 145-166 degrees (slides and classes differ), more than the 8 degrees a rig's offset
is tested at, so turning each field to a fixed hue would move fields the models know well by
more than the shift it corrects. A rig's median over its last ``HISTORY`` frames does say:
the validation blocks turned by -8 degrees read a median -8.4. So a rig's frames are turned by
the models' reference hue (the training fields' median, the segmenter manifest's
``acquisition.stain_hue_deg``) minus the rig's running median, once the rig has shown
``MIN_FRAMES`` frames, and only when that offset is at least ``DEAD_BAND_DEG`` (a rig like the
training lab's is left untouched) and at most ``MAX_CORRECTION_DEG`` (beyond, it is not a
stain offset; the frame's acquisition is reported out of the validated range instead).
A frame without a rig is never turned: there is no history to say what its rig does.

The constants are a third try (``deploy/gpu/decision-2026-11-27e.txt``). The first kept 64
frames, turned from the 20th and left offsets under 3 degrees alone; judged on fields sorted by
class (this data set's classes were stained in different batches) its median followed the
diagnosis. Now a rig remembers several slides (``HISTORY``), the dead band is what such a
memory still wanders on the models' own training slides met in random order, and an
over-exposed frame, whose clipping bends its hue, does not join the history.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.imaging.rigs import rig_history

HISTORY = 256  # a rig's running hue: the median of its last HISTORY frames' hues
MIN_FRAMES = 64  # frames of a rig before its hue is corrected
#: Smaller offsets are left alone: the 99th percentile of what a rig's running median wanders
#: from the reference on the models' own training slides, met in random order as one rig's
#: stream (p50 1.6, p90 3.2, p99 6.3; docs/experiments/stain_dead_band.py --order slides).
DEAD_BAND_DEG = 6.5
MAX_CORRECTION_DEG = 20.0  # larger offsets are not turned (and are reported)
MAX_RIGS = 256  # rigs whose histories are kept (the least recently used goes first)
#: Stained pixels: grey below this share of the background, chroma above MIN_CHROMA.
STAINED_BELOW = 0.9
MIN_CHROMA = 4.0
MIN_PIXELS = 50  # stained pixels (of the subsample) needed for a hue

#: RGB -> YIQ (NTSC; Y is the luma): hue and saturation of a stain are the angle and radius
#: of its (I, Q) chroma. The shift suite, the augmentation and this module share it.
RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ2RGB = np.linalg.inv(RGB2YIQ)


def stain_hue(image_rgb: np.ndarray, background_grey: float) -> float | None:
    """(H, W, 3) uint8 RGB field (background balanced) -> the YIQ chroma angle (degrees,
    -180..180) of its stained pixels' median I and Q; None with fewer than MIN_PIXELS of them.
    ``background_grey``: the field's background grey level (0-255)."""
    step = max(1, int(max(image_rgb.shape[:2]) // 256))
    sample = image_rgb[::step, ::step].reshape(-1, 3).astype(np.float32)
    yiq = sample @ RGB2YIQ.T.astype(np.float32)
    stained = yiq[:, 0] < STAINED_BELOW * background_grey
    i, q = yiq[stained, 1], yiq[stained, 2]
    chromatic = np.hypot(i, q) > MIN_CHROMA
    if int(chromatic.sum()) < MIN_PIXELS:
        return None
    return float(np.degrees(np.arctan2(np.median(q[chromatic]), np.median(i[chromatic]))))


def turn_hue(image_rgb: np.ndarray, degrees: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB with its YIQ chroma plane turned by ``degrees`` (grey stays grey)."""
    angle = np.radians(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                         [0, np.sin(angle), np.cos(angle)]])
    matrix = (YIQ2RGB @ rotation @ RGB2YIQ).astype(np.float32)
    # On uint8 directly: OpenCV rounds and saturates, the same result within one grey level
    # as a float round trip, and 0.2 ms instead of 7.6 ms for a 640x430 frame.
    return cv2.transform(np.ascontiguousarray(image_rgb), matrix)


def hue_offset(reference_deg: float, hues: Iterable[float]) -> float:
    """Degrees to turn a rig's frames by: reference minus the rig's median hue, wrapped to
    -180..180 (0.0 for no hues)."""
    values = np.asarray(list(hues), np.float64)
    if values.size == 0:
        return 0.0
    # Hues of one rig lie within a few tens of degrees: unwrap around the first before the median.
    unwrapped = values[0] + (values - values[0] + 180.0) % 360.0 - 180.0
    return float((reference_deg - np.median(unwrapped) + 180.0) % 360.0 - 180.0)


@dataclass(frozen=True)
class StainReading:
    """What stain calibration measured and did to one frame."""

    hue_deg: float | None  # the frame's own stain hue (None: too few stained pixels)
    rig_offset_deg: float | None  # reference minus the rig's running median (None: no rig yet)
    turned_deg: float  # what the frame was turned by (0.0: not turned)
    out_of_range: bool  # the rig's offset is past MAX_CORRECTION_DEG


class StainCalibrator:
    """Per rig, the running median stain hue, and each frame turned to the models' reference.

    Histories are bounded (``history`` hues a rig, ``max_rigs`` rigs). As ``scale.Rescaler``
    does for red cells, the hues this process measures are noted in ``learned`` (when it is a
    dict) for a holder to share (``daemon.worker.rigs``)."""

    def __init__(self, reference_deg: float | None, history: int = HISTORY,
                 min_frames: int = MIN_FRAMES, max_rigs: int = MAX_RIGS) -> None:
        self.reference_deg = reference_deg
        self.history = history
        self.min_frames = min_frames
        self.max_rigs = max_rigs
        self._rigs: OrderedDict[str, deque[float]] = OrderedDict()
        self.learned: dict[str, list[float]] | None = None

    def _rig(self, rig: str) -> deque[float]:
        return rig_history(self._rigs, rig, self.history, self.max_rigs)

    def hues(self, rig: str) -> list[float]:
        """The rig's recent hues, oldest first: a copy."""
        return list(self._rigs.get(rig, ()))

    def adopt(self, rig: str, hues: Iterable[float]) -> None:
        """The rig's history is now ``hues`` (the shared one); other rigs' stay."""
        kept = self._rig(rig)
        kept.clear()
        kept.extend(hues)

    def calibrate(self, image_rgb: np.ndarray, background_grey: float, rig: str | None,
                  overexposed: bool = False) -> tuple[np.ndarray, StainReading]:
        """A background-balanced (H, W, 3) uint8 RGB frame -> the frame turned by its rig's
        offset (or as it is), and what was measured. The frame's hue joins its rig's history
        before the offset is taken (this frame included, as the red-cell scale does), unless
        the frame was ``overexposed`` before its gain (its hue is still measured and reported,
        and it is turned by its rig's offset like any other)."""
        hue = stain_hue(image_rgb, background_grey)
        if rig is None or self.reference_deg is None:
            return image_rgb, StainReading(hue, None, 0.0, False)
        hues = self._rig(rig)
        if hue is not None and not overexposed:
            hues.append(hue)
            if self.learned is not None:
                self.learned.setdefault(rig, []).append(hue)
        if len(hues) < self.min_frames:
            return image_rgb, StainReading(hue, None, 0.0, False)
        offset = hue_offset(self.reference_deg, hues)
        if abs(offset) > MAX_CORRECTION_DEG:
            return image_rgb, StainReading(hue, round(offset, 2), 0.0, True)
        if abs(offset) < DEAD_BAND_DEG:
            return image_rgb, StainReading(hue, round(offset, 2), 0.0, False)
        return turn_hue(image_rgb, offset), StainReading(hue, round(offset, 2),
                                                         round(offset, 2), False)


def reference_hue(images: Iterable[np.ndarray], background_grey: float) -> float:
    """The models' reference stain hue: median :func:`stain_hue` of (background-balanced)
    training fields, in degrees."""
    hues = [h for h in (stain_hue(im, background_grey) for im in images) if h is not None]
    if not hues:
        raise ValueError("no training field has enough stained pixels for a hue")
    return round(-hue_offset(0.0, hues), 2)

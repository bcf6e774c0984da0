"""Frame quality control: focus, exposure and emptiness, as plain functions over arrays.

Workers run :func:`assess` on every queued frame where they decode it for analysis, at the
models' scale (after rescaling, before the background gain), so capture stays a mover of
bytes and no frame is decoded twice; the HTTP push and live cameras, which hold the pixels
anyway, run it before queueing (a push answers 422 at once). A failing frame is not
classified but stored as a ``rejected`` result carrying the measured values and the reason,
and its original goes to quarantine.

Measures:

``focus``
    Variance of the Laplacian of the grey image after a 5x5 Gaussian (sigma 1.2). The
    Gaussian removes pixel-level sensor noise, which a defocused camera still delivers
    and which would otherwise read as sharpness; cell edges survive it.
``saturated_fraction``
    Share of pixels with any channel at or above ``saturated_level`` (clipped highlights:
    in brightfield an over-exposed background blows out to white).
``dark_fraction`` / ``mean_brightness``
    Share of pixels whose brightest channel is at or below ``dark_level``, and the mean grey
    level (0-255). Brightfield frames are bright; a dark frame means lamp off, shutter
    closed, or the camera looking at nothing.
``stained_fraction``
    Share of pixels whose HSV saturation is at least ``stain_saturation`` (0-255) and that
    are not dark. Romanowsky-stained cells (pink red cells, purple nuclei) are saturated;
    the bare slide background is nearly grey. A field with (almost) no stained pixels has
    no cell to classify.

Checks run in the order exposure (over, then under), emptiness, focus, and the first
failing one is the reason: a black frame is also "empty" and "blurred", but the cause to
report is the exposure. Thresholds are in ``capture.qc``; focus values depend on the
optics and camera, so calibrate ``min_focus`` on a few good and bad frames of the rig
(``leukoscope`` logs the measured values of every rejected frame, and they are in its
result).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

OVEREXPOSED = "overexposed"
UNDEREXPOSED = "underexposed"
EMPTY_FIELD = "empty_field"
OUT_OF_FOCUS = "out_of_focus"
QC_REASONS = (OVEREXPOSED, UNDEREXPOSED, EMPTY_FIELD, OUT_OF_FOCUS)


class Thresholds(Protocol):
    """What :func:`assess` reads (``daemon.settings.QcSettings`` satisfies it)."""

    enabled: bool
    min_focus: float
    saturated_level: int
    max_saturated_fraction: float
    dark_level: int
    max_dark_fraction: float
    min_mean_brightness: float
    stain_saturation: int
    min_stained_fraction: float


@dataclass
class Quality:
    """Measured values of one frame and, when it fails, the reason code and a message."""

    values: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def grey(image_rgb: np.ndarray) -> np.ndarray:
    if image_rgb.ndim == 2:
        return image_rgb
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)


def focus_score(gray: np.ndarray) -> float:
    """Variance of the Laplacian after light denoising (higher = sharper)."""
    smooth = cv2.GaussianBlur(gray, (5, 5), 1.2)
    _, std = cv2.meanStdDev(cv2.Laplacian(smooth, cv2.CV_32F, ksize=3))
    return float(std[0, 0]) ** 2


def measure(image_rgb: np.ndarray, saturated_level: int = 254, dark_level: int = 25,
            stain_saturation: int = 40) -> dict[str, float]:
    """The QC measures of an (H, W, 3) uint8 RGB frame.

    Runs on every captured frame, so it uses OpenCV's counting and statistics (several times
    faster than numpy reductions over the frame); HSV's V channel is the brightest channel.
    """
    gray = grey(image_rgb)
    pixels = float(gray.size)
    if image_rgb.ndim == 2:
        image_rgb = cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2RGB)
    # split, not hsv[..., 1]: OpenCV copies a strided channel view for each call it is
    # passed to (three here), split makes both planes in one pass (~15 % of QC's time)
    _, saturation, brightest = cv2.split(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV))
    not_dark = cv2.compare(brightest, dark_level, cv2.CMP_GT)
    stained = cv2.bitwise_and(cv2.compare(saturation, stain_saturation, cv2.CMP_GE), not_dark)
    saturated = cv2.countNonZero(cv2.compare(brightest, saturated_level, cv2.CMP_GE))
    return {
        "focus": round(focus_score(gray), 3),
        "saturated_fraction": round(saturated / pixels, 5),
        "dark_fraction": round((pixels - cv2.countNonZero(not_dark)) / pixels, 5),
        "mean_brightness": round(float(cv2.mean(gray)[0]), 2),
        "stained_fraction": round(cv2.countNonZero(stained) / pixels, 5),
    }


def assess(image_rgb: np.ndarray, qc: Thresholds) -> Quality:
    """Measure a frame and judge it against ``qc``; ``Quality.ok`` when it may be queued."""
    if not qc.enabled:
        return Quality()
    v = measure(image_rgb, qc.saturated_level, qc.dark_level, qc.stain_saturation)
    if v["saturated_fraction"] > qc.max_saturated_fraction:
        return Quality(v, OVEREXPOSED,
                       f"over-exposed: {v['saturated_fraction']:.1%} of pixels saturated "
                       f"(limit {qc.max_saturated_fraction:.1%})")
    if v["dark_fraction"] > qc.max_dark_fraction:
        return Quality(v, UNDEREXPOSED,
                       f"under-exposed: {v['dark_fraction']:.1%} of pixels dark "
                       f"(limit {qc.max_dark_fraction:.1%})")
    if v["mean_brightness"] < qc.min_mean_brightness:
        return Quality(v, UNDEREXPOSED,
                       f"under-exposed: mean brightness {v['mean_brightness']:.1f} "
                       f"(minimum {qc.min_mean_brightness:g})")
    if v["stained_fraction"] < qc.min_stained_fraction:
        return Quality(v, EMPTY_FIELD,
                       f"empty field: {v['stained_fraction']:.2%} of pixels stained "
                       f"(minimum {qc.min_stained_fraction:.2%})")
    if v["focus"] < qc.min_focus:
        return Quality(v, OUT_OF_FOCUS,
                       f"out of focus: focus {v['focus']:.1f} (minimum {qc.min_focus:g})")
    return Quality(v)

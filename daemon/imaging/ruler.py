"""Pixel scale from the smear itself: red cells are the ruler every blood film carries.

A human red cell is about 7.5 µm across (normal range roughly 6.5-8.5 µm) and a peripheral
blood field shows many of them, isolated or touching. :func:`measure_red_cells` returns the
field's typical red-cell diameter in pixels. Dividing the nominal diameter by it gives µm per
pixel (for reporting); the *ratio* of two diameters measured the same way gives the
enlargement between two fields without assuming any absolute size, and that ratio is what
brings a frame to the models' scale (the models' own diameter is measured on their training
fields, see the segmenter manifest's ``scale``).

Method (scale-space blob detection, Lindeberg): on the field's "darkness" (background grey
level minus grey, with white-cell nuclei blanked so they do not vote), the scale-normalised
Laplacian of Gaussian ``-sigma^2 LoG`` peaks at ``sigma = r / sqrt(2)`` for a disc of radius
``r``, touching or not, with or without central pallor. For each sigma on a ladder of
2^(1/6) steps the strongest quarter of the spatial maxima is averaged; the centroid (in log
sigma) of the scales scoring within 10 % of the best gives the diameter ``2 sqrt(2) sigma``.
Each sigma is computed on a copy shrunk so the kernel stays about 2 pixels wide: the cost per
frame is a few ms and does not grow with the enlargement.

Certainty: the estimate is ``reliable`` when enough blobs answer at the chosen scale and the
contrast is high enough to be red cells rather than noise; an empty or blank field gives
``diameter_px = None``. An over-exposed field is never reliable: where a quarter of the field
or more is clipped white in all three channels, the pale rims of the red cells (and pale
cells whole) have been cut off at 255, so the blobs that remain are their darker cores and
the diameter reads short (a 25 % brighter lamp on 115 of the validation fields: median 0.77x
the same field's reading lit right, p10 0.33x, 10 % within 10 %), which enlarges the frame
by up to 3x. Such a frame takes the rig's running estimate, or goes to review as
``scale_unknown`` and ``overexposed`` (``daemon.imaging.scale``, ``daemon.inference.analyzer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Nominal human red-cell diameter (µm); only turns pixel diameters into µm/px for reports.
RBC_DIAMETER_UM = 7.5
#: Blob answers (spatial maxima within half of the best) needed at the chosen scale.
MIN_BLOBS = 6
#: Minimum score (grey levels of darkness) for red cells rather than noise or texture.
MIN_CONTRAST = 4.0
_SIGMA0 = 1.2
_STEPS_PER_OCTAVE = 6
#: Violet score ((R + B) / 2 - G) from which a pixel is white-cell nucleus when the field's
#: own split (below) is not trusted; the split is clipped to [_NUCLEUS_MIN, _NUCLEUS_MAX].
NUCLEUS_VIOLET = 35.0
_NUCLEUS_MIN, _NUCLEUS_MAX = 25.0, 70.0
#: Otsu separability (between-class over total variance of the violet score of dark pixels)
#: from which the field holds nuclei as a second mode. Test fields: with their white cells
#: p10 0.78; with them painted out p90 0.67 (a unimodal score cannot pass 2/pi = 0.64 much).
_NUCLEUS_SEPARABILITY = 0.72
#: ... and the upper mode must lie this far above the lower to be nuclei: a red-cell field with
#: strong central pallor has two modes too (rims 31, pallor 17 in the synthetic field), which
#: must not be split. Test fields with white cells: gap p10 43 (28 at 35 % less saturation);
#: with them painted out: median 12. (No absolute floor on the upper mode: the ruler sees the
#: frame before the exposure gain, and a dim, pale rig's nuclei score 35-40.)
_NUCLEUS_MODE_GAP = 20.0
#: A pixel at or above this level in all three channels is clipped white.
CLIPPED_LEVEL = 254
#: Share of clipped-white pixels from which a field is over-exposed (its red cells are cut
#: off). The 2099 training and validation fields as captured: p99 0.09, max 0.21 (one field);
#: 25 % over-exposure puts nearly all of them above it.
MAX_CLIPPED_SHARE = 0.25


@dataclass(frozen=True)
class RedCellRuler:
    """The red-cell scale of one field."""

    diameter_px: float | None  # typical red-cell diameter in the field's pixels; None: none found
    blobs: int  # blob answers at the chosen scale
    contrast: float  # the winning score (darkness grey levels)
    clipped: float = 0.0  # share of the field clipped white in all three channels

    @property
    def overexposed(self) -> bool:
        return self.clipped >= MAX_CLIPPED_SHARE

    @property
    def reliable(self) -> bool:
        return (self.diameter_px is not None and self.blobs >= MIN_BLOBS
                and self.contrast >= MIN_CONTRAST and not self.overexposed)

    def um_per_pixel(self, rbc_um: float = RBC_DIAMETER_UM) -> float | None:
        return None if self.diameter_px is None else rbc_um / self.diameter_px


#: Median |grey - 3x3 median| (grey levels) from which a field counts as noisy: sensor noise
#: would otherwise answer at the finest scales (a clean field reads 0-1, 3 % noise 2-3).
NOISY = 2.0


def clipped_share(image_rgb: np.ndarray) -> float:
    """Share of an (H, W, 3) uint8 RGB field at ``CLIPPED_LEVEL`` or above in every channel
    (every other pixel of every other row)."""
    sample = image_rgb[::2, ::2]
    return float((sample.min(axis=2) >= CLIPPED_LEVEL).mean()) if sample.size else 0.0


def violet_score(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 ``(R + B) / 2 - G``: high on violet-stained nuclei.

    Red cells in the May-Grünwald-Giemsa training fields are grey-blue (score ~0-25 on their
    rims), white cells and blasts violet to magenta (score ~40-110).
    """
    rgb = image_rgb.astype(np.float32)
    return (rgb[..., 0] + rgb[..., 2]) * 0.5 - rgb[..., 1]


def nucleus_threshold(violet: np.ndarray, dark: np.ndarray) -> float:
    """The violet score that splits this field's nuclei from its red cells.

    A fixed level does not follow the stain: 8 degrees of hue or 35 % more saturation push the red
    cells of the pre-B fields over 35, the ruler blanks parts of them and reads fragments
    (the held-out pre-B fields under hue -8 deg: 39 % within 10 % of their own reading). The
    field's own split moves with the stain: Otsu's threshold on the violet score of its dark
    pixels, used when the two modes are well apart (a field with white cells); otherwise the
    fixed level (a field of red cells only has no second mode to find).
    """
    candidates = violet[::2, ::2][dark[::2, ::2] > 0.25 * float(dark.max())]
    if candidates.size < 64 or float(candidates.var()) <= 1e-6:
        return NUCLEUS_VIOLET
    shifted = np.clip(candidates + 64.0, 0, 255).astype(np.uint8).reshape(-1, 1)
    level, _ = cv2.threshold(shifted, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    split = float(level) - 64.0
    low, high = candidates[candidates < split], candidates[candidates >= split]
    if low.size == 0 or high.size == 0:
        return NUCLEUS_VIOLET
    gap = float(high.mean() - low.mean())
    between = low.size * high.size / candidates.size ** 2 * gap ** 2  # Otsu's class variance
    if between / float(candidates.var()) < _NUCLEUS_SEPARABILITY or gap < _NUCLEUS_MODE_GAP:
        return NUCLEUS_VIOLET
    return float(np.clip(split, _NUCLEUS_MIN, _NUCLEUS_MAX))


def darkness(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32: background grey (95th percentile) minus grey,
    clipped at 0, with violet white-cell nuclei (and a 1-px rim) set to 0 (the violet level
    from :func:`nucleus_threshold`). A noisy field is smoothed first (Gaussian, sigma 1 px)."""
    grey8 = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    median = cv2.medianBlur(grey8, 3)
    if np.median(cv2.absdiff(grey8, median)) >= NOISY:
        image_rgb = cv2.GaussianBlur(image_rgb, (0, 0), 1.0)
        grey8 = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    grey = grey8.astype(np.float32)
    background = float(np.percentile(grey[:: 2, :: 2], 95))
    dark = np.clip(background - grey, 0, None)
    violet = violet_score(image_rgb)
    nucleus = (violet >= nucleus_threshold(violet, dark)).astype(np.uint8)
    dark[cv2.dilate(nucleus, np.ones((3, 3), np.uint8)) > 0] = 0
    return dark


def measure_red_cells(image_rgb: np.ndarray, max_side: int = 1024) -> RedCellRuler:
    """Typical red-cell diameter of an (H, W, 3) uint8 RGB field, in the field's own pixels.

    Frames larger than ``max_side`` on their longer side are measured on a shrunk copy
    (red cells of at least ~8 px there keep the estimate within a few per cent).
    """
    height, width = image_rgb.shape[:2]
    shrink = min(1.0, max_side / max(height, width))
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        image_rgb = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    clipped = round(clipped_share(image_rgb), 4)
    dark = darkness(image_rgb)
    h, w = dark.shape
    scores: list[float] = []
    blobs: list[int] = []
    for step in range(64):
        sigma = _SIGMA0 * 2 ** (step / _STEPS_PER_OCTAVE)
        down = max(1.0, sigma / 2.0)
        small = dark if down == 1.0 else cv2.resize(
            dark, (max(4, round(w / down)), max(4, round(h / down))), interpolation=cv2.INTER_AREA)
        s = sigma / down
        if min(small.shape) < 8 * s:
            break  # the field is too small to hold blobs this large
        response = -cv2.Laplacian(cv2.GaussianBlur(small, (0, 0), s), cv2.CV_32F) * (s * s)
        peak = response >= cv2.dilate(response, np.ones((3, 3), np.uint8))
        values = np.sort(response[peak & (response > 0)])
        if values.size == 0:
            scores.append(0.0)
            blobs.append(0)
            continue
        scores.append(float(values[-max(1, values.size // 4):].mean()))
        blobs.append(int((values >= 0.5 * values[-1]).sum()))
    if not scores or max(scores) <= 0:
        return RedCellRuler(None, 0, 0.0, clipped)
    # The score curve can be flat-topped (touching or overlapping cells, central pallor): take
    # the centroid, in log sigma, of the contiguous run of scales within 10 % of the best.
    values = np.asarray(scores)
    best = int(np.argmax(values))
    lo = hi = best
    while lo > 0 and values[lo - 1] >= 0.9 * values[best]:
        lo -= 1
    while hi < len(values) - 1 and values[hi + 1] >= 0.9 * values[best]:
        hi += 1
    weights = values[lo : hi + 1] - 0.9 * values[best] + 1e-6
    position = float((np.arange(lo, hi + 1) * weights).sum() / weights.sum())
    sigma = _SIGMA0 * 2 ** (position / _STEPS_PER_OCTAVE)
    diameter = 2 * math.sqrt(2) * sigma / shrink
    return RedCellRuler(round(diameter, 3), blobs[best], round(scores[best], 2), clipped)

"""Pixel scale: every frame reaches the models at the scale the models were trained at.

Where a frame's scale comes from, in order (``ScaleInfo.source`` in its result):

``configured`` / ``file``
    The rig's ``capture.um_per_pixel``, an HTTP push's ``um_per_pixel``, or the file's own
    metadata (CZI). The factor is ``frame µm/px / models' µm/px``.
``estimated``
    Red cells measured in the frame (``daemon.imaging.ruler``). The factor is the models'
    red-cell diameter over the rig's running median diameter (last ``history`` reliable
    frames of that rig, this one included): one frame's odd estimate cannot move it, an
    objective change moves it within ``history / 2`` frames. A frame whose own estimate
    differs from the rig's median by more than ``jump`` is marked ``reliable: false`` (it
    goes to review: either the frame or the rig's optics changed). A frame with too few red
    cells uses the rig's median when the rig has one.
``assumed``
    Nothing known (no scale given, too few red cells, no rig estimate yet): the frame is
    analysed as it is and goes to review (``scale_unknown``).

The models' scale is the segmenter manifest's ``scale`` (red-cell diameter measured on the
training fields). Factors within 2 % of 1 are not applied (resampling would only blur);
factors are bounded so a frame can neither explode in pixels nor vanish.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import cv2
import numpy as np

from daemon.domain.manifest import RedCellScale
from daemon.domain.results import CellResult, ScaleInfo
from daemon.imaging.ruler import measure_red_cells

TOLERANCE = 0.02
MIN_FACTOR, MAX_FACTOR = 1 / 16, 4.0


class Rescaler:
    def __init__(self, model_scale: RedCellScale | None, history: int = 25, jump: float = 0.25,
                 max_rigs: int = 256) -> None:
        self.model_scale = model_scale
        self.model_um = (None if model_scale is None
                         else model_scale.rbc_um / model_scale.rbc_diameter_px)
        self.history = history
        self.jump = jump
        self.max_rigs = max_rigs
        self._rigs: OrderedDict[str, deque[float]] = OrderedDict()

    def _rig(self, rig: str) -> deque[float]:
        diameters = self._rigs.pop(rig, None) or deque(maxlen=self.history)
        self._rigs[rig] = diameters  # most recently used last
        while len(self._rigs) > self.max_rigs:
            self._rigs.popitem(last=False)
        return diameters

    def resolve(self, image: np.ndarray, um_per_pixel: float | None = None,
                source: str = "configured", rig: str | None = None) -> ScaleInfo:
        """Where ``image`` ((H, W, 3) uint8 RGB, as captured) stands against the models."""
        if self.model_scale is None:
            return ScaleInfo(um_per_pixel=um_per_pixel, source="assumed", factor=1.0,
                             reliable=False)
        if um_per_pixel is not None and math.isfinite(um_per_pixel) and um_per_pixel > 0:
            # A given scale wins: no ruler on this frame (it runs on every frame otherwise).
            assert self.model_um is not None
            return self._info(um_per_pixel, source, um_per_pixel / self.model_um, None, True)
        ruler = measure_red_cells(image)
        diameters = self._rig(rig or "")
        if ruler.reliable:
            assert ruler.diameter_px is not None
            diameters.append(ruler.diameter_px)
            median = float(np.median(diameters))
            agrees = abs(ruler.diameter_px / median - 1) <= self.jump
            return self._estimated(median, ruler.diameter_px, agrees)
        if diameters:
            return self._estimated(float(np.median(diameters)), ruler.diameter_px, True)
        # Too few red cells and no rig estimate: a weak guess could enlarge a frame 5x; analyse
        # it as captured and say so (the frame goes to review as scale_unknown).
        return ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0,
                         rbc_diameter_px=ruler.diameter_px, reliable=False)

    def _estimated(self, diameter: float, measured: float | None, reliable: bool) -> ScaleInfo:
        assert self.model_scale is not None
        return self._info(self.model_scale.rbc_um / diameter, "estimated",
                          self.model_scale.rbc_diameter_px / diameter, measured, reliable)

    @staticmethod
    def _info(um: float, source: str, factor: float, measured: float | None,
              reliable: bool) -> ScaleInfo:
        bounded = min(MAX_FACTOR, max(MIN_FACTOR, factor))
        if abs(bounded - 1.0) <= TOLERANCE:
            bounded = 1.0
        within = MIN_FACTOR <= factor <= MAX_FACTOR  # beyond: bounded, so not to be trusted
        return ScaleInfo(um_per_pixel=round(um, 5), source=source, factor=round(bounded, 5),
                         rbc_diameter_px=measured, reliable=reliable and within)

    @staticmethod
    def apply(image: np.ndarray, factor: float) -> np.ndarray:
        if factor == 1.0:
            return image
        height, width = image.shape[:2]
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        return cv2.resize(image, size, interpolation=interpolation)

    @staticmethod
    def to_frame(cells: list[CellResult], factor: float) -> list[CellResult]:
        """Boxes and areas of ``cells`` found in a frame resized by ``factor``, in frame pixels."""
        if factor == 1.0:
            return cells
        out = []
        for cell in cells:
            x, y, w, h = cell.bbox
            box = [round(x / factor), round(y / factor), max(1, round(w / factor)),
                   max(1, round(h / factor))]
            out.append(cell.model_copy(update={
                "bbox": box, "area_px": max(1, round(cell.area_px / factor**2))}))
        return out


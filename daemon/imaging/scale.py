"""Pixel scale: frames reach the models at the scale the models were trained at.

Each frame carries the µm/pixel of its source (``capture.um_per_pixel``, or the CZI file's
metadata, or ``um_per_pixel`` of an HTTP push); each model manifest states the scale it was
trained at (``um_per_pixel``; the segmenter's, else the classifier's). A worker resizes each
decoded frame by ``frame µm/px ÷ model µm/px`` (INTER_AREA when shrinking, INTER_LINEAR
when enlarging) before segmentation, and maps the cells' boxes and areas back to the
frame's own pixels, so results are always in the pixels of the frame as captured.

A frame without a scale, or models without one, is analysed as it is; that is logged as
a warning once per worker (per cause), since results then depend on the rig's optics.
Factors within 2 % of 1 are not applied (resampling would only blur).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from daemon.domain.results import CellResult

log = logging.getLogger(__name__)

TOLERANCE = 0.02


class Rescaler:
    def __init__(self, model_um_per_pixel: float | None) -> None:
        self.model_um = model_um_per_pixel
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str, **extra: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, extra=extra)

    def factor(self, frame_um: float | None) -> float:
        """How much to enlarge a frame of ``frame_um`` µm/px for the models (1.0: as is)."""
        if self.model_um is None:
            self._warn_once("model", "model manifests state no um_per_pixel; frames are not "
                            "rescaled")
            return 1.0
        if frame_um is None:
            self._warn_once("frame", "a frame has no pixel scale (set capture.um_per_pixel); "
                            "assuming the models' scale", model_um_per_pixel=self.model_um)
            return 1.0
        factor = frame_um / self.model_um
        return 1.0 if abs(factor - 1.0) <= TOLERANCE else factor

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

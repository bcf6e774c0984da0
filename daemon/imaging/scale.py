"""Pixel scale: every frame reaches the models at the scale the models were trained at.

Where a frame's scale comes from, in order (``ScaleInfo.source`` in its result):

``configured`` / ``file``
    The rig's ``capture.um_per_pixel``, an HTTP push's ``um_per_pixel``, or the file's own
    metadata (CZI). The factor is ``frame µm/px / models' µm/px``.
``estimated``
    Red cells measured in the frame (``daemon.imaging.ruler``). The factor is the models'
    red-cell diameter over the rig's running median diameter (last ``history`` reliable
    frames of that rig, this one included): one frame's odd estimate cannot move it, an
    objective change moves it within ``history / 2`` frames. A frame whose own estimate is
    more than ``1 + jump`` times larger or smaller than the rig's median is marked
    ``reliable: false`` (it goes to review: either the frame or the rig's optics changed, and
    the models may be analysing it at a scale they do not tolerate, see ``JUMP``). A frame
    with too few red cells uses the rig's median when the rig has one.
``assumed``
    Nothing known (no scale given, too few red cells, no rig estimate yet): the frame is
    analysed as it is and goes to review (``scale_unknown``).

The models' scale is the segmenter manifest's ``scale`` (red-cell diameter measured on the
training fields). Factors within 2 % of 1 are not applied (resampling would only blur);
factors are bounded so a frame can neither explode in pixels nor vanish. A frame coarser than
the models' scale is smoothed, edges kept, before it is enlarged (``SMOOTH_FROM``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable

import cv2
import numpy as np

from daemon.domain.manifest import RedCellScale
from daemon.domain.results import CellResult, ScaleInfo
from daemon.imaging.frames import Decoded
from daemon.imaging.rigs import rig_history
from daemon.imaging.ruler import measure_red_cells

TOLERANCE = 0.02
MIN_FACTOR, MAX_FACTOR = 1 / 16, 4.0
HISTORY = 25  # a rig's running estimate: the median of its last HISTORY reliable diameters
#: A frame's own red-cell reading may differ from its rig's median by this factor (either way)
#: before the frame is flagged ``scale_uncertain``: the scale error the models tolerate.
#: Validation blocks, each field analysed with a configured µm/px wrong by f
#: (docs/experiments/scale_tolerance.py): 97.8 % at f = 1; 97.2 % at 1/1.33, 1/1.25, 1.25 and
#: 1.33; 96.1 % at 1/1.4, so 0.33 by the rule in deploy/gpu/decision-2026-11-27c.txt (was
#: 0.25, set by hand). The training data's own slides differ in red-cell size by up to 1.7x
#: (model card), so a stream of them is still flagged where its slides' scales differ.
JUMP = 0.33
MAX_RIGS = 256  # rigs whose histories are kept (the least recently used goes first)
#: Enlarging by more than this, the frame is first smoothed by a bilateral filter (edges kept):
#: a coarse camera's JPEG blocks and noise would otherwise be enlarged into texture the models
#: never saw (and brightened with it by a dim frame's gain). Validation blocks, daemon path,
#: fields halved, 20 % darker, hue -6 deg, saturation x1.25, JPEG 50 (the suite's
#: ``mix_small_dim``): 89.3 -> 94.8 %; halved and JPEG 50: 95.0 -> 95.9 %; halved: 97.4 ->
#: 97.6 %. 1.5 is above the ruler's own spread: a lone frame at the models' scale is enlarged
#: past 1.3 by a misreading 3.3 % of the time, past 1.5 1.7 % (validation blocks, p95 1.245);
#: smoothing such a frame, as sharp as the models' own, only costs detail.
SMOOTH_FROM = 1.5
#: Bilateral filter: neighbourhood diameter (px), colour sigma (grey levels), space sigma (px);
#: colour sigma 10 / 20 / 40 on the validation blocks' ``mix_small_dim``: 92.8 / 94.8 / 94.6 %.
SMOOTH_DIAMETER, SMOOTH_SIGMA_COLOUR, SMOOTH_SIGMA_SPACE = 5, 20.0, 3.0


class Rescaler:
    def __init__(self, model_scale: RedCellScale | None, history: int = HISTORY,
                 jump: float = JUMP, max_rigs: int = MAX_RIGS) -> None:
        self.model_scale = model_scale
        self.model_um = (None if model_scale is None
                         else model_scale.rbc_um / model_scale.rbc_diameter_px)
        self.history = history
        self.jump = jump
        self.max_rigs = max_rigs
        self._rigs: OrderedDict[str, deque[float]] = OrderedDict()
        # A dict when the histories are kept elsewhere (in Redis: the API's decoding children
        # and the workers measure, Redis keeps): each diameter ``resolve`` adds to a rig's
        # history is added here too, under the rig, for the holder to send on.
        self.learned: dict[str, list[float]] | None = None

    def _rig(self, rig: str) -> deque[float]:
        return rig_history(self._rigs, rig, self.history, self.max_rigs)

    def diameters(self, rig: str | None) -> list[float]:
        """The rig's recent red-cell diameters (frame pixels), oldest first: a copy."""
        return list(self._rigs.get(rig or "", ()))

    def remember(self, rig: str | None, diameters: Iterable[float]) -> None:
        """Add diameters measured elsewhere to the rig's history (bounded as ever)."""
        self._rig(rig or "").extend(diameters)

    def adopt(self, rig: str | None, diameters: Iterable[float]) -> None:
        """The rig's history is now ``diameters`` (its last ``history``, oldest first: the
        shared one, read from where it is kept); other rigs' stay."""
        kept = self._rig(rig or "")
        kept.clear()
        kept.extend(diameters)

    def reset(self, rig: str | None, diameters: Iterable[float]) -> None:
        """Forget every rig's history; ``rig``'s is ``diameters``."""
        self._rigs.clear()
        self.remember(rig, diameters)

    def planned_factor(self, um_per_pixel: float | None = None, rig: str | None = None
                       ) -> float | None:
        """The factor :meth:`resolve` will most likely give a frame, known before decoding
        it: from a given scale, else from the rig's running median red-cell diameter; None
        when neither is known (a rig's first frames). Reads the rig's history without
        changing it, so it may run on a decode thread."""
        if self.model_scale is None:
            return None
        if um_per_pixel is not None and math.isfinite(um_per_pixel) and um_per_pixel > 0:
            assert self.model_um is not None
            return self._info(um_per_pixel, "configured", um_per_pixel / self.model_um,
                              None, True).factor
        diameters = self._rigs.get(rig or "")
        if not diameters:
            return None
        median = float(np.median(list(diameters)))  # list(): one atomic copy under the GIL
        return self._info(self.model_scale.rbc_um / median, "estimated",
                          self.model_scale.rbc_diameter_px / median, None, True).factor

    def resolve(self, image: np.ndarray, um_per_pixel: float | None = None,
                source: str = "configured", rig: str | None = None,
                image_scale: float = 1.0) -> ScaleInfo:
        """Where a frame stands against the models. ``image``: (h, w, 3) uint8 RGB, the frame
        as captured, or resized by ``image_scale`` (image pixels per frame pixel: the worker
        measures a frame decoded reduced at its planned models' scale). The result is always
        in the frame's own pixels (factor, diameter): the ruler's diameter is divided by
        ``image_scale``."""
        if self.model_scale is None:
            return ScaleInfo(um_per_pixel=um_per_pixel, source="assumed", factor=1.0,
                             reliable=False)
        if um_per_pixel is not None and math.isfinite(um_per_pixel) and um_per_pixel > 0:
            # A given scale wins: no ruler on this frame (it runs on every frame otherwise).
            assert self.model_um is not None
            return self._info(um_per_pixel, source, um_per_pixel / self.model_um, None, True)
        ruler = measure_red_cells(image)
        measured = None if ruler.diameter_px is None else ruler.diameter_px / image_scale
        diameters = self._rig(rig or "")
        if ruler.reliable:
            assert measured is not None
            diameters.append(measured)
            if self.learned is not None:
                self.learned.setdefault(rig or "", []).append(measured)
            median = float(np.median(diameters))
            ratio = measured / median
            agrees = max(ratio, 1 / ratio) <= 1 + self.jump
            return self._estimated(median, measured, agrees)
        if diameters:
            return self._estimated(float(np.median(diameters)), measured, True)
        # Too few red cells and no rig estimate: a weak guess could enlarge a frame 5x; analyse
        # it as captured and say so (the frame goes to review as scale_unknown).
        return ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0,
                         rbc_diameter_px=measured, reliable=False,
                         overexposed=ruler.overexposed)

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

    def to_models(self, frame: Decoded, um_per_pixel: float | None = None,
                  source: str = "configured", rig: str | None = None
                  ) -> tuple[np.ndarray | None, ScaleInfo]:
        """A decoded frame (``frames.decode_reduced``) at the models' scale, (round(width *
        factor), round(height * factor), 3) uint8, and its scale (in the frame's own pixels,
        so ``to_frame`` maps boxes back by ``scale.factor`` whatever the reduction). None
        instead of the image when the frame was decoded too small for the factor this frame
        resolves to (the rig's estimate moved past the reduction): decode it in full and
        ``apply`` the factor, rather than enlarge a reduced image."""
        if frame.reduction == 1:
            scale = self.resolve(frame.image, um_per_pixel, source, rig)
            return self.apply(frame.image, scale.factor), scale
        assert frame.factor is not None
        size = (frame.width, frame.height)
        # The ruler misread some DCT-reduced fields (17 px for 57 on a dense synthetic 3x
        # field, where an area-resized copy of the full decode read 57); on the image at the
        # planned models' scale it agrees with the full decode within ~3 %.
        planned = self.apply(frame.image, frame.factor, size)
        scale = self.resolve(planned, um_per_pixel, source, rig, frame.factor)
        if scale.factor == frame.factor:  # always for a given scale
            return planned, scale
        if abs(scale.factor / frame.factor - 1) <= TOLERANCE:
            # The rig's median moved by less than resampling is worth (as for factors near 1):
            # keep the planned image, and report the factor it was brought to by.
            return planned, scale.model_copy(update={"factor": frame.factor})
        if scale.factor * frame.reduction > 1.0:
            return None, scale
        return self.apply(frame.image, scale.factor, size), scale

    @staticmethod
    def apply(image: np.ndarray, factor: float,
              frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """``image`` (h, w, 3) resized by ``factor`` relative to the frame it shows, whose size
        is ``frame_size`` (width, height; None: the image's own). For a frame decoded reduced
        the output is the same size as from the full decode, (round(width * factor),
        round(height * factor)), so ``to_frame`` maps its boxes back by ``factor`` alone.
        Enlarging by more than ``SMOOTH_FROM``, the image is bilateral-filtered first."""
        height, width = image.shape[:2]
        frame_w, frame_h = frame_size or (width, height)
        if factor == 1.0 and (frame_w, frame_h) == (width, height):
            return image
        size = (max(1, round(frame_w * factor)), max(1, round(frame_h * factor)))
        if size == (width, height):
            return image
        if size[0] < width:
            return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if size[0] > SMOOTH_FROM * width:
            image = cv2.bilateralFilter(np.ascontiguousarray(image), SMOOTH_DIAMETER,
                                        SMOOTH_SIGMA_COLOUR, SMOOTH_SIGMA_SPACE)
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)

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


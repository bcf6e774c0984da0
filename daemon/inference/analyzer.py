"""The whole chain for a batch of decoded frames: segment -> find cells -> crop -> classify ->
aggregate. Used by the workers, by ``leukoscope classify`` and by the benchmark alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from daemon.domain.classes import UNIDENTIFIED
from daemon.domain.manifest import CellFilter, CropSpec, ReviewSpec
from daemon.domain.results import (
    ACQUISITION_OUT_OF_RANGE,
    CUT_OFF,
    LOW_CONFIDENCE,
    OVEREXPOSED,
    SCALE_UNCERTAIN,
    SCALE_UNKNOWN,
    UNIDENTIFIED_CELL,
    UNIDENTIFIED_CELLS,
    AcquisitionInfo,
    CellResult,
    ModelRef,
    ScaleInfo,
)
from daemon.imaging.acquisition import (
    LUMA,
    apply_gain,
    background_rgb,
    describe_background,
    gain_for,
)
from daemon.imaging.pipeline import (
    CellBox,
    aggregate,
    calibrate,
    crop_cells,
    find_cells,
    merge_views,
    touches_border,
    with_views,
)
from daemon.imaging.ruler import MAX_CLIPPED_SHARE, clipped_share
from daemon.imaging.scale import Rescaler
from daemon.imaging.stain import MAX_CORRECTION_DEG, StainCalibrator
from daemon.inference.sessions import Classifier, Segmenter
from daemon.settings import Settings


@dataclass
class FrameAnalysis:
    """What the models found in one frame."""

    cells: list[CellBox]
    cell_probabilities: np.ndarray  # (N, C) calibrated
    frame_probabilities: np.ndarray | None  # (4,) over the four classes; None: no known cell
    size: tuple[int, int] = (0, 0)  # (H, W) of the image the models saw
    timings_ms: dict[str, float] = field(default_factory=dict)

    def cut_off(self) -> list[bool]:
        """Per cell: its box touches the field's edge (part of the cell is not in view)."""
        return [touches_border(box, self.size) for box in self.cells]


class Analyzer:
    def __init__(self, segmenter: Segmenter, classifier: Classifier, max_batch_cells: int = 64):
        self.segmenter = segmenter
        self.classifier = classifier
        self.max_batch_cells = max_batch_cells
        self.cell_filter = segmenter.manifest.cells or CellFilter()
        self.crop_spec = classifier.manifest.crop or CropSpec()
        self.aggregation = classifier.manifest.aggregation or "mean"
        self.classes = classifier.classes
        self.temperature = classifier.manifest.temperature or 1.0
        self.views = classifier.manifest.views
        self.review = classifier.manifest.review or ReviewSpec()
        self.acquisition = segmenter.manifest.acquisition
        # Outputs that are one of the four classes (a model without ``unidentified`` has 4).
        self.known = [i for i, c in enumerate(self.classes) if c != UNIDENTIFIED]
        self.rescaler = Rescaler(segmenter.manifest.scale or classifier.manifest.scale)
        self.stain = StainCalibrator(self.acquisition.stain_hue_deg if self.acquisition
                                     else None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Analyzer:
        w = settings.workers
        gpu = {"tensorrt": w.tensorrt, "engine_cache": settings.trt_engine_dir if w.tensorrt
               else None, "io_binding": w.io_binding,
               "conv_algo_search": w.cudnn_conv_algo_search}
        analyzer = cls(
            Segmenter(settings.models.segmenter, w.device, w.threads, w.fp16,
                      max_pixels=w.max_batch_pixels, max_batch_frames=w.batch_frames, **gpu),
            Classifier(settings.models.classifier, w.device, w.threads, w.fp16, **gpu),
            w.max_batch_cells,
        )
        if not w.stain_calibration:
            analyzer.stain = StainCalibrator(None)
        return analyzer

    @property
    def provider(self) -> str:
        return self.segmenter.provider

    def model_refs(self) -> dict[str, ModelRef]:
        return {
            kind: ModelRef(
                name=m.manifest.name, version=m.manifest.version, sha256=m.manifest.sha256
            )
            for kind, m in (("segmenter", self.segmenter), ("classifier", self.classifier))
        }

    def warm_up(self) -> None:
        """One pass on a blank frame so the first real frame does not pay for allocation.

        With fixed batches (CUDA) also the shapes a stream of fields at the models' input size
        meets: a full batch of frames and the classifier's one batch size, each planned by
        cuDNN here rather than on the first frames."""
        height, width = self.segmenter.manifest.input.size
        blank = np.full((height, width, 3), 230, dtype=np.uint8)
        self.analyze([blank])
        if self.segmenter.fixed_batches and (self.segmenter.max_batch_frames or 1) > 1:
            self.segmenter.compute([blank] * (self.segmenter.max_batch_frames or 1))
        size = self.classifier.crop_size
        self.classifier.compute(np.zeros((1, size, size, 3), dtype=np.uint8), self.max_batch_cells)

    def prepare(self, image: np.ndarray, scale: ScaleInfo, rig: str | None = None
                ) -> tuple[np.ndarray, AcquisitionInfo | None]:
        """A frame as captured -> the frame at the models' scale, background and stain hue.

        image: (H, W, 3) uint8 RGB. The background is measured after rescaling (fewer pixels
        when shrinking) and brought to the models' reference by a per-channel gain.
        """
        return self.balance(self.rescaler.apply(image, scale.factor), rig)

    def balance(self, image: np.ndarray, rig: str | None = None
                ) -> tuple[np.ndarray, AcquisitionInfo | None]:
        """A frame already at the models' scale -> at the models' background (gain) and, for a
        rig whose stain hue is off the models' (``daemon.imaging.stain``), turned to theirs;
        and what was measured. Apart from :meth:`prepare` so that quality control can measure
        the frame between the two (its thresholds are for frames as lit, at the models'
        scale)."""
        if self.acquisition is None:
            return image, None
        background = background_rgb(image)
        reference = np.asarray(self.acquisition.background_rgb, np.float32)
        gain = gain_for(background, reference)
        brightness, hue, chroma = describe_background(background)
        balanced = apply_gain(image, gain)
        reference_grey = float(reference @ LUMA)
        # Clipped before the gain: its hue is bent, so it stays out of its rig's history.
        # Counted on a copy about 256 px across, as the background is (a share, not a count:
        # the whole camera frame cost 2 ms on this hot path).
        step = max(1, max(image.shape[:2]) // 256)
        overexposed = (self.stain.reference_deg is not None and rig is not None
                       and clipped_share(image[::step, ::step]) >= MAX_CLIPPED_SHARE)
        turned, stain = self.stain.calibrate(balanced, reference_grey, rig, overexposed)
        info = AcquisitionInfo(
            background_rgb=[round(float(v), 1) for v in background], brightness=brightness,
            hue_deg=hue, chroma=chroma, gain=[round(float(g), 4) for g in gain],
            stain_hue_deg=None if stain.hue_deg is None else round(stain.hue_deg, 2),
            rig_stain_offset_deg=stain.rig_offset_deg, stain_turned_deg=stain.turned_deg)
        return turned, info

    def analyze(self, images: list[np.ndarray]) -> list[FrameAnalysis]:
        """images: (H, W, 3) uint8 RGB frames at the models' scale (``prepare``). Crops of all
        frames share batches.

        Each analysis's ``timings_ms``: ``crop`` (finding and cropping its cells) is the
        frame's own; ``segment`` is its own when it ran alone (tiled), else its equal share of
        the batch of same-sized frames it ran in; ``classify`` is its share of the batch's
        classifier time by its number of cells (cells of all frames are classified together).
        """
        started = time.perf_counter()
        masks = self.segmenter.compute(images)
        segment_ms = list(getattr(self.segmenter, "last_ms", []))
        if len(segment_ms) != len(images):  # a segmenter that does not say: equal shares
            segment_ms = [(time.perf_counter() - started) * 1000 / len(images)] * len(images)
        boxes, crops, crop_ms = [], [], []
        for image, mask in zip(images, masks, strict=True):
            started = time.perf_counter()
            frame_boxes = find_cells(mask, self.cell_filter)
            crops.append(crop_cells(image, frame_boxes, self.crop_spec,
                                    self.classifier.crop_size))
            boxes.append(frame_boxes)
            crop_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        all_probs = calibrate(self.classify(np.concatenate(crops)), self.temperature)
        classify_ms = (time.perf_counter() - started) * 1000
        total_cells = max(1, len(all_probs))
        analyses = []
        offset = 0
        for i, (image, frame_boxes) in enumerate(zip(images, boxes, strict=True)):
            probs = all_probs[offset : offset + len(frame_boxes)]
            offset += len(frame_boxes)
            size = image.shape[:2]
            counted = self._counted(frame_boxes, probs, size)
            frame_probs = (aggregate(probs[counted][:, self.known], self.aggregation)
                           if counted.any() else None)
            timings = {"segment": segment_ms[i], "crop": crop_ms[i],
                       "classify": classify_ms * len(frame_boxes) / total_cells}
            analyses.append(FrameAnalysis(frame_boxes, probs, frame_probs, size, timings))
        return analyses

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 crops -> (N, C) uncalibrated probabilities, over the manifest's
        ``views`` of each crop."""
        probs = self.classifier.compute(with_views(crops, self.views), self.max_batch_cells)
        return merge_views(probs, self.views)

    def _counted(self, boxes: list[CellBox], probs: np.ndarray, size: tuple[int, int]
                 ) -> np.ndarray:
        """(N,) bool: cells that vote for the frame's class: identified and not cut off."""
        identified = np.isin(probs.argmax(axis=1), self.known) if len(probs) else np.zeros(0, bool)
        whole = np.asarray([not touches_border(b, size) for b in boxes], bool)
        # A field whose every known cell touches the edge still has a class: use them.
        return identified & whole if (identified & whole).any() else identified

    def describe(self, analysis: FrameAnalysis, scale: ScaleInfo | None = None,
                 acquisition: AcquisitionInfo | None = None) -> dict:
        """FrameResult fields for one analysis: frame_class, frame_probabilities, cells and the
        review flags (cells' and the frame's, with the scale's and acquisition's reasons)."""
        review = self.review
        cut_off = analysis.cut_off()
        cells = []
        for box, p, cut in zip(analysis.cells, analysis.cell_probabilities, cut_off, strict=True):
            best = int(np.argmax(p))
            called, confidence = self.classes[best], round(float(p[best]), 6)
            if cut:  # part of the cell is outside the field: not one of the four, by rule
                called, confidence, reasons = UNIDENTIFIED, None, [CUT_OFF]
            elif called == UNIDENTIFIED:
                reasons = [UNIDENTIFIED_CELL]
            elif p[best] < review.cell_confidence:
                reasons = [LOW_CONFIDENCE]
            else:
                reasons = []
            cells.append(CellResult(
                bbox=box.bbox, area_px=box.area_px, class_=called,
                probabilities={c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)},
                confidence=confidence, needs_review=bool(reasons), review_reasons=reasons))
        frame_reasons = []
        if scale is not None and scale.source == "assumed":
            frame_reasons.append(SCALE_UNKNOWN)
            if scale.overexposed:  # say why, so the rig is fixed rather than each frame read
                frame_reasons.append(OVEREXPOSED)
        elif scale is not None and not scale.reliable:
            frame_reasons.append(SCALE_UNCERTAIN)
        if acquisition is not None and self.acquisition is not None and (
                acquisition.brightness < self.acquisition.min_brightness
                or acquisition.chroma > self.acquisition.max_chroma
                or abs(acquisition.rig_stain_offset_deg or 0.0) > MAX_CORRECTION_DEG):
            frame_reasons.append(ACQUISITION_OUT_OF_RANGE)
        # Cells cut by the edge are left out by rule, not doubt: the share is of whole cells.
        whole = [c for c, cut in zip(cells, cut_off, strict=True) if not cut]
        unidentified = sum(c.class_ == UNIDENTIFIED for c in whole)
        if whole and unidentified / len(whole) > review.max_unidentified_share:
            frame_reasons.append(UNIDENTIFIED_CELLS)
        fields: dict = {"cells": cells}
        fp = analysis.frame_probabilities
        if fp is None:
            fields.update(frame_class=UNIDENTIFIED if cells else None, frame_probabilities={})
        else:
            known = [self.classes[i] for i in self.known]
            fields.update(
                frame_class=known[int(np.argmax(fp))],
                frame_probabilities={c: round(float(v), 6) for c, v in zip(known, fp, strict=True)})
            if float(fp.max()) < review.frame_confidence:
                frame_reasons.append(LOW_CONFIDENCE)
        if fields["frame_class"] == UNIDENTIFIED and UNIDENTIFIED_CELLS not in frame_reasons:
            frame_reasons.append(UNIDENTIFIED_CELLS)
        fields.update(needs_review=bool(frame_reasons), review_reasons=frame_reasons,
                      scale=scale, acquisition=acquisition)
        return fields

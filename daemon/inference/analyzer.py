"""The whole chain for a batch of decoded frames: segment -> find cells -> crop -> classify ->
aggregate. Used by the workers, by ``leukoscope classify`` and by the benchmark alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from daemon.domain.manifest import CellFilter, CropSpec
from daemon.domain.results import CellResult, ModelRef
from daemon.imaging.pipeline import CellBox, aggregate, crop_cells, find_cells
from daemon.inference.sessions import Classifier, Segmenter
from daemon.settings import Settings


@dataclass
class FrameAnalysis:
    """What the models found in one frame."""

    cells: list[CellBox]
    cell_probabilities: np.ndarray  # (N, C)
    frame_probabilities: np.ndarray | None  # (C,), None when no cell was found
    timings_ms: dict[str, float] = field(default_factory=dict)


class Analyzer:
    def __init__(self, segmenter: Segmenter, classifier: Classifier, max_batch_cells: int = 64):
        self.segmenter = segmenter
        self.classifier = classifier
        self.max_batch_cells = max_batch_cells
        self.cell_filter = segmenter.manifest.cells or CellFilter()
        self.crop_spec = classifier.manifest.crop or CropSpec()
        self.aggregation = classifier.manifest.aggregation or "mean"
        self.classes = classifier.classes

    @classmethod
    def from_settings(cls, settings: Settings) -> Analyzer:
        w = settings.workers
        return cls(
            Segmenter(settings.models.segmenter, w.device, w.threads, w.fp16),
            Classifier(settings.models.classifier, w.device, w.threads, w.fp16),
            w.max_batch_cells,
        )

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
        """One pass on a blank frame so the first real frame does not pay for allocation."""
        height, width = self.segmenter.manifest.input.size
        self.analyze([np.full((height, width, 3), 230, dtype=np.uint8)])
        size = self.classifier.crop_size
        self.classifier.compute(np.zeros((1, size, size, 3), dtype=np.uint8))

    def analyze(self, images: list[np.ndarray]) -> list[FrameAnalysis]:
        """images: decoded (H, W, 3) uint8 RGB frames. Crops of all frames share batches."""
        started = time.perf_counter()
        masks = self.segmenter.compute(images)
        segmented = time.perf_counter()
        boxes = [find_cells(mask, self.cell_filter) for mask in masks]
        crops = [
            crop_cells(image, frame_boxes, self.crop_spec, self.classifier.crop_size)
            for image, frame_boxes in zip(images, boxes, strict=True)
        ]
        cropped = time.perf_counter()
        all_probs = self.classifier.compute(np.concatenate(crops), self.max_batch_cells)
        classified = time.perf_counter()
        per_frame_ms = {
            "segment": (segmented - started) * 1000 / len(images),
            "crop": (cropped - segmented) * 1000 / len(images),
            "classify": (classified - cropped) * 1000 / len(images),
        }
        analyses = []
        offset = 0
        for frame_boxes in boxes:
            probs = all_probs[offset : offset + len(frame_boxes)]
            offset += len(frame_boxes)
            frame_probs = aggregate(probs, self.aggregation) if len(frame_boxes) else None
            analyses.append(FrameAnalysis(frame_boxes, probs, frame_probs, dict(per_frame_ms)))
        return analyses

    def describe(self, analysis: FrameAnalysis) -> dict:
        """FrameResult fields (frame_class, frame_probabilities, cells) for one analysis."""
        cells = [
            CellResult(
                bbox=box.bbox,
                area_px=box.area_px,
                class_=self.classes[int(np.argmax(p))],
                probabilities={c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)},
            )
            for box, p in zip(analysis.cells, analysis.cell_probabilities, strict=True)
        ]
        if analysis.frame_probabilities is None:
            return {"frame_class": None, "frame_probabilities": {}, "cells": cells}
        fp = analysis.frame_probabilities
        return {
            "frame_class": self.classes[int(np.argmax(fp))],
            "frame_probabilities": {
                c: round(float(v), 6) for c, v in zip(self.classes, fp, strict=True)
            },
            "cells": cells,
        }

"""Training crops cut the way the daemon cuts them, from fields under a random acquisition shift.

The augmentation in ``augment.py`` degrades crops already cut and normalised; what a second rig
sends goes through more: the whole field is shifted (scale, exposure, stain, focus, JPEG), then
the daemon finds its scale from the red cells, smooths and rescales it, brings its background to
the models' (gain), segments it with the shipped U-Net and crops each cell. ``daemon_crops``
runs that very path (``Analyzer.prepare``, ``Segmenter``, ``find_cells``, ``crop_cells``) on
training fields, and keeps each crop the field's cleaned mask says is a labelled white cell.
Torch-free: the crops go to ``leukoscope train classifier --extra-crops``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from daemon.imaging.pipeline import crop_cells, find_cells, touches_border
from daemon.imaging.scale import Rescaler
from daemon.inference.analyzer import Analyzer
from daemon.training.shifts import Shift, chain, chroma, defocus, exposure, jpeg, magnify, noise


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def random_shift(rng: np.random.Generator) -> Shift:
    """One second rig, drawn from the ranges of issue "Right on any rig": magnification
    0.5-2x (60 % of draws), exposure +-25 %, hue +-8 deg, saturation x0.65-1.35, defocus
    sigma 0.5-2 px and sensor noise 1-3 % (before the camera's sampling, 30 % each), JPEG
    quality 25-90 (half of draws)."""
    optics: list[Shift] = []
    if rng.random() < 0.3:
        optics.append(defocus(float(rng.uniform(0.5, 2.0))))
    if rng.random() < 0.3:
        optics.append(noise(float(rng.uniform(0.01, 0.03)), seed=int(rng.integers(1 << 30))))
    if rng.random() < 0.6:
        optics.append(magnify(_log_uniform(rng, 0.5, 2.0)))
    camera = [exposure(_log_uniform(rng, 0.75, 1.25)),
              chroma(float(rng.uniform(-8, 8)), _log_uniform(rng, 0.65, 1.35))]
    if rng.random() < 0.5:
        camera.append(jpeg(int(rng.integers(25, 91))))
    return chain(*optics, *camera)


def daemon_crops(
    analyzer: Analyzer, images: list[np.ndarray], masks: np.ndarray, labels: np.ndarray,
    views: int, seed: int, min_cover: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 crops and (N,) int64 labels from ``views`` shifted copies per field.

    images: (H, W, 3) uint8 RGB fields as the files hold them; masks: (N, H, W) their cleaned
    white-cell masks (non-zero = cell); labels: (N,) class index per field. A cell the daemon
    finds is kept when at least ``min_cover`` of its box is the mask's (red cells and debris
    the segmenter takes are left out: they are not the field's class) and it is whole (a cell
    cut by the field's edge does not vote in the daemon).
    """
    rng = np.random.default_rng(seed)
    out_crops: list[np.ndarray] = []
    out_labels: list[int] = []
    size = analyzer.classifier.crop_size
    for image, mask, label in zip(images, masks, labels, strict=True):
        for _ in range(views):
            shifted = random_shift(rng)(image)
            scale = Rescaler(analyzer.rescaler.model_scale).resolve(shifted, None, rig=None)
            frame, _ = analyzer.prepare(shifted, scale)
            probability = analyzer.segmenter.compute([frame])[0]
            truth = cv2.resize((mask > 0).astype(np.uint8), (frame.shape[1], frame.shape[0]),
                               interpolation=cv2.INTER_NEAREST)
            kept = [box for box in find_cells(probability, analyzer.cell_filter)
                    if truth[box.y : box.y + box.h, box.x : box.x + box.w].mean() >= min_cover
                    and not touches_border(box, frame.shape[:2])]
            out_crops.append(crop_cells(frame, kept, analyzer.crop_spec, size))
            out_labels += [int(label)] * len(kept)
    crops = (np.concatenate(out_crops) if out_crops
             else np.empty((0, size, size, 3), np.uint8))
    return crops, np.asarray(out_labels, np.int64)

"""The per-frame chain as plain functions over numpy arrays.

    segment      RGB frame (H, W, 3) uint8          -> foreground probability (H, W) float32
    find_cells   probability (H, W)                 -> cell boxes [x, y, w, h] + areas (pixels)
    crop_cells   RGB frame + boxes                  -> crops (N, S, S, 3) uint8
    with_views   crops (N, S, S, 3)                 -> crops and their mirror images (V*N, ...)
    classify     crops                              -> probabilities (N, C) float32
    merge_views  probabilities (V*N, C)             -> probabilities (N, C)
    aggregate    probabilities (N, C)               -> frame probabilities (C,)

``segment`` and ``classify`` run ONNX models (see ``daemon.inference``); the functions here
are the model-free steps, shared by the daemon and by training so crops are cut one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from daemon.domain.manifest import CellFilter, CropSpec, InputSpec


@dataclass(frozen=True)
class CellBox:
    """One connected component of the mask, in frame pixels."""

    x: int
    y: int
    w: int
    h: int
    area_px: int

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


def to_tensor(images_rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(N, H, W, 3) or (H, W, 3) uint8 RGB -> (N, 3, H, W) float32 normalized as ``spec`` says."""
    batch = images_rgb[None] if images_rgb.ndim == 3 else images_rgb
    if spec.channel_order == "BGR":
        batch = batch[..., ::-1]
    # Transpose while still uint8 (4x fewer bytes to move), then normalize in place.
    tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    mean = (np.asarray(spec.mean, dtype=np.float32) * 255.0).reshape(1, 3, 1, 1)
    scale = (1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)).reshape(1, 3, 1, 1)
    tensor -= mean
    tensor *= scale
    return tensor


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (H, W, C) at bottom/right by edge replication so H and W are multiples of ``multiple``."""
    if multiple <= 1:
        return image
    height, width = image.shape[:2]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)


def find_cells(probability: np.ndarray, cell_filter: CellFilter) -> list[CellBox]:
    """Connected components of ``probability >= threshold`` whose area lies within bounds.

    probability: (H, W) float in [0, 1]. Returns boxes in reading order (top to bottom, left to
    right) so a frame's cells are listed the same way every time.
    """
    mask = (probability >= cell_filter.threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    cells = [
        CellBox(int(x), int(y), int(w), int(h), int(area))
        for x, y, w, h, area in stats[1:count]
        if cell_filter.min_area_px <= area <= cell_filter.max_area_px
    ]
    return sorted(cells, key=lambda c: (c.y, c.x))


def crop_side(box: CellBox, spec: CropSpec) -> int:
    """Side of the square crop around ``box`` in frame pixels (see ``CropSpec``)."""
    return max(spec.min_side_px, int(round(max(box.w, box.h) * (1 + 2 * spec.margin))))


def crop_cells(
    image_rgb: np.ndarray, boxes: list[CellBox], spec: CropSpec, size: int
) -> np.ndarray:
    """Square crops centred on each box, resized to (size, size).

    image_rgb: (H, W, 3) uint8. Returns (N, size, size, 3) uint8; N = 0 gives an empty array.
    Crops leaving the frame are padded by edge replication.
    """
    crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    if not boxes:
        return crops
    sides = [crop_side(box, spec) for box in boxes]
    pad = max(sides)
    padded = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for i, (box, side) in enumerate(zip(boxes, sides, strict=True)):
        cx = box.x + box.w / 2.0
        cy = box.y + box.h / 2.0
        x0 = int(round(cx - side / 2.0)) + pad
        y0 = int(round(cy - side / 2.0)) + pad
        window = padded[y0 : y0 + side, x0 : x0 + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops[i] = cv2.resize(window, (size, size), interpolation=interpolation)
    return crops


#: Most views of one crop: the crop itself and its mirror image (a cell has no handedness).
MAX_VIEWS = 2


def with_views(crops: np.ndarray, views: int) -> np.ndarray:
    """(N, S, S, 3) crops -> (views * N, S, S, 3): the crops, then (views 2) their left-right
    mirror images. A cell's class does not change in a mirror; averaging the two calls
    removes part of the classifier's view-to-view noise (test-time augmentation)."""
    if views == 1:
        return crops
    if views != MAX_VIEWS:
        raise ValueError(f"views must be 1 or {MAX_VIEWS}, not {views}")
    return np.concatenate([crops, crops[:, :, ::-1]])


def merge_views(probabilities: np.ndarray, views: int) -> np.ndarray:
    """(views * N, C) probabilities of ``with_views`` crops -> (N, C): the normalised geometric
    mean over the views of each crop (the mean of the logits, as one softmax would give)."""
    if views == 1:
        return probabilities
    n = probabilities.shape[0] // views
    logs = np.log(np.clip(probabilities, 1e-12, 1.0)).reshape(views, n, -1).mean(axis=0)
    logs -= logs.max(axis=1, keepdims=True) if n else 0.0
    merged = np.exp(logs)
    return (merged / merged.sum(axis=1, keepdims=True)).astype(np.float32)


def touches_border(box: CellBox, size: tuple[int, int]) -> bool:
    """True when ``box`` reaches the edge of a (H, W) field: the cell is cut off."""
    height, width = size
    return box.x <= 0 or box.y <= 0 or box.x + box.w >= width or box.y + box.h >= height


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs (N, C): ``softmax(logits / T)``, computed from
    the probabilities as ``p^(1/T)`` renormalised (the same thing: the log-sum-exp cancels)."""
    if temperature == 1.0 or probabilities.size == 0:
        return probabilities
    logs = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logs -= logs.max(axis=1, keepdims=True)
    scaled = np.exp(logs)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def aggregate(probabilities: np.ndarray, method: str = "mean") -> np.ndarray:
    """Frame probabilities (C,) from per-cell probabilities (N, C).

    ``mean``: average of the cells' probabilities. ``log_mean``: normalized geometric mean
    (cells that are confident against a class veto it more strongly). N must be > 0.
    """
    if probabilities.shape[0] == 0:
        raise ValueError("aggregate needs at least one cell")
    if method == "log_mean":
        logs = np.log(np.clip(probabilities, 1e-7, 1.0)).mean(axis=0)
        frame = np.exp(logs - logs.max())
    elif method == "mean":
        frame = probabilities.mean(axis=0)
    else:
        raise ValueError(f"unknown aggregation method {method!r}")
    return (frame / frame.sum()).astype(np.float32)

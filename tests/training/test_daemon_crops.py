"""Training crops cut by the daemon's own path (daemon/training/daemon_crops.py)."""

from __future__ import annotations

import cv2
import numpy as np

from daemon.imaging.synthetic import smear_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.settings import SHIPPED_MODELS
from daemon.training.daemon_crops import daemon_crops, random_shift


def _fields(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic smears and their white-cell masks (the cells smear_field says it drew)."""
    images, masks = [], []
    for seed in range(count):
        image, cells = smear_field(np.random.default_rng(seed), (224, 224), white_cells=3)
        mask = np.zeros((224, 224), np.uint8)
        for x, y, r in cells:
            cv2.circle(mask, (x, y), r, 1, -1)
        images.append(image)
        masks.append(mask)
    return images, np.stack(masks)


def test_crops_are_the_masked_whole_cells_with_their_field_label() -> None:
    analyzer = Analyzer(Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1),
                        Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1))
    images, masks = _fields(4)
    labels = np.array([0, 1, 2, 3])
    crops, crop_labels = daemon_crops(analyzer, images, masks, labels, views=2, seed=0)
    assert crops.dtype == np.uint8 and crops.shape[1:] == (64, 64, 3)
    assert len(crops) == len(crop_labels) > 0
    assert len(crops) <= 3 * 2 * 4  # never more than the masked cells of each view
    assert set(crop_labels.tolist()) <= {0, 1, 2, 3}
    # a field whose mask holds no cell gives none, whatever the segmenter finds there
    none, none_labels = daemon_crops(analyzer, images[:1], np.zeros_like(masks[:1]),
                                     labels[:1], views=2, seed=0)
    assert len(none) == len(none_labels) == 0
    # the same seed draws the same shifts: the crops repeat exactly
    again, _ = daemon_crops(analyzer, images, masks, labels, views=2, seed=0)
    assert np.array_equal(again, crops)


def test_random_shifts_change_the_field_within_the_issue_ranges() -> None:
    image, _ = smear_field(np.random.default_rng(0), (224, 224))
    rng = np.random.default_rng(1)
    sizes, changed = set(), 0
    for _ in range(20):
        shifted = random_shift(rng)(image)
        sizes.add(shifted.shape[0])
        assert 0.5 * 224 - 1 <= shifted.shape[0] <= 2 * 224 + 1
        changed += shifted.shape != image.shape or not np.array_equal(shifted, image)
    assert changed == 20 and len(sizes) > 3

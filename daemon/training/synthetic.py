"""Synthetic blood-smear fields for tests and smoke runs (no real images are committed).

Writes a folder tree shaped like the real data set (``original/<Class>/``, ``segmented/<Class>/``)
with violet "white cells" on a light field of grey-blue "red cell" rings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FOLDERS = ("Benign", "Early", "Pre", "Pro")
PREFIX = {
    "Benign": "WBC-Benign",
    "Early": "WBC-Malignant-Early",
    "Pre": "WBC-Malignant-Pre",
    "Pro": "WBC-Malignant-Pro",
}
# violet nucleus colour per class (RGB) so the classes are learnable
NUCLEUS = {
    "Benign": (90, 40, 170),
    "Early": (150, 90, 220),
    "Pre": (120, 70, 200),
    "Pro": (200, 120, 210),
}


def synthetic_field(rng: np.random.Generator, folder: str, size: int = 224):
    """(field RGB, curators-style segmentation RGB, true mask) for one synthetic field.

    Light background, grey-blue red-cell rings (not foreground), 2-4 violet discs (white cells,
    some with a pale centre the cleaning must fill) and a small violet platelet dot.
    """
    image = np.full((size, size, 3), (235, 238, 245), np.uint8)
    for _ in range(25):
        cx, cy = rng.integers(0, size, 2)
        cv2.circle(image, (int(cx), int(cy)), 9, (170, 180, 215), 3)
    truth = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.integers(30, size - 30, 2)
        radius = int(rng.integers(10, 16))
        cv2.circle(image, (int(cx), int(cy)), radius, NUCLEUS[folder], -1)
        cv2.circle(image, (int(cx), int(cy)), 3, (205, 190, 225), -1)  # pale centre
        cv2.circle(truth, (int(cx), int(cy)), radius, 1, -1)
    px, py = rng.integers(10, size - 10, 2)
    cv2.circle(image, (int(px), int(py)), 2, (110, 50, 180), -1)  # platelet
    noise = rng.normal(0, 3, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    segmented = np.where(truth[..., None] > 0, (240, 120, 200), 0).astype(np.uint8)
    return image, segmented, truth


def make_dataset(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Write original/ and segmented/ folders like the real data set; returns ``root``."""
    rng = np.random.default_rng(seed)
    for folder in FOLDERS:
        for sub in ("original", "segmented"):
            (root / sub / folder).mkdir(parents=True, exist_ok=True)
        for number in range(1, per_class + 1):
            image, segmented, _ = synthetic_field(rng, folder)
            name = f"{PREFIX[folder]}-{number:03d}.jpg"
            cv2.imwrite(
                str(root / "original" / folder / name),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            cv2.imwrite(
                str(root / "segmented" / folder / name),
                cv2.cvtColor(segmented, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
    return root

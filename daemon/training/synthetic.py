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


NORMAL_KINDS = ("neutrophil", "platelet")


def synthetic_normal_cell(rng: np.random.Generator, kind: str, size: int = 180,
                          enlargement: float = 2.0) -> np.ndarray:
    """A single-cell image like an analyser's, ``enlargement`` times the fields' scale: pink
    red cells around one centred normal cell (a lobed neutrophil or a small platelet clump)."""
    image = np.full((size, size, 3), (236, 226, 222), np.uint8)
    r_red = int(round(9 * enlargement))
    for _ in range(14):
        cx, cy = rng.integers(0, size, 2)
        cv2.circle(image, (int(cx), int(cy)), r_red, (222, 170, 175), -1)
    centre = size // 2
    if kind == "neutrophil":
        cv2.circle(image, (centre, centre), int(14 * enlargement), (225, 195, 215), -1)
        for dx, dy in ((-8, -4), (0, 6), (8, -3)):
            cv2.circle(image, (centre + int(dx * enlargement), centre + int(dy * enlargement)),
                       int(5 * enlargement), (110, 50, 150), -1)
    else:
        for dx, dy in ((-3, 0), (3, 2), (0, -4)):
            cv2.circle(image, (centre + int(dx * enlargement), centre + int(dy * enlargement)),
                       int(2 * enlargement), (130, 70, 170), -1)
    noise = rng.normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_normal_cells(root: Path, per_class: int = 10, seed: int = 1) -> Path:
    """Write ``<kind>/<file>.jpg`` single-cell images like the normal-cell sample's layout."""
    rng = np.random.default_rng(seed)
    for kind in NORMAL_KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            image = synthetic_normal_cell(rng, kind)
            cv2.imwrite(str(root / kind / f"{kind[:2].upper()}_{number:04d}.jpg"),
                        cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root

"""Data set access for training (torch-free): listing, block split, mask cleaning, loading.

The data set layout (see ``shared/data/all-taleqani/README.md``)::

    original/<Class>/<file>.jpg     RGB fields, 224x224
    segmented/<Class>/<file>.jpg    the curators' HSV-threshold segmentation (background black)

File numbers are in acquisition order and neighbouring numbers often come from the same slide,
so the split is by contiguous blocks of file numbers (``block_split``), never by image.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Class codes in the classifier's output order, their display names and data-set folders.
CLASS_CODES: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")
CLASS_DISPLAY: tuple[str, ...] = ("Benign (hematogone)", "Early pre-B ALL", "Pre-B ALL", "Pro-B ALL")
CLASS_FOLDERS: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

SPLITS: tuple[str, ...] = ("train", "val", "test")
_NUMBER = re.compile(r"(\d+)\D*$")


@dataclass(frozen=True)
class FieldRecord:
    """One microscope field: its image, the curators' segmentation, class index and file number."""

    image: Path
    segmented: Path | None
    label: int
    number: int

    @property
    def name(self) -> str:
        """``<Folder>/<file>``, unique within the data set."""
        return f"{self.image.parent.name}/{self.image.name}"


def list_fields(data_dir: Path) -> list[FieldRecord]:
    """All fields under ``data_dir/original/<Class>/``, sorted by class then file number."""
    data_dir = Path(data_dir)
    records: list[FieldRecord] = []
    for label, folder in enumerate(CLASS_FOLDERS):
        class_dir = data_dir / "original" / folder
        if not class_dir.is_dir():
            continue
        for path in class_dir.iterdir():
            if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}:
                continue
            match = _NUMBER.search(path.stem)
            if match is None:
                continue
            seg = data_dir / "segmented" / folder / path.name
            records.append(
                FieldRecord(path, seg if seg.is_file() else None, label, int(match.group(1)))
            )
    if not records:
        raise FileNotFoundError(f"no fields under {data_dir}/original/<{'|'.join(CLASS_FOLDERS)}>")
    return sorted(records, key=lambda r: (r.label, r.number, r.image.name))


def block_split(
    records: list[FieldRecord],
    block_size: int = 40,
    fractions: tuple[float, float] = (0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[FieldRecord]]:
    """Split fields into train/val/test by contiguous blocks of file numbers, per class.

    A field's block is ``(class, number // block_size)``: every field of a block lands in the
    same split, so neighbouring fields (often the same slide) never straddle train and test.
    Per class, blocks are shuffled with ``seed`` and dealt to test until it holds at least
    ``fractions[1]`` of the class's fields, then to val until ``fractions[0]``, the rest to
    train. Returns ``{"train": [...], "val": [...], "test": [...]}`` each sorted.
    """
    rng = random.Random(seed)
    out: dict[str, list[FieldRecord]] = {split: [] for split in SPLITS}
    labels = sorted({r.label for r in records})
    for label in labels:
        blocks: dict[int, list[FieldRecord]] = {}
        for record in records:
            if record.label == label:
                blocks.setdefault(record.number // block_size, []).append(record)
        keys = sorted(blocks)
        rng.shuffle(keys)
        total = sum(len(v) for v in blocks.values())
        targets = {"test": fractions[1] * total, "val": fractions[0] * total}
        counts = {"test": 0, "val": 0}
        for key in keys:
            if counts["test"] < targets["test"]:
                split = "test"
            elif counts["val"] < targets["val"]:
                split = "val"
            else:
                split = "train"
            if split in counts:
                counts[split] += len(blocks[key])
            out[split].extend(blocks[key])
    for split in SPLITS:
        out[split].sort(key=lambda r: (r.label, r.number, r.image.name))
    return out


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --- mask cleaning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CleaningParams:
    """Parameters of ``clean_mask`` (pixel values 0-255, areas in frame pixels at 224x224)."""

    curated_min: int = 30  # curators' segmentation: foreground where max(R,G,B) > this
    violet_weak: float = 20.0  # white-cell colour: (R + B) / 2 - G >= this ...
    violet_strong: float = 35.0  # ... and a component must reach this somewhere
    open_px: int = 3  # opening kernel (removes specks, thin scale-bar text, red-cell rims)
    close_px: int = 5  # closing kernel (bridges granular nuclei)
    min_area_px: int = 100  # components smaller than this are platelets / debris
    max_area_px: int = 6000  # larger than this: stain blotch, not a cell cluster


def violet_score(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 ``(R + B) / 2 - G``: high on violet-stained nuclei.

    Red cells in these May-Grünwald-Giemsa fields are grey-blue (score ~0-25 on their rims),
    white cells and blasts violet to magenta (score ~40-110).
    """
    rgb = image_rgb.astype(np.float32)
    return (rgb[..., 0] + rgb[..., 2]) * 0.5 - rgb[..., 1]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a (H, W) uint8 {0,1} mask (background not connected to the border)."""
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    ff_mask = np.zeros((height + 4, width + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def clean_mask(
    image_rgb: np.ndarray,
    segmented_rgb: np.ndarray | None,
    params: CleaningParams = CleaningParams(),
) -> np.ndarray:
    """White-cell foreground mask from a field and the curators' segmentation.

    image_rgb, segmented_rgb: (H, W, 3) uint8 RGB (segmented may be None). Returns (H, W) uint8
    {0, 1}. Steps:

    1. candidates = curators' foreground (``max(RGB) > curated_min``) OR strongly violet pixels
       (``violet_score >= violet_strong``; recovers cells the curators' threshold missed, common
       in the pale Pro-B fields), AND ``violet_score >= violet_weak`` (drops red-cell rims,
       grey debris and background the curators kept);
    2. hysteresis: keep only connected components that contain a strongly violet pixel;
    3. morphology: opening (``open_px`` ellipse), closing (``close_px`` ellipse);
    4. hole filling (pale cytoplasm / granular nuclei inside a cell);
    5. size filter: components with ``min_area_px <= area <= max_area_px`` survive.
    """
    score = violet_score(image_rgb)
    strong = score >= params.violet_strong
    candidates = strong.copy()
    if segmented_rgb is not None:
        candidates |= segmented_rgb.max(axis=2) > params.curated_min
    candidates &= score >= params.violet_weak
    mask = candidates.astype(np.uint8)

    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count > 1:
        keep = np.zeros(count, bool)
        keep[np.unique(labels[strong & (labels > 0)])] = True
        keep[0] = False
        mask = keep[labels].astype(np.uint8)

    if params.open_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (params.open_px, params.open_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    if params.close_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (params.close_px, params.close_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = fill_holes(mask)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = (areas >= params.min_area_px) & (areas <= params.max_area_px)
    keep[0] = False
    return keep[labels].astype(np.uint8)


def overlay(image_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB with the mask's outline drawn in green, for checking masks by eye."""
    out = image_rgb.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    return out


# --- loading and provenance -------------------------------------------------------------------


def load_split_arrays(
    records: list[FieldRecord], params: CleaningParams = CleaningParams()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 RGB, cleaned masks (N, H, W) uint8 and labels (N,) int64.

    All fields must share one size (224x224 in this data set).
    """
    images, masks = [], []
    for record in records:
        image = read_rgb(record.image)
        seg = read_rgb(record.segmented) if record.segmented is not None else None
        images.append(image)
        masks.append(clean_mask(image, seg, params))
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    return np.stack(images), np.stack(masks), labels


def training_data_sha256(records: list[FieldRecord]) -> str:
    """sha256 over the sorted lines ``<name> <sha256 of image> <sha256 of segmentation>``."""
    lines = []
    for record in records:
        image_hash = hashlib.sha256(record.image.read_bytes()).hexdigest()
        seg_hash = (
            hashlib.sha256(record.segmented.read_bytes()).hexdigest() if record.segmented else "-"
        )
        lines.append(f"{record.name} {image_hash} {seg_hash}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()

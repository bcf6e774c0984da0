"""Data set access for training (torch-free): listing, block split, mask cleaning, loading.

The data set layout (see ``shared/data/all-taleqani/README.md``)::

    original/<Class>/<file>.jpg     RGB fields, 224x224
    segmented/<Class>/<file>.jpg    the curators' HSV-threshold segmentation (background black)

File numbers are in acquisition order and neighbouring numbers often come from the same slide,
so the split is by contiguous blocks of file numbers (``block_split``), never by image.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.domain.manifest import CellFilter, CropSpec
from daemon.imaging.acquisition import background_rgb, normalise_background
from daemon.imaging.pipeline import CellBox, crop_cells, find_cells
from daemon.imaging.ruler import measure_red_cells, violet_score

#: Class codes in the classifier's output order, their display names and data-set folders.
CLASS_DISPLAY: tuple[str, ...] = (
    "Benign (hematogone)",
    "Early pre-B ALL",
    "Pre-B ALL",
    "Pro-B ALL",
)
CLASS_FOLDERS: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
#: Display name of the classifier's fifth output, ``unidentified``.
UNIDENTIFIED_DISPLAY = "Unidentified (not a B-lineage precursor)"
#: Label index of ``unidentified`` (after the four classes).
UNIDENTIFIED_LABEL = len(CLASS_FOLDERS)

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


def slide_order(records: list[FieldRecord], block_size: int = 40, seed: int = 0) -> list[int]:
    """Indices of ``records`` as a rig would meet them: slides one after another in a seeded
    random order, each slide's fields in file order. A slide is a block of ``block_size`` file
    numbers of one class (neighbours in file order share a slide, as ``block_split`` assumes).

    File order is sorted by class (every benign field, then every early pre-B ...), and this
    data set's classes were stained in different batches, so a stream in file order lets any
    running per-rig estimate follow the diagnosis; no lab's rig sees its specimens sorted so."""
    blocks: dict[tuple[int, int], list[int]] = {}
    for index, record in enumerate(records):
        blocks.setdefault((record.label, record.number // block_size), []).append(index)
    keys = sorted(blocks)
    random.Random(seed).shuffle(keys)
    return [index for key in keys for index in blocks[key]]


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


# --- classifier crops and colour normalization ------------------------------------------------


def cell_crops(
    images: np.ndarray,
    masks: np.ndarray,
    crop_spec: CropSpec,
    size: int,
    cell_filter: CellFilter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut classifier crops exactly as the daemon does: ``find_cells`` + ``crop_cells``.

    images (N, H, W, 3) uint8 RGB; masks (N, H, W) {0,1} or probabilities in [0, 1].
    Returns crops (M, size, size, 3) uint8 and the field index of each crop (M,) int64.
    """
    cell_filter = cell_filter or CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9)
    crops, owners = [], []
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        boxes = find_cells(mask.astype(np.float32), cell_filter)
        if boxes:
            crops.append(crop_cells(image, boxes, crop_spec, size))
            owners.extend([index] * len(boxes))
    if not crops:
        return np.empty((0, size, size, 3), np.uint8), np.empty((0,), np.int64)
    return np.concatenate(crops), np.asarray(owners, dtype=np.int64)


def lab_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the LAB channels (OpenCV 8-bit LAB) over (N, H, W, 3) RGB uint8 images."""
    lab = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2LAB) for im in images]).astype(np.float32)
    per_image_mean = lab.reshape(len(images), -1, 3).mean(axis=1)
    per_image_std = lab.reshape(len(images), -1, 3).std(axis=1)
    return per_image_mean.mean(axis=0), per_image_std.mean(axis=0)


def reinhard_normalize(
    image_rgb: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray
) -> np.ndarray:
    """Reinhard colour transfer: match the field's LAB mean/std to a target. (H,W,3) uint8 RGB."""
    lab = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean = lab.reshape(-1, 3).mean(axis=0)
    std = lab.reshape(-1, 3).std(axis=0) + 1e-3
    lab = (lab - mean) / std * target_std + target_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _split(reference, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
           names: list[str], records: list[FieldRecord]) -> dict:
    """One split as ``load_splits`` returns it."""
    return {"reference_background": [float(v) for v in reference], "images": images,
            "masks": masks, "labels": labels, "names": names, "records": records}


def load_splits(
    data_dir: str, block_size: int, seed: int, limit: int = 0, cache_dir: Path | None = None
) -> dict[str, dict]:
    """Per split: images (N,H,W,3) uint8, masks (N,H,W) uint8, labels (N,), names, records.

    The cleaned masks are cached as ``cache_dir/fields_b<block>_s<seed>.npz`` (git-ignored).
    ``data_dir`` may be a training pack (``daemon.training.pack``): then train and val only.
    """
    if is_pack(Path(data_dir)):
        return load_pack(Path(data_dir), block_size, seed, limit)
    records = list_fields(Path(data_dir))
    splits = block_split(records, block_size=block_size, seed=seed)
    if limit:
        splits = {k: v[:limit] for k, v in splits.items()}
    cache = None
    if cache_dir is not None and not limit:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = cache_dir / f"fields_b{block_size}_s{seed}_bgnorm.npz"
    out: dict[str, dict] = {}
    stored = dict(np.load(cache)) if cache is not None and cache.is_file() else {}
    fresh: dict[str, np.ndarray] = {}
    if "reference_background" in stored:
        reference = stored["reference_background"]
    else:
        reference = reference_background([read_rgb(r.image) for r in splits["train"]])
    fresh["reference_background"] = reference
    for split, recs in splits.items():
        names = [r.name for r in recs]
        if f"{split}_images" in stored and list(stored[f"{split}_names"]) == names:
            images, masks = stored[f"{split}_images"], stored[f"{split}_masks"]
        else:
            images, masks, _ = load_split_arrays(recs)
            images = np.stack([normalise_background(im, tuple(reference)) for im in images])
        labels = np.asarray([r.label for r in recs], np.int64)
        fresh.update(
            {
                f"{split}_images": images,
                f"{split}_masks": masks,
                f"{split}_names": np.asarray(names),
            }
        )
        out[split] = _split(reference, images, masks, labels, names, recs)
    if cache is not None and not stored:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **fresh)
        tmp.replace(cache)
    return out


# --- training packs (``daemon.training.pack`` writes them) -------------------------------------

PACK_FILE = "pack.npz"
#: Splits a training pack carries: the test blocks never leave.
PACK_SPLITS: tuple[str, ...] = ("train", "val")
#: A pack's ``negatives/<split>/`` lists its files in ``pbc_split``'s order in this file.
NEGATIVES_ORDER = "order.txt"


def is_pack(path: Path) -> bool:
    """Whether ``path`` is a training pack's folder."""
    return (Path(path) / PACK_FILE).is_file()


def is_split_negatives(path: Path) -> bool:
    """Whether ``path`` holds foreign cells already split (``<split>/<class>/<file>``)."""
    return all((Path(path) / split).is_dir() for split in PACK_SPLITS)


def load_pack(pack_dir: Path, block_size: int, seed: int, limit: int = 0) -> dict[str, dict]:
    """Splits as ``data.load_splits`` returns them, from a pack (train and val only).

    Each split also carries ``training_data_sha256`` of the original data set's train part.
    Raises ValueError when the pack was made with another block size or seed."""
    pack_dir = Path(pack_dir)
    stored = np.load(pack_dir / PACK_FILE)
    made = (int(stored["block_size"]), int(stored["seed"]))
    if made != (block_size, seed):
        raise ValueError(f"pack {pack_dir} was made with block size {made[0]}, seed {made[1]}; "
                         f"asked for block size {block_size}, seed {seed}")
    reference = stored["reference_background"]
    out: dict[str, dict] = {}
    for split in PACK_SPLITS:
        names = [str(n) for n in stored[f"{split}_names"]]
        labels = stored[f"{split}_labels"].astype(np.int64)
        shape = tuple(int(v) for v in stored[f"{split}_mask_shape"])
        masks = np.unpackbits(stored[f"{split}_masks"], axis=-1, count=shape[-1]).astype(np.uint8)
        if limit:
            names, labels, masks = names[:limit], labels[:limit], masks[:limit]
        records = [
            FieldRecord(pack_dir / "fields" / split / name, None, int(label),
                        int(_NUMBER.search(Path(name).stem).group(1)))
            for name, label in zip(names, labels, strict=True)
        ]
        images = np.stack([normalise_background(read_rgb(r.image), tuple(reference))
                           for r in records])
        out[split] = {**_split(reference, images, masks, labels, names, records),
                      "training_data_sha256": str(stored["training_data_sha256"])}
    return out


# --- the models' scale and acquisition reference ---------------------------------------------


def reference_background(images: list[np.ndarray]) -> np.ndarray:
    """(3,) float32: median background colour (``background_rgb``) of the training fields; the
    daemon brings every frame's background to it (``acquisition.background_rgb`` manifest key)."""
    return np.median(np.stack([background_rgb(im) for im in images]), axis=0).round(1)


def red_cell_scale(images: np.ndarray) -> dict:
    """The models' red-cell ruler: median and quartiles of ``measure_red_cells`` over fields.

    Returns ``{"rbc_diameter_px", "q1", "q3", "fields", "reliable"}`` (pixels at the models'
    scale); the daemon rescales every frame by ``rbc_diameter_px / frame's diameter``.
    """
    rulers = [measure_red_cells(im) for im in images]
    d = np.asarray([r.diameter_px for r in rulers if r.reliable], np.float64)
    return {
        "rbc_diameter_px": round(float(np.median(d)), 3),
        "q1": round(float(np.percentile(d, 25)), 3),
        "q3": round(float(np.percentile(d, 75)), 3),
        "fields": len(rulers),
        "reliable": int(d.size),
    }


# --- negatives for the ``unidentified`` output -------------------------------------------------

PBC_SPLIT = {"train": 0.5, "val": 0.15}  # the rest (35 %) is the held-out test part


def pbc_split(pbc_dir: Path, seed: int = 0) -> dict[str, list[tuple[Path, str]]]:
    """Split the normal-cell sample per class: 50 % train, 15 % val, 35 % test (held out).

    Returns ``{"train"|"val"|"test": [(path, class_folder), ...]}``; deterministic for ``seed``.
    A training pack's ``negatives`` folder is already split (``<split>/<class>/<file>``).
    """
    out: dict[str, list[tuple[Path, str]]] = {split: [] for split in SPLITS}
    pbc_dir = Path(pbc_dir)
    if is_split_negatives(pbc_dir):
        for split in PACK_SPLITS:
            lines = (pbc_dir / split / NEGATIVES_ORDER).read_text().split()
            out[split] = [(pbc_dir / split / line, line.split("/")[0]) for line in lines]
        return out
    for class_dir in sorted(p for p in pbc_dir.iterdir() if p.is_dir()):
        paths = sorted(p for p in class_dir.iterdir()
                       if p.suffix.lower() in {".jpg", ".png"} and not p.name.startswith("."))
        random.Random(f"{seed}:{class_dir.name}").shuffle(paths)
        n_train = round(PBC_SPLIT["train"] * len(paths))
        n_val = round(PBC_SPLIT["val"] * len(paths))
        for i, path in enumerate(paths):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out[split].append((path, class_dir.name))
    return out


def foreign_at_model_scale(
    paths: list[Path], model_rbc_px: float, reference_rgb: tuple[float, float, float],
) -> list[np.ndarray]:
    """Foreign images brought to the models' scale and background, as the daemon does for one
    rig: each image's own red-cell estimate when reliable, else the set's median (the rig's
    running estimate). Returns (H, W, 3) uint8 RGB images."""
    images = [read_rgb(p) for p in paths]
    rulers = [measure_red_cells(im) for im in images]
    reliable = [r.diameter_px for r in rulers if r.reliable]
    fallback = float(np.median(reliable)) if reliable else None
    out = []
    for image, ruler in zip(images, rulers, strict=True):
        diameter = ruler.diameter_px if ruler.reliable else fallback
        factor = 1.0 if not diameter else model_rbc_px / diameter
        if abs(factor - 1.0) > 0.02:
            h, w = image.shape[:2]
            image = cv2.resize(
                image, (max(8, round(w * factor)), max(8, round(h * factor))),
                interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        out.append(normalise_background(image, reference_rgb))
    return out


def stained_boxes(image_rgb: np.ndarray, min_area_px: int = 60) -> list[CellBox]:
    """White-cell-coloured components of a field (``clean_mask`` without curators' masks),
    those cut by the border left out; the centre box of a quarter of the field if none."""
    mask = clean_mask(image_rgb, None, CleaningParams(min_area_px=min_area_px))
    h, w = mask.shape
    boxes = [b for b in find_cells(mask.astype(np.float32),
                                   CellFilter(threshold=0.5, min_area_px=min_area_px,
                                              max_area_px=10**9))
             if b.x > 0 and b.y > 0 and b.x + b.w < w and b.y + b.h < h]
    if not boxes:
        side = max(8, min(h, w) // 4)
        boxes = [CellBox((w - side) // 2, (h - side) // 2, side, side, side * side)]
    return boxes


def foreign_cell_crops(
    paths: list[Path], model_rbc_px: float, reference_rgb: tuple[float, float, float],
    crop_spec: CropSpec, size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the cells in foreign single-cell images (e.g. the normal-cell sample), cut at
    the models' scale. Returns crops (M, size, size, 3) uint8 and the image index of each."""
    crops, owners = [], []
    for index, scaled in enumerate(foreign_at_model_scale(paths, model_rbc_px, reference_rgb)):
        boxes = stained_boxes(scaled)
        crops.append(crop_cells(scaled, boxes, crop_spec, size))
        owners.extend([index] * len(boxes))
    if not crops:
        return np.empty((0, size, size, 3), np.uint8), np.empty((0,), np.int64)
    return np.concatenate(crops), np.asarray(owners, np.int64)


def background_crops(
    images: np.ndarray, masks: np.ndarray, crop_spec: CropSpec, size: int, seed: int,
    per_field: int = 1,
) -> np.ndarray:
    """Crops centred away from every white cell (red cells, plasma, debris), sized like the
    small components a segmenter may raise there: negatives for ``unidentified``."""
    rng = np.random.default_rng(seed)
    out = []
    kernel = np.ones((11, 11), np.uint8)
    for image, mask in zip(images, masks, strict=True):
        free = np.argwhere(cv2.dilate(mask.astype(np.uint8), kernel) == 0)
        if len(free) == 0:
            continue
        for y, x in free[rng.integers(0, len(free), per_field)]:
            side = int(rng.integers(10, 30))
            box = CellBox(int(x) - side // 2, int(y) - side // 2, side, side, side * side)
            out.append(crop_cells(image, [box], crop_spec, size))
    return np.concatenate(out) if out else np.empty((0, size, size, 3), np.uint8)


def foreign_mosaics(
    paths: list[Path], model_rbc_px: float, reference_rgb: tuple[float, float, float],
    side: int = 224,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreign single-cell images at the models' scale, four to a (side, side) mosaic, with
    white-cell masks from ``clean_mask``: their red cells, stained otherwise than the ALL
    fields', teach the segmenter and the classifier what is *not* a white cell.

    Returns images (M, side, side, 3) uint8 RGB and masks (M, side, side) uint8 {0, 1}.
    """
    half = side // 2
    tiles, masks = [], []
    for scaled in foreign_at_model_scale(paths, model_rbc_px, reference_rgb):
        tile = cv2.copyMakeBorder(scaled, half, half, half, half, cv2.BORDER_REFLECT_101)
        h, w = tile.shape[:2]
        tile = tile[(h - half) // 2 : (h - half) // 2 + half, (w - half) // 2 : (w - half) // 2
                    + half]
        tiles.append(tile)
        masks.append(clean_mask(tile, None, CleaningParams(min_area_px=60)))
    out_images, out_masks = [], []
    for i in range(0, len(tiles) - 3, 4):
        out_images.append(np.vstack([np.hstack(tiles[i : i + 2]), np.hstack(tiles[i + 2 : i + 4])]))
        out_masks.append(np.vstack([np.hstack(masks[i : i + 2]), np.hstack(masks[i + 2 : i + 4])]))
    return np.stack(out_images), np.stack(out_masks)

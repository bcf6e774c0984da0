"""Mask cleaning and block split (numpy/cv2 only, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.training.data import (
    FieldRecord,
    block_split,
    clean_mask,
    fill_holes,
    list_fields,
    slide_order,
    training_data_sha256,
)
from daemon.training.synthetic import make_dataset, synthetic_field


def test_clean_mask_keeps_cells_drops_rims_platelets_and_fills_holes() -> None:
    rng = np.random.default_rng(3)
    for folder in ("Benign", "Pro"):
        image, segmented, truth = synthetic_field(rng, folder)
        mask = clean_mask(image, segmented)
        inter = (mask.astype(bool) & truth.astype(bool)).sum()
        dice = 2 * inter / (mask.sum() + truth.sum())
        assert dice > 0.9
        # red-cell rings and the platelet are not foreground
        assert mask[truth == 0].mean() < 0.01


def test_clean_mask_recovers_cells_missing_from_curated_segmentation() -> None:
    image, _, truth = synthetic_field(np.random.default_rng(5), "Benign")
    mask = clean_mask(image, np.zeros_like(image))
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
    assert clean_mask(image, None).sum() == mask.sum()


def test_clean_mask_drops_curated_foreground_that_is_not_violet() -> None:
    image = np.full((64, 64, 3), (170, 180, 215), np.uint8)  # grey-blue red cells everywhere
    segmented = np.full_like(image, 200)  # curators kept everything
    assert clean_mask(image, segmented).sum() == 0


def test_fill_holes() -> None:
    ring = np.zeros((20, 20), np.uint8)
    ring[5:15, 5:15] = 1
    ring[8:12, 8:12] = 0
    assert fill_holes(ring)[8:12, 8:12].all()
    assert fill_holes(ring).sum() == 100


def _records(numbers_per_class: dict[int, list[int]]) -> list[FieldRecord]:
    return [
        FieldRecord(Path(f"/x/{label}/{n:03d}.jpg"), None, label, n)
        for label, numbers in numbers_per_class.items()
        for n in numbers
    ]


def test_block_split_keeps_blocks_and_neighbours_together() -> None:
    rng = np.random.default_rng(0)
    classes = {k: sorted(rng.choice(1000, 600, replace=False).tolist()) for k in range(4)}
    records = _records(classes)
    splits = block_split(records, block_size=40, seed=7)
    assert sum(len(v) for v in splits.values()) == len(records)
    where = {}
    for split, recs in splits.items():
        for r in recs:
            where[(r.label, r.number)] = split
    block_split_of: dict[tuple[int, int], set[str]] = {}
    for (label, number), split in where.items():
        block_split_of.setdefault((label, number // 40), set()).add(split)
    assert all(len(s) == 1 for s in block_split_of.values())
    # neighbours inside a block (e.g. 40..79) share a split
    for label, numbers in classes.items():
        for a, b in zip(numbers, numbers[1:], strict=False):
            if a // 40 == b // 40:
                assert where[(label, a)] == where[(label, b)]
    for label in classes:
        n = len(classes[label])
        for split in ("val", "test"):
            share = sum(r.label == label for r in splits[split]) / n
            assert 0.15 <= share <= 0.15 + 40 / n + 1e-9
    assert block_split(records, block_size=40, seed=7) == splits
    assert block_split(records, block_size=40, seed=8) != splits


def test_slide_order_mixes_classes_and_keeps_each_slide_together() -> None:
    rng = np.random.default_rng(1)
    classes = {k: sorted(rng.choice(400, 120, replace=False).tolist()) for k in range(4)}
    records = sorted(_records(classes), key=lambda r: (r.label, r.number))
    order = slide_order(records, block_size=40, seed=0)
    assert sorted(order) == list(range(len(records)))  # every field once
    stream = [records[i] for i in order]
    # each slide's fields come one after another, in file order
    runs: list[tuple[int, int]] = []
    for record in stream:
        slide = (record.label, record.number // 40)
        if not runs or runs[-1] != slide:
            runs.append(slide)
    assert len(runs) == len(set(runs))
    for a, b in zip(stream, stream[1:], strict=False):
        if (a.label, a.number // 40) == (b.label, b.number // 40):
            assert a.number < b.number
    # not sorted by class: the first quarter of the stream already holds several classes
    assert len({r.label for r in stream[: len(stream) // 4]}) >= 3
    assert slide_order(records, 40, seed=0) == order
    assert slide_order(records, 40, seed=1) != order


def test_list_fields_and_training_hash(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", per_class=3)
    records = list_fields(root)
    assert len(records) == 12
    assert [r.number for r in records[:3]] == [1, 2, 3]
    assert all(r.segmented is not None for r in records)
    digest = training_data_sha256(records)
    assert digest == training_data_sha256(list(reversed(records)))
    assert digest != training_data_sha256(records[:-1])

"""Training batches prepared by DataLoader workers: the same for any number of workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _dataset():
    from daemon.training.augment import CLASSIFIER_AUGMENT
    from daemon.training.train import EpochBatches

    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(40, dtype=np.int64) % 5
    crop_stain = torch.from_numpy(rng.uniform(80, 200, (40, 4)))
    targets = torch.from_numpy(rng.uniform(80, 200, (6, 4)))
    weights = torch.ones(6, dtype=torch.float64)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    dataset = EpochBatches(crops, labels, crop_stain, targets, weights, 0.5, CLASSIFIER_AUGMENT,
                           mean, std, seed=7)
    return dataset, crops, labels, mean, std


def _epochs(dataset, workers: int, orders: list[np.ndarray]) -> list[list[tuple]]:
    from daemon.training.train import batch_loader

    loader, sampler = batch_loader(dataset, batch=16, workers=workers)
    out = []
    for epoch, order in enumerate(orders):
        sampler.set_epoch(epoch, order)
        out.append(list(loader))
    return out


def test_batches_same_for_any_number_of_workers() -> None:
    from daemon.training.augment import normalize

    dataset, crops, labels, mean, std = _dataset()
    orders = [np.random.default_rng(e).permutation(len(crops)) for e in range(2)]
    one = _epochs(dataset, 1, orders)
    two = _epochs(dataset, 2, orders)
    for epoch, order in enumerate(orders):
        assert [len(y) for _, y in one[epoch]] == [16, 16, 8]
        for k, ((x1, y1), (x2, y2)) in enumerate(zip(one[epoch], two[epoch], strict=True)):
            idx = order[k * 16 : (k + 1) * 16]
            assert x1.dtype == torch.float32 and x1.shape == (len(idx), 3, 24, 24)
            assert y1.dtype == torch.int64
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert y1.tolist() == labels[idx].tolist()
            plain = normalize(torch.from_numpy(crops[idx]).permute(0, 3, 1, 2).float() / 255,
                              mean, std)
            assert (x1 - plain).abs().mean() > 0.05  # augmented
    # another epoch, the same crops: other augmentations
    assert not torch.equal(one[0][0][0], dataset[(1, 0, orders[0][:16])][0])


def test_train_classifier_with_workers(synthetic_data: Path, tmp_path: Path) -> None:
    from daemon.training.train import ClassifierConfig, train_classifier

    run = train_classifier(ClassifierConfig(
        data=str(synthetic_data), out=str(tmp_path / "cls"), epochs=1, batch=32, size=32,
        block_size=3, threads=1, device="cpu", limit_fields=6, workers=2, negatives=""))
    assert (run / "best.pt").is_file()
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["loss"])
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert state["meta"]["config"]["workers"] == 2

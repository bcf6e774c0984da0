"""Augmentation helpers: values, and tensors kept on the device they came from (torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_normalize_matches_manual_and_keeps_device() -> None:
    from daemon.training.augment import normalize

    images = torch.rand(2, 3, 4, 4)
    mean, std = (0.8, 0.7, 0.9), (0.2, 0.1, 0.05)
    out = normalize(images, mean, std)
    expected = (images - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[
        None, :, None, None]
    assert torch.allclose(out, expected)
    # The training loop normalises on the GPU: mean/std must follow the images' device. The
    # "meta" device stands in for CUDA here (a CPU constant beside it raises, as on CUDA).
    on_meta = normalize(torch.empty(2, 3, 4, 4, device="meta"), mean, std)
    assert on_meta.device.type == "meta"
    assert on_meta.shape == (2, 3, 4, 4)

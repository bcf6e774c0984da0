import numpy as np
import pytest

from daemon.domain.manifest import CellFilter, CropSpec, InputSpec
from daemon.imaging.pipeline import (
    CellBox,
    aggregate,
    crop_cells,
    find_cells,
    pad_to_multiple,
    to_tensor,
)


def disc_mask(shape: tuple[int, int], discs: list[tuple[int, int, int]]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.float32)
    for x, y, r in discs:
        mask[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = 0.9
    return mask


def test_find_cells_applies_area_bounds_and_orders_boxes() -> None:
    mask = disc_mask((100, 120), [(80, 20, 10), (20, 70, 12), (60, 60, 2)])
    cells = find_cells(mask, CellFilter(threshold=0.5, min_area_px=50, max_area_px=1000))
    assert len(cells) == 2  # the r=2 speck is below min area
    assert cells[0].y < cells[1].y
    big = cells[1]
    assert abs(big.x + big.w / 2 - 20.5) <= 1 and abs(big.area_px - np.pi * 144) < 40


def test_find_cells_threshold() -> None:
    mask = disc_mask((50, 50), [(25, 25, 10)])
    assert find_cells(mask, CellFilter(threshold=0.95)) == []


def test_crop_cells_shapes_and_centering() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:60, 40:60] = 255
    box = CellBox(40, 40, 20, 20, 400)
    crops = crop_cells(image, [box], CropSpec(margin=0.5, min_side_px=10), size=40)
    assert crops.shape == (1, 40, 40, 3)
    # side = 20 * 2 = 40 px around a centred 20 px square: the square fills the middle half.
    assert crops[0, 20, 20].tolist() == [255, 255, 255]
    assert crops[0, 2, 2].tolist() == [0, 0, 0]


def test_crop_at_frame_edge_is_padded_not_shifted() -> None:
    image = np.full((50, 50, 3), 7, np.uint8)
    crops = crop_cells(image, [CellBox(0, 0, 10, 10, 100)], CropSpec(min_side_px=30), size=16)
    assert crops.shape == (1, 16, 16, 3) and (crops == 7).all()


def test_crop_cells_empty() -> None:
    assert crop_cells(np.zeros((9, 9, 3), np.uint8), [], CropSpec(), 8).shape == (0, 8, 8, 3)


def test_to_tensor_normalizes_and_orders_channels() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    spec = InputSpec(name="x", size=(2, 3), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tensor = to_tensor(image, spec)
    assert tensor.shape == (1, 3, 2, 3)
    assert np.allclose(tensor[0, 0], 1.0) and np.allclose(tensor[0, 1], -1.0)
    bgr = to_tensor(image, spec.model_copy(update={"channel_order": "BGR"}))
    assert np.allclose(bgr[0, 2], 1.0)


def test_pad_to_multiple() -> None:
    assert pad_to_multiple(np.zeros((30, 17, 3), np.uint8), 16).shape == (32, 32, 3)
    assert pad_to_multiple(np.zeros((32, 16, 3), np.uint8), 16).shape == (32, 16, 3)


def test_aggregate_methods() -> None:
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.3, 0.05, 0.05]], np.float32)
    for method in ("mean", "log_mean"):
        frame = aggregate(probs, method)
        assert frame.shape == (4,) and abs(frame.sum() - 1) < 1e-6 and frame.argmax() == 0
    assert np.allclose(aggregate(probs, "mean"), probs.mean(0))
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 4), np.float32))


def test_views_are_the_crops_then_their_mirrors_and_merge_back() -> None:
    from daemon.imaging.pipeline import merge_views, with_views

    crops = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert with_views(crops, 1) is crops
    views = with_views(crops, 2)
    assert views.shape == (4, 4, 4, 3)
    np.testing.assert_array_equal(views[2], crops[0][:, ::-1])
    with pytest.raises(ValueError, match="views"):
        with_views(crops, 3)
    # geometric mean of (0.8, 0.2) and (0.2, 0.8) is even; of equal rows, the row itself
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.6, 0.4]], np.float32)
    np.testing.assert_allclose(merge_views(probs, 2), [[0.5, 0.5], [0.6, 0.4]], atol=1e-6)

"""The colour-only baseline: finds a class that colour gives away, and only then."""

from __future__ import annotations

import numpy as np

from daemon.training.confound import colour_baseline, knn_predict, stain_features

CLASSES = ["a", "b"]


def field(rng: np.random.Generator, cell_rgb: tuple[int, int, int]) -> np.ndarray:
    """A 64x64 white field with a few discs of ``cell_rgb`` (red-cell-like, no nucleus)."""
    image = np.full((64, 64, 3), 250, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for _ in range(6):
        cy, cx = rng.integers(8, 56, size=2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = cell_rgb
    return image


def fields(rng: np.random.Generator, labels: np.ndarray, colour_by_class: bool) -> np.ndarray:
    pinks = [(235, 185, 190), (200, 185, 215)]  # pink and lavender red cells
    return np.stack([field(rng, pinks[int(y) if colour_by_class else int(rng.integers(2))])
                     for y in labels])


def test_stain_features_read_the_stained_pixels_not_the_background() -> None:
    rng = np.random.default_rng(0)
    pink, lavender = field(rng, (235, 185, 190)), field(rng, (200, 185, 215))
    f_pink, f_lav = stain_features(pink), stain_features(lavender)
    assert f_pink.shape == (4,)
    assert f_pink[3] == f_lav[3] == 250  # same background
    assert f_pink[1] > f_lav[1] + 20  # I axis: pink is warmer


def test_colour_gives_the_class_away_only_when_the_data_ties_them() -> None:
    rng = np.random.default_rng(1)
    train_y, test_y = np.tile([0, 1], 30), np.tile([0, 1], 20)
    tied = colour_baseline(fields(rng, train_y, True), train_y, fields(rng, test_y, True),
                           test_y, CLASSES)
    assert tied["accuracy"] == 1.0
    assert tied["majority_class_rate"] == 0.5
    untied = colour_baseline(fields(rng, train_y, False), train_y, fields(rng, test_y, False),
                             test_y, CLASSES)
    assert untied["accuracy"] < 0.8  # colour is random here: no better than guessing


def test_knn_majority_vote() -> None:
    train_x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    train_y = np.array([0, 0, 0, 1, 1, 1])
    assert knn_predict(train_x, train_y, np.array([[0.05], [4.9]]), k=3).tolist() == [0, 1]

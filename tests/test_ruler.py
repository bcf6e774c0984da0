"""The red-cell ruler: pixel scale measured in the smear itself (daemon/imaging/ruler.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from daemon.imaging.ruler import NUCLEUS_VIOLET, measure_red_cells, nucleus_threshold, violet_score
from daemon.imaging.synthetic import red_cell_field, smear_field
from daemon.training.shifts import chroma

ENLARGEMENTS = (0.5, 1.0, 2.0, 4.0, 8.0)


def enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


@pytest.mark.parametrize("diameter", [10.0, 16.0, 24.0])
def test_separate_red_cells_measure_their_drawn_diameter(diameter):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ruler = measure_red_cells(red_cell_field(rng, diameter, pallor=False))
        assert ruler.reliable, ruler
        assert ruler.diameter_px == pytest.approx(diameter, rel=0.10), ruler
        # Central pallor reads larger (the blob's response peaks at a wider scale): an
        # absolute bias that cancels between frames and models measured the same way.
        with_pallor = measure_red_cells(red_cell_field(rng, diameter, pallor=True))
        assert diameter < with_pallor.diameter_px < 1.2 * diameter, with_pallor


@pytest.mark.parametrize("seed", range(4))
def test_known_enlargements_are_found_within_ten_percent(seed):
    """Touching and overlapping red cells with pallor, as in a smear: x0.5 to x8."""
    field, _ = smear_field(np.random.default_rng(seed), red_cells=40)
    base = measure_red_cells(field).diameter_px
    for factor in ENLARGEMENTS:
        ruler = measure_red_cells(enlarge(field, factor))
        assert ruler.reliable, (factor, ruler)
        assert ruler.diameter_px / base == pytest.approx(factor, rel=0.10), (factor, ruler)


def test_a_field_without_red_cells_gives_no_reliable_scale():
    blank = np.full((224, 224, 3), 235, np.uint8)
    assert measure_red_cells(blank).diameter_px is None
    noise = np.random.default_rng(0).normal(235, 2, (224, 224, 3)).clip(0, 255).astype(np.uint8)
    assert not measure_red_cells(noise).reliable


def test_um_per_pixel_follows_from_the_nominal_red_cell():
    ruler = measure_red_cells(red_cell_field(np.random.default_rng(1), 15.0))
    assert ruler.um_per_pixel() == pytest.approx(7.5 / ruler.diameter_px)
    assert ruler.um_per_pixel(8.0) == pytest.approx(8.0 / ruler.diameter_px)


def test_sensor_noise_does_not_answer_as_small_red_cells():
    field, _ = smear_field(np.random.default_rng(7), red_cells=40)
    base = measure_red_cells(field).diameter_px
    noise = np.random.default_rng(8).normal(0, 0.03 * 255, field.shape)
    noisy = np.clip(field + noise, 0, 255).astype(np.uint8)
    assert measure_red_cells(noisy).diameter_px == pytest.approx(base, rel=0.10)


def overexpose(image: np.ndarray, factor: float = 1.25) -> np.ndarray:
    """A brighter lamp: every channel times ``factor``, clipped at 255 (shifts.exposure)."""
    return np.clip(image.astype(np.float32) * factor, 0, 255).round().astype(np.uint8)


def test_an_overexposed_field_gives_no_reliable_scale():
    """Clipping at 255 cuts the pale rims off the red cells, so the ruler reads their cores
    (25 % over-exposure: 10 % of validation fields read within 10 %, median 0.77x): such a
    field must not set the scale, while the same field lit right still does."""
    field, _ = smear_field(np.random.default_rng(3), red_cells=40)
    ruler = measure_red_cells(field)
    assert ruler.reliable and not ruler.overexposed, ruler
    bright = measure_red_cells(overexpose(field))
    assert bright.overexposed and not bright.reliable, bright
    assert bright.clipped > ruler.clipped


def test_a_white_glass_rim_alone_is_not_overexposure():
    """A field whose glass is clipped white over less than a quarter of it still measures."""
    field, _ = smear_field(np.random.default_rng(4), red_cells=40)
    field[:40] = 255  # a bright strip: 18 % of the field
    ruler = measure_red_cells(field)
    assert not ruler.overexposed and ruler.reliable, ruler


@pytest.mark.parametrize("seed", range(3))
def test_a_stain_shift_does_not_change_the_reading(seed):
    """The synthetic red cells score 31 on the violet scale, just under the fixed nucleus
    level of 35, like the pre-B fields' red cells: 8 degrees of hue or 35 % more saturation
    pushed them over it and the ruler read fragments (0.58-0.79x). The field's own nucleus
    level follows the stain."""
    field, _ = smear_field(np.random.default_rng(seed), red_cells=40, white_cells=3)
    base = measure_red_cells(field).diameter_px
    for hue, saturation in [(-8, 1.0), (8, 1.0), (0, 1.35), (0, 0.65), (-6, 1.25)]:
        shifted = measure_red_cells(chroma(hue, saturation)(field))
        assert shifted.diameter_px == pytest.approx(base, rel=0.10), (hue, saturation, shifted)


def _background_darkness(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.clip(np.percentile(grey, 95) - grey, 0, None)


def test_the_nucleus_level_moves_with_the_stain_only_when_nuclei_are_there():
    def level(image: np.ndarray) -> float:
        return nucleus_threshold(violet_score(image), _background_darkness(image))

    with_cells, _ = smear_field(np.random.default_rng(5), red_cells=40, white_cells=3)
    # red cells score 31, nuclei 70-82: the split sits between them, above the red cells
    assert 31 < level(with_cells) < 70
    assert level(chroma(8, 1.0)(with_cells)) != level(with_cells)
    # red cells alone: no second mode, so the fixed level (a split would cut red cells in two)
    red_only, _ = smear_field(np.random.default_rng(5), red_cells=40, white_cells=0)
    assert level(red_only) == NUCLEUS_VIOLET

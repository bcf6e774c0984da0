"""Pixel scale: frames reach the models at their scale (configured, file or estimated from the
red cells), results come back in frame pixels and record the scale and its source."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from daemon.domain.manifest import RedCellScale
from daemon.domain.results import CellResult
from daemon.imaging.ruler import measure_red_cells
from daemon.imaging.scale import Rescaler
from daemon.imaging.synthetic import encode, smear_field
from daemon.store.results import ResultStore
from daemon.worker.worker import Worker


def enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def field(seed: int = 0) -> np.ndarray:
    return smear_field(np.random.default_rng(seed), red_cells=40)[0]


def test_configured_scale_wins_and_cells_map_back():
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=20.0))  # models: 7.5 / 20 = 0.375 µm/px
    image = field()
    info = rescaler.resolve(enlarge(image, 4), 0.75, "configured")
    assert (info.source, info.factor, info.reliable) == ("configured", 2.0, True)
    assert rescaler.resolve(image, 0.38, "file").factor == 1.0  # within 2 %: not resampled
    assert rescaler.resolve(image, 0.75, "file").source == "file"
    assert Rescaler.apply(np.zeros((100, 80, 3), np.uint8), 0.5).shape == (50, 40, 3)
    cell = CellResult(bbox=[10, 20, 30, 40], area_px=900, class_="a", probabilities={"a": 1.0})
    (back,) = Rescaler.to_frame([cell], 0.5)
    assert back.bbox == [20, 40, 60, 80] and back.area_px == 3600


@pytest.mark.parametrize("enlargement", [0.5, 2.0, 4.0, 8.0])
def test_unknown_scale_is_estimated_from_the_red_cells(enlargement):
    image = field(1)
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=measure_red_cells(image).diameter_px))
    info = rescaler.resolve(enlarge(image, enlargement), None, rig="r1")
    assert info.source == "estimated" and info.reliable
    assert info.factor == pytest.approx(1 / enlargement, rel=0.10)
    assert info.um_per_pixel == pytest.approx(7.5 / info.rbc_diameter_px, rel=1e-3)


def test_a_rig_keeps_a_running_estimate_and_an_odd_frame_goes_to_review():
    image = field(2)
    model = measure_red_cells(image).diameter_px
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=model))
    for seed in range(3, 8):  # five frames of rig A at 2x
        rescaler.resolve(enlarge(field(seed), 2.0), None, rig="A")
    odd = rescaler.resolve(enlarge(image, 4.0), None, rig="A")  # one frame at 4x
    assert odd.factor == pytest.approx(0.5, rel=0.12)  # the rig's median, not this frame's
    assert not odd.reliable  # the frame disagrees with its rig: review
    fresh = rescaler.resolve(enlarge(image, 4.0), None, rig="B")  # another rig: its own
    assert fresh.factor == pytest.approx(0.25, rel=0.10) and fresh.reliable
    blank = np.full((224, 224, 3), 235, np.uint8)
    assert rescaler.resolve(blank, None, rig="A").factor == odd.factor  # rig's estimate
    unknown = rescaler.resolve(blank, None, rig="C")
    assert (unknown.source, unknown.factor, unknown.reliable) == ("assumed", 1.0, False)


def test_bad_configured_values_fall_back_to_the_red_cells():
    image = field(3)
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=measure_red_cells(image).diameter_px))
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        assert rescaler.resolve(image, bad).source == "estimated"


def test_worker_finds_an_enlarged_frames_scale_with_no_um_per_pixel(
    make_settings, tiny_models, tmp_path
):
    image, _ = smear_field(np.random.default_rng(5), white_cells=2, red_cells=40)
    folder = tmp_path / "scaled-models"
    folder.mkdir()
    for model in tiny_models:
        for path in (model, model.with_suffix(".json")):
            shutil.copy(path, folder / path.name)
        manifest = json.loads((folder / model.with_suffix(".json").name).read_text())
        manifest["scale"] = {"rbc_diameter_px": measure_red_cells(image).diameter_px}
        (folder / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    settings = make_settings()
    settings.models.segmenter = folder / tiny_models[0].name
    settings.models.classifier = folder / tiny_models[1].name
    worker = Worker(settings, "t-scale")
    big = enlarge(image, 3.0)
    worker.queue.enqueue("native", "S1", "/in/native.png", "rig-1", encode(image, ".png"))
    worker.queue.enqueue("triple", "S1", "/in/triple.png", "rig-2", encode(big, ".png"),
                         metadata={"objective": "100x"})
    while worker.step(block_ms=100):
        pass
    store = ResultStore(worker.client)
    native, triple = store.get("native"), store.get("triple")
    assert native.status == triple.status == "done"
    assert triple.scale.source == "estimated" and triple.scale.factor == pytest.approx(1 / 3,
                                                                                        rel=0.1)
    assert triple.um_per_pixel is None and triple.metadata == {"objective": "100x"}
    assert len(native.cells) == len(triple.cells) == 2
    # The 3x frame was analysed at the models' scale; its boxes are in its own pixels.
    for a, b in zip(native.cells, triple.cells, strict=True):
        assert all(abs(3 * u - v) <= 8 for u, v in zip(a.bbox, b.bbox, strict=True)), (a, b)
        assert 6.0 < b.area_px / a.area_px < 12.0

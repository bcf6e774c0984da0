"""Pixel scale: frames are rescaled to the models' training scale, results in frame pixels."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np

from daemon.domain.results import CellResult
from daemon.imaging.scale import Rescaler
from daemon.imaging.synthetic import encode, smear_field
from daemon.store.results import ResultStore
from daemon.worker.worker import Worker


def test_rescaler_factors_and_mapping_back(caplog):
    rescaler = Rescaler(0.25)
    assert rescaler.factor(0.5) == 2.0 and rescaler.factor(0.125) == 0.5
    assert rescaler.factor(0.252) == 1.0  # within 2 %: not resampled
    image = np.zeros((100, 80, 3), np.uint8)
    assert Rescaler.apply(image, 0.5).shape == (50, 40, 3)
    assert Rescaler.apply(image, 2.0).shape == (200, 160, 3)
    cell = CellResult(bbox=[10, 20, 30, 40], area_px=900, class_="a", probabilities={"a": 1.0})
    (back,) = Rescaler.to_frame([cell], 0.5)
    assert back.bbox == [20, 40, 60, 80] and back.area_px == 3600
    with caplog.at_level("WARNING"):
        assert rescaler.factor(None) == 1.0 and rescaler.factor(None) == 1.0
        assert Rescaler(None).factor(0.5) == 1.0
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("no pixel scale" in m for m in warnings) == 1  # once, not per frame
    assert sum("no um_per_pixel" in m for m in warnings) == 1


def test_worker_analyses_at_model_scale_and_reports_frame_pixels(
    make_settings, tiny_models, tmp_path
):
    folder = tmp_path / "scaled-models"
    folder.mkdir()
    for model in tiny_models:
        for path in (model, model.with_suffix(".json")):
            shutil.copy(path, folder / path.name)
        manifest = json.loads((folder / model.with_suffix(".json").name).read_text())
        manifest["um_per_pixel"] = 0.25
        (folder / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    settings = make_settings()
    settings.models.segmenter = folder / tiny_models[0].name
    settings.models.classifier = folder / tiny_models[1].name
    worker = Worker(settings, "t-scale")
    image, _ = smear_field(np.random.default_rng(5), white_cells=2)
    big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    worker.queue.enqueue("native", "S1", "/in/native.png", "rig-1", encode(image, ".png"),
                         um_per_pixel=0.25)
    worker.queue.enqueue("double", "S1", "/in/double.png", "rig-1", encode(big, ".png"),
                         um_per_pixel=0.125, metadata={"objective": "100x"})
    while worker.step(block_ms=100):
        pass
    store = ResultStore(worker.client)
    native, double = store.get("native"), store.get("double")
    assert native.status == double.status == "done"
    assert double.um_per_pixel == 0.125 and double.metadata == {"objective": "100x"}
    assert len(native.cells) == len(double.cells) == 2
    # The 2x frame was analysed at the models' scale; its boxes are in its own pixels.
    for a, b in zip(native.cells, double.cells, strict=True):
        assert all(abs(2 * u - v) <= 3 for u, v in zip(a.bbox, b.bbox, strict=True)), (a, b)
        assert 3.0 < b.area_px / a.area_px < 5.0

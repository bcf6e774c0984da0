"""The shipped models (models/*.onnx) through ONNX Runtime: their manifests, and the
``unidentified`` outcome on things that are not one of the four lymphoid classes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.domain.classes import CELL_OUTCOMES, UNIDENTIFIED
from daemon.domain.manifest import load_manifest
from daemon.imaging.pipeline import CellBox, crop_cells
from daemon.imaging.synthetic import red_cell_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter

MODELS = Path(__file__).resolve().parent.parent / "models"
NORMAL_CELLS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc-normal"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(Segmenter(MODELS / "segmenter.onnx", "cpu", 1),
                    Classifier(MODELS / "classifier.onnx", "cpu", 1))


def test_manifests_state_scale_reference_calibration_and_review():
    seg, cls = (load_manifest(MODELS / f"{k}.onnx") for k in ("segmenter", "classifier"))
    assert [c.code for c in cls.classes] == list(CELL_OUTCOMES)
    assert seg.scale is not None and seg.scale == cls.scale
    assert seg.um_per_pixel == pytest.approx(7.5 / seg.scale.rbc_diameter_px, abs=1e-3)
    assert seg.acquisition is not None and min(seg.acquisition.background_rgb) > 200
    assert cls.temperature and 0.3 <= cls.temperature <= 5 and cls.review is not None
    assert cls.metrics["test_ece_after_calibration"] <= 0.03


def non_cells(analyzer: Analyzer) -> np.ndarray:
    """Crops of things that are not white cells, cut as the daemon cuts them: bare
    background, red cells alone, a red-cell clump, stain specks, a platelet-sized dot."""
    rng = np.random.default_rng(0)
    size = analyzer.classifier.crop_size
    reference = analyzer.acquisition.background_rgb
    d = analyzer.rescaler.model_scale.rbc_diameter_px
    field = red_cell_field(rng, d, count=40, pallor=True)
    field[...] = np.where(field == field[0, 0], np.asarray(reference, np.uint8), field)
    boxes = [CellBox(int(x), int(y), int(d), int(d), int(d * d))
             for x, y in rng.integers(10, 200, (12, 2))]
    crops = [crop_cells(field, boxes, analyzer.crop_spec, size)]
    blank = np.full((224, 224, 3), np.asarray(reference, np.uint8), np.uint8)
    specks = blank.copy()
    for x, y in rng.integers(20, 200, (30, 2)):
        cv2.circle(specks, (int(x), int(y)), 2, (120, 80, 150), -1)
    for image in (blank, specks):
        crops.append(crop_cells(image, boxes[:6], analyzer.crop_spec, size))
    return np.concatenate(crops)


def test_non_cells_are_unidentified(analyzer: Analyzer):
    crops = non_cells(analyzer)
    probs = analyzer.classifier.compute(crops)
    called = [analyzer.classes[i] for i in probs.argmax(axis=1)]
    share = called.count(UNIDENTIFIED) / len(called)
    assert share >= 0.9, called


@pytest.mark.skipif(not NORMAL_CELLS.is_dir(), reason="the normal-cell sample is not here")
def test_normal_cells_of_another_lab_are_unidentified(analyzer: Analyzer):
    """The held-out part of the normal-cell sample (never trained or tuned on), cut at the
    models' scale: granulocytes, monocytes, erythroblasts and the rest are not B-lineage
    precursors."""
    from daemon.training.data import foreign_cell_crops, pbc_split

    held_out = pbc_split(NORMAL_CELLS)["test"]
    paths = [p for p, kind in held_out if kind != "lymphocyte"]
    crops, _ = foreign_cell_crops(paths, analyzer.rescaler.model_scale.rbc_diameter_px,
                                  analyzer.acquisition.background_rgb, analyzer.crop_spec,
                                  analyzer.classifier.crop_size)
    probs = analyzer.classifier.compute(crops)
    share = float((probs.argmax(axis=1) == analyzer.classes.index(UNIDENTIFIED)).mean())
    assert share >= 0.8, share


def test_two_views_make_the_call_blind_to_a_mirror(analyzer: Analyzer) -> None:
    """With the crop and its mirror averaged, a cell and its mirror image get the same call;
    with one view the shipped classifier answers a mirrored crop a little differently."""
    rng = np.random.default_rng(3)
    crops = rng.integers(60, 250, size=(6, analyzer.classifier.crop_size,
                                        analyzer.classifier.crop_size, 3), dtype=np.uint8)
    crops = cv2.GaussianBlur(crops.reshape(-1, crops.shape[2], 3), (0, 0), 2).reshape(crops.shape)
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    saved = analyzer.views
    try:
        analyzer.views = 1
        assert not np.allclose(analyzer.classify(crops), analyzer.classify(mirrored), atol=1e-4)
        analyzer.views = 2
        both = analyzer.classify(crops)
        np.testing.assert_allclose(both, analyzer.classify(mirrored), atol=1e-5)
        np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)
    finally:
        analyzer.views = saved

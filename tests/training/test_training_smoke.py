"""Tiny end-to-end run on synthetic fields: train one epoch, export, parity, evaluate (torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_smoke_train_export_parity_evaluate(
    synthetic_data: Path, synthetic_normal_cells: Path, tmp_path: Path
) -> None:
    from daemon.domain.classes import CELL_OUTCOMES
    from daemon.domain.manifest import load_manifest
    from daemon.training.evaluate import evaluate
    from daemon.training.export import export_checkpoint, load_checkpoint, parity
    from daemon.training.nets import ClassifierExport
    from daemon.training.train import (
        ClassifierConfig,
        SegmenterConfig,
        train_classifier,
        train_segmenter,
    )

    runs, models = tmp_path / "runs", tmp_path / "models"
    common = dict(data=str(synthetic_data), epochs=1, block_size=3, threads=2, device="cpu")
    seg_run = train_segmenter(SegmenterConfig(out=str(runs / "seg"), batch=8, patch=96, **common))
    cls_run = train_classifier(ClassifierConfig(out=str(runs / "cls"), batch=32, size=48,
                                                negatives=str(synthetic_normal_cells),
                                                stain_mix=0.8, **common))
    history = [json.loads(line) for line in (cls_run / "log.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 1

    # resume: a second call with the same epochs does no more work
    train_segmenter(SegmenterConfig(out=str(runs / "seg"), batch=8, patch=96, **common))
    assert len((seg_run / "log.jsonl").read_text().splitlines()) == 1

    seg_report = export_checkpoint(seg_run / "best.pt", models)
    cls_report = export_checkpoint(cls_run / "best.pt", models, version="3.1.4")
    assert seg_report["fp32"]["mask"] < 1e-4
    assert seg_report["fp32_other_shape"]["mask"] < 1e-4
    assert cls_report["fp32"]["probabilities"] < 1e-4
    assert cls_report["fp16"]["probabilities"] < 1e-2

    # parity on real (synthetic) crops too, and the ONNX graph's I/O contract
    net, _ = load_checkpoint(cls_run / "best.pt")
    crops = np.random.default_rng(1).normal(0, 1, (3, 3, 48, 48)).astype(np.float32)
    assert parity(ClassifierExport(net), models / "classifier.onnx", crops)["probabilities"] < 1e-4
    session = ort.InferenceSession(str(models / "classifier_fp16.onnx"))
    probs, cam = session.run(None, {"crop": crops})
    # four classes and ``unidentified``
    assert probs.dtype == np.float32 and probs.shape == (3, 5) and cam.shape == (3, 5, 3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    seg_session = ort.InferenceSession(str(models / "segmenter.onnx"))
    mask = seg_session.run(None, {"image": np.zeros((2, 3, 64, 96), np.float32)})[0]
    assert mask.shape == (2, 1, 64, 96) and 0 <= mask.min() and mask.max() <= 1

    report = evaluate(
        str(synthetic_data), models, block_size=3, cache_dir=None, out_json=tmp_path / "eval.json",
        negatives=str(synthetic_normal_cells), val_shifts=True,
    )
    assert 0 <= report["classifier_test_field"]["accuracy"] <= 1
    # every shift of the suite was run through the daemon's path, with no µm/px given
    from daemon.training.shifts import SUITE

    assert set(report["shift_suite"]) == set(SUITE)
    # ... and on the validation blocks, for choosing between models without the test blocks
    assert set(report["val_shift_suite"]) == set(SUITE)
    assert report["val_shift_suite"]["none"]["n"] == report["n_fields"]["val"]
    assert report["shift_suite"]["magnify_x4"]["n"] == report["n_fields"]["test"]
    # the red-cell ruler found the 4x enlargement and the daemon shrank the fields back
    assert 0.2 < report["shift_suite"]["magnify_x4"]["median_factor"] < 0.3
    foreign = report["foreign_normal_test"]["one_rig"]
    assert set(foreign["per_class"]) == {"neutrophil", "platelet"}
    assert foreign["total"]["n"] == sum(r["n"] for r in foreign["per_class"].values())
    assert 0 <= report["calibration"]["test_ece_after"] <= 1
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    seg_manifest = load_manifest(models / "segmenter.onnx")
    cls_manifest = load_manifest(models / "classifier.onnx")
    assert seg_manifest.cells is not None and seg_manifest.input.size_multiple == 16
    assert [c.code for c in cls_manifest.classes] == list(CELL_OUTCOMES)
    assert cls_manifest.version == "3.1.4" and seg_manifest.version != "3.1.4"
    assert cls_manifest.training["config"]["stain_mix"] == 0.8
    assert cls_manifest.temperature and cls_manifest.review is not None
    assert seg_manifest.scale is not None and seg_manifest.scale == cls_manifest.scale
    assert seg_manifest.um_per_pixel == round(7.5 / seg_manifest.scale.rbc_diameter_px, 4)
    assert seg_manifest.acquisition is not None
    assert cls_manifest.aggregation in {"mean", "log_mean"}
    assert cls_manifest.metrics["test_field"]["n"] == report["n_fields"]["test"]
    assert len(cls_manifest.training_data_sha256 or "") == 64

    # The models' stain hue is reported and written into the segmenter manifest (calibration
    # is on by default), and the rig suite runs every row as one rig's stream.
    from daemon.training.evaluate import run_rig_suite

    assert 0 <= report["stain_reference_deg"] % 360 < 360
    assert seg_manifest.acquisition.stain_hue_deg == pytest.approx(report["stain_reference_deg"])
    into = tmp_path / "eval.json"
    rigs = run_rig_suite(str(synthetic_data), models, "val", into=into, block_size=3,
                         update_manifest=True)
    assert rigs["stain_reference_deg"] == pytest.approx(report["stain_reference_deg"], abs=0.01)
    assert set(rigs["rows"]) == set(SUITE)
    assert all(row["n"] == report["n_fields"]["val"] for row in rigs["rows"].values())
    assert all(0 <= row["turned_share"] <= 1 for row in rigs["rows"].values())
    stored = json.loads(into.read_text())
    assert set(stored["val_rig_suite"]) == set(SUITE) and "shift_suite" in stored  # merged
    assert load_manifest(models / "segmenter.onnx").acquisition.stain_hue_deg == pytest.approx(
        rigs["stain_reference_deg"])
    # The fields in file order (sorted by class) go under their own key, beside slide order's.
    by_file = run_rig_suite(str(synthetic_data), models, "val", stain=False, into=into,
                            block_size=3, order="file")
    stored = json.loads(into.read_text())
    assert by_file["order"] == "file" and rigs["order"] == "slides"
    assert set(stored["val_rig_suite_file_order_uncalibrated"]) == set(SUITE)
    assert set(stored["val_rig_suite"]) == set(SUITE)  # slide order's rows kept
    with pytest.raises(ValueError, match="order"):
        run_rig_suite(str(synthetic_data), models, "val", order="alphabetical")
    off = run_rig_suite(str(synthetic_data), models, "val", stain=False, block_size=3,
                        foreign=str(synthetic_normal_cells))
    total = off["foreign_normal_one_rig"]["total"]
    assert total["n"] == foreign["total"]["n"] and "rows" not in off


def test_fine_tune_adds_extra_crops_and_keeps_its_input_normalisation(
    synthetic_data: Path, tmp_path: Path
) -> None:
    import pytest
    import torch

    from daemon.training.train import ClassifierConfig, train_classifier

    common = dict(data=str(synthetic_data), epochs=1, block_size=3, threads=1, device="cpu",
                  batch=32, size=48)
    base = train_classifier(ClassifierConfig(out=str(tmp_path / "base"), **common))
    extra = tmp_path / "extra.npz"
    rng = np.random.default_rng(0)
    np.savez(extra, crops=rng.integers(0, 60, (10, 48, 48, 3), np.uint8),  # dark: other stats
             labels=np.full(10, 2))
    tuned = train_classifier(ClassifierConfig(out=str(tmp_path / "tuned"), init=str(base / "best.pt"),
                                              extra_crops=str(extra), **common))
    first = [json.loads(line) for line in (base / "log.jsonl").read_text().splitlines()][0]
    then = [json.loads(line) for line in (tuned / "log.jsonl").read_text().splitlines()][0]
    assert then["train_crops"] == first["train_crops"] + 10
    assert then["per_class"][2] == first["per_class"][2] + 10
    meta = torch.load(tuned / "best.pt", map_location="cpu", weights_only=False)["meta"]
    # ten dark crops would move the channel statistics: the fine-tune keeps its checkpoint's
    assert meta["mean"] == then["mean"] == first["mean"]
    assert meta["std"] == first["std"]
    np.savez(extra, crops=np.zeros((2, 64, 64, 3), np.uint8), labels=np.zeros(2))
    with pytest.raises(ValueError, match="not \\(48, 48, 3\\)"):
        train_classifier(ClassifierConfig(out=str(tmp_path / "wrong"), extra_crops=str(extra),
                                          **common))

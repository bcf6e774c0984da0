"""Tiny end-to-end run on synthetic fields: train one epoch, export, parity, evaluate (torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_smoke_train_export_parity_evaluate(synthetic_data: Path, tmp_path: Path) -> None:
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
    cls_run = train_classifier(ClassifierConfig(out=str(runs / "cls"), batch=32, size=48, **common))
    history = [json.loads(line) for line in (cls_run / "log.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 1

    # resume: a second call with the same epochs does no more work
    train_segmenter(SegmenterConfig(out=str(runs / "seg"), batch=8, patch=96, **common))
    assert len((seg_run / "log.jsonl").read_text().splitlines()) == 1

    seg_report = export_checkpoint(seg_run / "best.pt", models)
    cls_report = export_checkpoint(cls_run / "best.pt", models)
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
    assert probs.dtype == np.float32 and probs.shape == (3, 4) and cam.shape == (3, 4, 3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    seg_session = ort.InferenceSession(str(models / "segmenter.onnx"))
    mask = seg_session.run(None, {"image": np.zeros((2, 3, 64, 96), np.float32)})[0]
    assert mask.shape == (2, 1, 64, 96) and 0 <= mask.min() and mask.max() <= 1

    report = evaluate(
        str(synthetic_data), models, block_size=3, cache_dir=None, out_json=tmp_path / "eval.json"
    )
    assert 0 <= report["classifier_test_field"]["accuracy"] <= 1
    seg_manifest = load_manifest(models / "segmenter.onnx")
    cls_manifest = load_manifest(models / "classifier.onnx")
    assert seg_manifest.cells is not None and seg_manifest.input.size_multiple == 16
    assert [c.code for c in cls_manifest.classes] == ["benign", "early_pre_b", "pre_b", "pro_b"]
    assert cls_manifest.aggregation in {"mean", "log_mean"}
    assert cls_manifest.metrics["test_field"]["n"] == report["n_fields"]["test"]
    assert len(cls_manifest.training_data_sha256 or "") == 64

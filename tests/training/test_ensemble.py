"""Averaged classifiers: one ONNX graph, softmax of the members' mean logit, usable as is."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from daemon.domain.manifest import load_manifest
from daemon.imaging.synthetic import smear_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.ensemble import build_ensemble, resample_matrix
from tests.tiny_models import TINY_WEIGHT, build_classifier, build_segmenter


def _member(root: Path, name: str, weight: np.ndarray, size: int = 32) -> Path:
    folder = root / name
    folder.mkdir()
    build_classifier(folder, weight, size=size, version=f"0.0.{len(name)}-{name}")
    return folder


def _run(path: Path, crops: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"crop": crops})


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    return [_member(tmp_path, "a", TINY_WEIGHT),
            _member(tmp_path, "b", rng.normal(0, 3, (4, 3))),
            _member(tmp_path, "c", rng.normal(0, 3, (4, 3)))]


def test_ensemble_is_softmax_of_the_mean_logit(tmp_path: Path, members: list[Path]) -> None:
    out = tmp_path / "ensemble"
    build_ensemble(members, out, "9.9.9")
    crops = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    each = [_run(m / "classifier.onnx", crops) for m in members]
    probabilities, cam = _run(out / "classifier.onnx", crops)

    mean_cam = np.mean([c for _, c in each], axis=0)
    logits = mean_cam.mean(axis=(2, 3))
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cam, mean_cam, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    # The geometric mean of the members' probabilities, renormalised: the same thing.
    geometric = np.prod([p for p, _ in each], axis=0) ** (1 / len(each))
    np.testing.assert_allclose(probabilities, geometric / geometric.sum(1, keepdims=True),
                               atol=1e-5)
    # It differs from every member (the test would pass trivially for one member).
    assert all(np.abs(probabilities - p).max() > 1e-3 for p, _ in each)
    half, _ = _run(out / "classifier_fp16.onnx", crops)
    np.testing.assert_allclose(half, probabilities, atol=5e-3)


def test_ensemble_manifest_names_its_members(tmp_path: Path, members: list[Path]) -> None:
    out = tmp_path / "ensemble"
    build_ensemble(members, out, "9.9.9")
    manifest = load_manifest(out / "classifier.json")  # verifies both sha256s
    assert manifest.version == "9.9.9"
    assert [m["version"] for m in manifest.members] == [
        load_manifest(m / "classifier.json").version for m in members]
    assert manifest.temperature is None and manifest.metrics == {}
    assert "ensemble of 3 classifiers" in manifest.architecture
    assert manifest.training["members"] == 3  # not the first member's training


def test_members_must_share_the_input_contract(tmp_path: Path, members: list[Path]) -> None:
    other = _member(tmp_path, "wide", TINY_WEIGHT, size=48)
    with pytest.raises(ValueError, match="input differs.*--resample-smaller"):
        build_ensemble([members[0], other], tmp_path / "bad", "9.9.9")
    # Even with resampling, a crop is only ever shrunk: the largest member comes first.
    with pytest.raises(ValueError, match="larger than.*list the member with the largest"):
        build_ensemble([members[0], other], tmp_path / "bad", "9.9.9", resample=True)
    bgr = members[1] / "classifier.json"
    fields = json.loads(bgr.read_text())
    fields["input"]["channel_order"] = "BGR"
    bgr.write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="input differs"):  # resampling adapts size only
        build_ensemble([other, members[1]], tmp_path / "bad", "9.9.9", resample=True)
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble(members[:1], tmp_path / "one", "9.9.9")


def test_resample_matrix_is_what_opencv_does() -> None:
    image = np.random.default_rng(5).random((96, 96)).astype(np.float32)
    shrink = resample_matrix(96, 64)
    assert shrink.shape == (64, 96)
    np.testing.assert_allclose(shrink @ image @ shrink.T,
                               cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA),
                               atol=1e-5)
    np.testing.assert_allclose(shrink.sum(axis=1), 1.0, atol=1e-6)  # keeps a flat field flat


def test_a_smaller_member_is_fed_the_crop_shrunk(tmp_path: Path, members: list[Path]) -> None:
    """A 48-px member first sets the ensemble's input; the 32-px ones see the crop shrunk as
    OpenCV shrinks it. Their cams (48x48 and 32x32 here) are averaged on the 48 grid, and the
    logits stay the mean of every network's own logit."""
    rng = np.random.default_rng(6)
    wide = _member(tmp_path, "wide", rng.normal(0, 3, (4, 3)), size=48)
    pair = tmp_path / "pair"
    build_ensemble(members[:2], pair, "9.9.8")
    out = tmp_path / "mixed"
    build_ensemble([wide, pair], out, "9.9.9", resample=True)
    crops = rng.normal(size=(3, 3, 48, 48)).astype(np.float32)
    small = np.stack([[cv2.resize(channel, (32, 32), interpolation=cv2.INTER_AREA)
                       for channel in crop] for crop in crops])
    cams = [_run(wide / "classifier.onnx", crops)[1]] + [
        _run(m / "classifier.onnx", small)[1] for m in members[:2]]
    logits = np.mean([c.mean(axis=(2, 3)) for c in cams], axis=0)  # each network counts once
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probabilities, cam = _run(out / "classifier.onnx", crops)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert cam.shape == (3, 4, 48, 48)
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=1e-4)
    # The cam: the small members' cams enlarged as OpenCV enlarges, averaged with the wide
    # one's, then shifted to the mean logit (enlarging changes a cam's mean slightly).
    grown = [np.stack([[cv2.resize(k, (48, 48), interpolation=cv2.INTER_LINEAR) for k in c]
                       for c in small_cam]) for small_cam in cams[1:]]
    picture = np.mean([cams[0], *grown], axis=0)
    picture += (logits - picture.mean(axis=(2, 3)))[:, :, None, None]
    np.testing.assert_allclose(cam, picture, atol=1e-4)
    # Fed the 48-px crop cropped (not shrunk) to 32, the answer would differ.
    cut = [_run(m / "classifier.onnx", np.ascontiguousarray(crops[:, :, :32, :32]))[1]
           for m in members[:2]]
    wrong = np.mean([c.mean(axis=(2, 3)) for c in cams[:1] + cut], axis=0)
    assert np.abs(wrong - logits).max() > 1e-3
    half, _ = _run(out / "classifier_fp16.onnx", crops)
    np.testing.assert_allclose(half, probabilities, atol=5e-3)
    manifest = load_manifest(out / "classifier.json")
    assert manifest.input.size == (48, 48)
    assert [m["input_size"] for m in manifest.members] == [[48, 48], [32, 32], [32, 32]]
    assert "trained at 32x32, fed the crop area-resampled" in manifest.architecture
    # A mixed ensemble is not flattened into another one (its mean cam is resampled).
    with pytest.raises(ValueError, match="mixed-size ensemble cannot be a member"):
        build_ensemble([out, wide], tmp_path / "nested", "9.9.9", resample=True)
    # The daemon runs it as any classifier of its input size.
    segmenter = build_segmenter(out)
    analyzer = Analyzer(Segmenter(segmenter, "cpu"), Classifier(out / "classifier.onnx", "cpu"))
    image, truth = smear_field(np.random.default_rng(1), white_cells=3)
    (analysis,) = analyzer.analyze([image])
    assert len(analysis.cells) == len(truth)


def test_the_daemon_analyses_with_an_ensemble(tmp_path: Path, members: list[Path]) -> None:
    out = tmp_path / "ensemble"
    build_ensemble(members, out, "9.9.9")
    segmenter = build_segmenter(out)
    analyzer = Analyzer(Segmenter(segmenter, "cpu"), Classifier(out / "classifier.onnx", "cpu"))
    image, truth = smear_field(np.random.default_rng(1), white_cells=3)
    (analysis,) = analyzer.analyze([image])
    assert len(analysis.cells) == len(truth)
    described = analyzer.describe(analysis)
    assert described["frame_class"] in analyzer.classes
    assert analyzer.classifier.manifest.version == "9.9.9"


def test_an_ensemble_member_is_flattened_so_every_network_counts_once(
        tmp_path: Path, members: list[Path]) -> None:
    pair = tmp_path / "pair"
    build_ensemble(members[:2], pair, "9.9.8")
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    build_ensemble([pair, members[2]], nested, "9.9.9")
    build_ensemble(members, flat, "9.9.9")
    crops = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    nested_probs, nested_cam = _run(nested / "classifier.onnx", crops)
    flat_probs, flat_cam = _run(flat / "classifier.onnx", crops)
    np.testing.assert_allclose(nested_cam, flat_cam, atol=1e-5)
    np.testing.assert_allclose(nested_probs, flat_probs, atol=1e-6)
    # Averaging the pair's mean with the third would weigh the third twice: not the same.
    pair_cam = _run(pair / "classifier.onnx", crops)[1]
    third_cam = _run(members[2] / "classifier.onnx", crops)[1]
    assert np.abs((pair_cam + third_cam) / 2 - flat_cam).max() > 1e-3
    manifest = load_manifest(nested / "classifier.json")
    assert manifest.training["members"] == 3 and len(manifest.members) == 3
    assert "ensemble of 3 classifiers" in manifest.architecture


def test_a_member_with_its_own_normalisation_sees_its_own_input(
        tmp_path: Path, members: list[Path]) -> None:
    """Two seeds' crop statistics differ in the fourth decimal: the member's normalisation is
    folded into the graph instead of refusing it or feeding it the first member's."""
    other = members[1] / "classifier.json"
    fields = json.loads(other.read_text())
    fields["input"]["mean"], fields["input"]["std"] = [0.5, 0.25, -0.5], [2.0, 0.5, 1.0]
    other.write_text(json.dumps(fields))
    out = tmp_path / "ensemble"
    build_ensemble(members[:2], out, "9.9.9")
    crops = np.random.default_rng(4).normal(size=(3, 3, 32, 32)).astype(np.float32)
    # The first member's contract is the ensemble's: x = (p - 0) / 1; the second wants
    # (p - mean) / std of the same pixels p.
    mean = np.array([0.5, 0.25, -0.5], np.float32).reshape(1, 3, 1, 1)
    std = np.array([2.0, 0.5, 1.0], np.float32).reshape(1, 3, 1, 1)
    own = (crops - mean) / std
    cam_a = _run(members[0] / "classifier.onnx", crops)[1]
    cam_b = _run(members[1] / "classifier.onnx", own)[1]
    _, cam = _run(out / "classifier.onnx", crops)
    np.testing.assert_allclose(cam, (cam_a + cam_b) / 2, atol=1e-5)
    # Fed the ensemble's crop unadapted, the second member would give another answer.
    unadapted = _run(members[1] / "classifier.onnx", crops)[1]
    assert np.abs((cam_a + unadapted) / 2 - cam).max() > 1e-3
    assert load_manifest(out / "classifier.json").input.mean == (0.0, 0.0, 0.0)

"""Last-layer refit: the heads are found, read, refitted and written back; nothing else moves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from daemon.domain.classes import CELL_OUTCOMES  # noqa: E402
from daemon.domain.manifest import load_manifest, write_manifest_for  # noqa: E402
from daemon.training.ensemble import build_ensemble  # noqa: E402
from daemon.training.head import (  # noqa: E402
    RefitConfig,
    feature_reader,
    find_heads,
    fit_head,
    head_weights,
    refit_heads,
    with_heads,
)

SIZE = 32
K = len(CELL_OUTCOMES)


def _classifier(folder: Path, weight: np.ndarray, version: str = "0.0.1-head") -> Path:
    """A five-outcome classifier shaped like the exported ones: features (here a sigmoid of
    the crop, 3 channels) -> 1x1 conv head -> cam; logits = cam's spatial mean."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "classifier.onnx"
    inits = [numpy_helper.from_array(weight.astype(np.float32).reshape(K, 3, 1, 1), "w"),
             numpy_helper.from_array(np.linspace(-0.1, 0.1, K).astype(np.float32), "b")]
    nodes = [helper.make_node("Sigmoid", ["crop"], ["features"], name="features"),
             helper.make_node("Conv", ["features", "w", "b"], ["cam"], name="head"),
             helper.make_node("ReduceMean", ["cam"], ["logits"], axes=[2, 3], keepdims=0),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "head-test",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", K, SIZE, SIZE])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    write_manifest_for(
        path, name="head-test", kind="classifier", version=version,
        input={"name": "crop", "size": (SIZE, SIZE)}, outputs=["probabilities", "cam"],
        classes=[{"code": c, "display": c} for c in CELL_OUTCOMES],
        crop={"margin": 0.25, "min_side_px": 24}, aggregation="mean", temperature=0.7)
    return folder


def _weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (K, 3))


def _crops(n: int = 6) -> np.ndarray:
    return np.random.default_rng(5).normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def test_heads_of_one_network_and_of_each_ensemble_member(tmp_path: Path) -> None:
    single = onnx.load(str(_classifier(tmp_path / "a", _weights(0)) / "classifier.onnx"))
    heads = find_heads(single)
    assert [(h.weight, h.bias, h.features) for h in heads] == [("w", "b", "features")]
    w, b = head_weights(single, heads[0])
    np.testing.assert_array_equal(w, _weights(0).astype(np.float32))
    assert b.shape == (K,)

    _classifier(tmp_path / "b", _weights(1))
    build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "e", "0.1.0", fp16=False)
    both = find_heads(onnx.load(str(tmp_path / "e" / "classifier.onnx")))
    assert [h.features for h in both] == ["m0_features", "m1_features"]


def test_no_head_is_a_clear_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["crop"], ["probabilities"])], "no-head",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(ValueError, match="no classifier head"):
        find_heads(helper.make_model(graph))


def test_features_through_the_head_give_the_graphs_probabilities(tmp_path: Path) -> None:
    model = onnx.load(str(_classifier(tmp_path / "a", _weights(0)) / "classifier.onnx"))
    heads = find_heads(model)
    x = _crops()
    (features,) = feature_reader(model, heads)(x)
    assert features.shape == (len(x), 3)
    w, b = head_weights(model, heads[0])
    logits = features @ w.T + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    probs = ort.InferenceSession(model.SerializeToString()).run(["probabilities"], {"crop": x})[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_new_heads_change_the_call_and_nothing_else(tmp_path: Path) -> None:
    model = onnx.load(str(_classifier(tmp_path / "a", _weights(0)) / "classifier.onnx"))
    heads = find_heads(model)
    x = _crops()
    same = with_heads(model, heads, [head_weights(model, heads[0])])
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"crop": x})  # noqa: E731
    for a, b in zip(run(model), run(same), strict=True):
        np.testing.assert_array_equal(a, b)
    new_w = _weights(9).astype(np.float32)
    changed = with_heads(model, heads, [(new_w, np.zeros(K, np.float32))])
    assert not np.allclose(run(model)[0], run(changed)[0])
    w, b = head_weights(changed, find_heads(changed)[0])
    np.testing.assert_array_equal(w, new_w)
    np.testing.assert_array_equal(b, 0)
    assert [n.SerializeToString() for n in changed.graph.node] == [
        n.SerializeToString() for n in model.graph.node]


def test_fit_learns_a_separable_head_and_l2_holds_it_to_the_start() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (K, 8))
    labels = rng.integers(0, K, 2000)
    features = (centres[labels] + rng.normal(0, 1, (2000, 8))).astype(np.float32)
    w0, b0 = rng.normal(0, 0.1, (K, 8)).astype(np.float32), np.zeros(K, np.float32)
    before = float(((features @ w0.T + b0).argmax(1) == labels).mean())
    w, b, report = fit_head(features, labels, w0, b0, np.ones(K), l2=1e-4, max_iter=100)
    after = float(((features @ w.T + b).argmax(1) == labels).mean())
    assert after > 0.95 > before
    assert report["loss_after"] < report["loss_before"]
    held, _, _ = fit_head(features, labels, w0, b0, np.ones(K), l2=1e4, max_iter=100)
    assert np.linalg.norm(held - w0) < 0.05 * np.linalg.norm(w - w0)


def test_refit_writes_a_complete_classifier_that_names_its_origin(
    synthetic_data: Path, tmp_path: Path
) -> None:
    from daemon.inference.sessions import Classifier
    from daemon.training.train import ClassifierConfig

    source = _classifier(tmp_path / "models", _weights(0), version="1.0.0")
    out = tmp_path / "runs" / "refit"
    cfg = RefitConfig(views=2, stain_mix=0.5, max_iter=30)
    train_cfg = ClassifierConfig(data=str(synthetic_data), size=SIZE, min_side_px=24,
                                 block_size=3)
    report = refit_heads(source, out, "1.1.0", train_cfg, cfg, fp16=False)
    assert report["views"] == 2 and report["crops"] > 0
    (fit,) = report["heads"]
    assert fit["loss_after"] < fit["loss_before"] and fit["weight_change"] > 0
    manifest = load_manifest(out / "classifier.json")  # sha256 checked
    assert manifest.version == "1.1.0"
    assert manifest.training["from"] == {"version": "1.0.0",
                                         "sha256": load_manifest(source / "classifier.json").sha256}
    assert manifest.training["refit"]["stain_mix"] == 0.5
    assert "refitted" in manifest.architecture
    # calibration belongs to the old head: left for evaluate to fit again
    assert manifest.temperature is None
    old, new = (onnx.load(str(d / "classifier.onnx")) for d in (source, out))
    assert {i.name: i.SerializeToString() for i in old.graph.initializer if i.name != "w"
            and i.name != "b"} == {i.name: i.SerializeToString() for i in new.graph.initializer
                                   if i.name not in ("w", "b")}
    probs = Classifier(out / "classifier.onnx").compute(
        np.random.default_rng(2).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8))
    assert probs.shape == (4, K)
    assert json.loads((out / "classifier.json").read_text())["training"]["crops"] == report["crops"]


def test_a_refit_past_its_memory_bound_is_refused_before_the_work(
    synthetic_data: Path, tmp_path: Path
) -> None:
    from daemon.training.train import ClassifierConfig

    source = _classifier(tmp_path / "models", _weights(0))
    train_cfg = ClassifierConfig(data=str(synthetic_data), size=SIZE, min_side_px=24,
                                 block_size=3)
    with pytest.raises(ValueError, match="use fewer --views"):
        refit_heads(source, tmp_path / "runs" / "big", "1.1.0", train_cfg, RefitConfig(views=4),
                    max_feature_bytes=1024)
    assert not (tmp_path / "runs" / "big").exists()


def test_the_command_refits_and_leaves_a_models_folder_ready_for_evaluate(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli.main import main
    from tests.tiny_models import build_segmenter

    source = _classifier(tmp_path / "models", _weights(0), version="1.0.0")
    build_segmenter(source)
    out = tmp_path / "runs" / "cli"
    assert main(["refit-head", str(source), "--out", str(out), "--version", "1.2.0",
                 "--data", str(synthetic_data), "--negatives", "", "--block-size", "3",
                 "--views", "1", "--max-iter", "5", "--no-fp16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "1.2.0" and report["views"] == 1
    assert load_manifest(out / "classifier.json").version == "1.2.0"
    assert load_manifest(out / "segmenter.json").sha256 == load_manifest(
        source / "segmenter.json").sha256

"""recalibrate-bn: an exported MobileNetV2 is rebuilt exactly, its folded BatchNorms are
re-estimated as torch would re-estimate the unfolded ones, and only their weights change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from daemon.domain.classes import CELL_OUTCOMES  # noqa: E402
from daemon.domain.manifest import load_manifest, write_manifest_for  # noqa: E402
from daemon.training.batchnorm import (  # noqa: E402
    batches,
    ensemble_probabilities,
    fold_back,
    members,
    recalibrate,
)
from daemon.training.ensemble import build_ensemble  # noqa: E402
from daemon.training.export import export_onnx  # noqa: E402
from daemon.training.nets import MobileNetV2  # noqa: E402

SIZE = 32
K = len(CELL_OUTCOMES)


def _net(seed: int, data: torch.Tensor) -> MobileNetV2:
    """A small MobileNetV2 whose BatchNorms are far from identity: random gamma (0.5 to 1.5
    in size, a third negative) and beta, running statistics taken from ``data`` in one batch."""
    torch.manual_seed(seed)
    net = MobileNetV2(num_classes=K, width=0.35)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.weight.mul_(torch.sign(torch.rand_like(module.weight) - 0.33))
                module.bias.uniform_(-0.5, 0.5)
                module.momentum = None
        net.train()
        net(data)
    return net.eval()


def _exported(folder: Path, net: MobileNetV2, version: str = "1.0.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "classifier.onnx"
    export_onnx(net, "classifier", path, SIZE)
    write_manifest_for(
        path, name="bn-test", kind="classifier", version=version,
        input={"name": "crop", "size": (SIZE, SIZE)}, outputs=["probabilities", "cam"],
        classes=[{"code": c, "display": c} for c in CELL_OUTCOMES],
        crop={"margin": 0.25, "min_side_px": 24}, aggregation="mean", temperature=0.7,
        architecture="MobileNetV2 width 0.35")
    return folder


def _data(seed: int, n: int = 48, shift: float = 0.0, spread: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g) * spread + shift


def _run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"crop": x.numpy()})[0]


def test_members_rebuild_one_network_and_each_of_an_ensemble_exactly(tmp_path: Path) -> None:
    augmented = _data(0, spread=1.5)
    _exported(tmp_path / "a", _net(1, augmented))
    _exported(tmp_path / "b", _net(2, augmented))
    build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "e", "1.1.0", fp16=False)
    x = _data(9, n=8)
    for folder, prefixes in (("a", [""]), ("e", ["m0_", "m1_"])):
        model = onnx.load(str(tmp_path / folder / "classifier.onnx"))
        nets = members(model, K)
        assert [m.prefix for m in nets] == prefixes
        np.testing.assert_allclose(ensemble_probabilities(nets, x).numpy(), _run(model, x),
                                   atol=1e-5)


def test_a_graph_that_is_not_a_mobilenet_is_a_clear_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Conv2d(8, K, 1)).eval()
    path = tmp_path / "other.onnx"
    torch.onnx.export(other, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False,
                      input_names=["crop"], output_names=["probabilities"])
    with pytest.raises(ValueError, match="not a MobileNetV2"):
        members(onnx.load(str(path)), K)


def test_the_folded_graph_is_recalibrated_as_torch_recalibrates_the_unfolded_net(
    tmp_path: Path,
) -> None:
    """Statistics kept on one distribution (wide, shifted: the augmented crops); re-estimated
    on another (the plain crops). The folded graph, recalibrated, computes what the torch net
    with its BatchNorms re-estimated on the plain crops computes, up to what eval mode's
    unbiased variance and epsilon make of its stored statistics (their beta and |gamma| are
    read back through them)."""
    augmented, plain = _data(0, n=256, spread=1.6, shift=0.3), _data(1, n=256)
    net = _net(1, augmented)
    model = onnx.load(str(_exported(tmp_path / "a", net) / "classifier.onnx"))
    x = _data(5, n=8)
    before = _run(model, x)

    reference = _net(1, augmented)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    reference.train()
    with torch.no_grad():
        reference(plain)
    expected = torch.softmax(reference.eval()(x), dim=1).detach().numpy()

    (member,) = members(model, K)
    recalibrate(member, iter([augmented]), iter([plain]))
    fold_back(model, member)
    after = _run(model, x)
    gap = lambda a, b: float(np.abs(np.log(a) - np.log(b)).max())  # noqa: E731
    assert gap(before, expected) > 0.2  # the statistics matter here (0.43)
    assert gap(after, expected) < 0.03  # 0.010


def test_batches_cover_every_crop_once_in_a_seeded_order_with_the_augmented_share() -> None:
    crops = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    seen: list[int] = []

    def augment(idx: np.ndarray, _generator) -> torch.Tensor:
        seen.extend(idx.tolist())
        return torch.full((len(idx), 3, 4, 4), -1.0)  # plain crops normalize to >= 0 here

    every = list(batches(crops, (0, 0, 0), (1, 1, 1), batch=4, augment=augment))
    assert [len(b) for b in every] == [4, 4, 2] and sorted(seen) == list(range(10))
    seen.clear()
    half = list(batches(crops, (0, 0, 0), (1, 1, 1), batch=4, augment=augment, share=0.5))
    assert [int((b[:, 0, 0, 0] < 0).sum()) for b in half] == [2, 2, 1] and len(seen) == 5
    plain = list(batches(crops, (0, 0, 0), (1, 1, 1), batch=4, augment=augment, share=0.0))
    assert all(bool((b >= 0).all()) for b in plain) and len(seen) == 5
    first = next(iter(batches(crops, (0, 0, 0), (1, 1, 1), batch=4)))
    again = next(iter(batches(crops, (0, 0, 0), (1, 1, 1), batch=4)))
    assert first.shape == (4, 3, 4, 4) and torch.equal(first, again)


def test_the_command_writes_a_classifier_that_names_its_origin_and_changes_only_the_convs(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli.main import main
    from daemon.inference.sessions import Classifier
    from tests.tiny_models import build_segmenter

    source = _exported(tmp_path / "models", _net(1, _data(0, spread=1.5)))
    build_segmenter(source)
    out = tmp_path / "runs" / "bn"
    assert main(["recalibrate-bn", str(source), "--out", str(out), "--version", "1.0.1",
                 "--data", str(synthetic_data), "--negatives", "", "--block-size", "3",
                 "--augmented-share", "0.5", "--no-fp16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "1.0.1" and report["crops"] > 0
    assert report["augmented_share"] == 0.5
    assert [m["member"] for m in report["members"]] == ["net"]
    manifest = load_manifest(out / "classifier.json")  # sha256 checked
    assert manifest.training["from"] == {"version": "1.0.0",
                                         "sha256": load_manifest(source / "classifier.json").sha256}
    assert "BatchNorm statistics re-estimated" in manifest.architecture
    assert manifest.temperature is None  # fitted to the old statistics: evaluate fits it again
    assert load_manifest(out / "segmenter.json").sha256 == load_manifest(
        source / "segmenter.json").sha256
    old, new = (onnx.load(str(d / "classifier.onnx")) for d in (source, out))
    assert [n.SerializeToString() for n in old.graph.node] == [
        n.SerializeToString() for n in new.graph.node]
    convs = [n for n in old.graph.node if n.op_type == "Conv"]
    folded = {name for n in convs[:-1] for name in n.input[1:]}
    head = set(convs[-1].input[1:])
    changed = {i.name for i, j in zip(old.graph.initializer, new.graph.initializer, strict=True)
               if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))}
    assert changed and changed <= folded and not changed & head
    probs = Classifier(out / "classifier.onnx").compute(
        np.random.default_rng(2).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8))
    assert probs.shape == (4, K)


def test_a_folder_without_a_manifest_or_a_share_past_one_is_one_line(tmp_path: Path) -> None:
    from daemon.cli.main import main

    with pytest.raises(SystemExit, match="leukoscope recalibrate-bn: "):
        main(["recalibrate-bn", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"),
              "--version", "1"])
    source = _exported(tmp_path / "models", _net(1, _data(0)))
    with pytest.raises(SystemExit, match="--augmented-share 1.5: a share, 0 to 1"):
        main(["recalibrate-bn", str(source), "--out", str(tmp_path / "o"), "--version", "1",
              "--augmented-share", "1.5"])
    assert not (tmp_path / "o").exists()

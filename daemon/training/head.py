"""Refit the last layer of an exported classifier on new views of its training crops.

The data set's four classes were stained in their own batches, so colour alone names most
fields (``confound``). If a network's backbone still carries the morphology, a last layer fitted
where colour no longer predicts the class reads it instead (last-layer retraining, Kirichenko et
al. 2023). Only each network's head changes: the 1x1 convolution whose output is its ``cam``
(the cam's spatial mean is the network's logit, ``nets.ClassifierExport``); every other weight of
the ONNX graph stays byte for byte, so the daemon and its costs are unchanged.

    features: each head's input (N, C, h, w), mean over h, w -> (N, C) float32
    head:     logits (N, K) = features @ W.T + b, W (K, C), b (K,)

onnx, onnxruntime and torch (training only): the fit is full-batch L-BFGS in torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from daemon.domain.manifest import load_manifest
from daemon.training.augment import (
    classifier_augment,
    normalize,
    random_colour,
    random_degrade,
    random_geometry,
    stain_mix,
)
from daemon.training.derived import write_derived_classifier

if TYPE_CHECKING:
    from daemon.training.train import ClassifierConfig

#: The features of every view are held in memory for the full-batch fit: 8 views of 17,446
#: crops x 1,280 features x 2 networks is 1.4 GB. Past this, refuse with the way out.
MAX_FEATURE_BYTES = 8 << 30


@dataclass(frozen=True)
class Head:
    """One network's last layer in a graph: the Conv node, its weight and bias initializers
    and the feature tensor it reads."""

    node: str
    weight: str
    bias: str
    features: str


@dataclass
class RefitConfig:
    """How ``refit_heads`` draws its views and fits (see the module docstring)."""

    views: int = 8  # augmented views of each training crop
    stain_mix: float = 0.0  # share of views given a random training field's stain
    augment: dict = field(default_factory=dict)  # AugmentParams overrides of the training's
    l2: float = 1e-3  # (l2 / 2) * ||W - W0||^2, W0 the shipped head
    max_iter: int = 200  # L-BFGS iterations
    label_smoothing: float = 0.1  # the training's
    seed: int = 0  # the views' seed
    batch: int = 512  # crops per inference batch


def find_heads(model: onnx.ModelProto) -> list[Head]:
    """The heads of ``model``: 1x1 Conv nodes whose output is ``cam`` or ``<prefix>_cam`` (one
    per network of an ensemble). Raises ValueError when there is none."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    heads = []
    for node in model.graph.node:
        out = node.output[0] if node.output else ""
        if node.op_type != "Conv" or not (out == "cam" or out.endswith("_cam")):
            continue
        if len(node.input) != 3 or len(shapes.get(node.input[1], ())) != 4:
            raise ValueError(f"head {node.name or out}: expected a Conv with weight and bias")
        if shapes[node.input[1]][2:] != (1, 1):
            raise ValueError(f"head {node.name or out}: not a 1x1 convolution")
        heads.append(Head(node.name or out, node.input[1], node.input[2], node.input[0]))
    if not heads:
        raise ValueError("no classifier head (a Conv writing 'cam') in the graph")
    return heads


def head_weights(model: onnx.ModelProto, head: Head) -> tuple[np.ndarray, np.ndarray]:
    """(W (K, C), b (K,)) float32 of ``head`` in ``model``."""
    inits = {init.name: init for init in model.graph.initializer}
    weight = numpy_helper.to_array(inits[head.weight])
    return weight.reshape(weight.shape[0], -1).astype(np.float32), numpy_helper.to_array(
        inits[head.bias]).astype(np.float32)


def with_heads(model: onnx.ModelProto, heads: list[Head],
               weights: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """A copy of ``model`` with each head's weight and bias replaced (shapes kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new = {}
    for head, (weight, bias) in zip(heads, weights, strict=True):
        new[head.weight], new[head.bias] = weight, bias
    for init in out.graph.initializer:
        if init.name in new:
            shape = tuple(init.dims)
            init.CopyFrom(numpy_helper.from_array(
                np.asarray(new[init.name], np.float32).reshape(shape), init.name))
    return out


def feature_reader(model: onnx.ModelProto, heads: list[Head], threads: int = 0):
    """A function (N, 3, S, S) float32 normalised crops -> [(N, C) float32 per head]: the
    heads' input features, averaged over their spatial map, read by ONNX Runtime."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for head in heads:
        probe.graph.output.append(
            helper.make_tensor_value_info(head.features, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [head.features for head in heads]

    def read(x: np.ndarray) -> list[np.ndarray]:
        maps = session.run(names, {input_name: x})
        return [m.mean(axis=(2, 3)).astype(np.float32) for m in maps]

    return read


def augmented_views(crops: np.ndarray, crop_stain: torch.Tensor, stain_targets: torch.Tensor,
                    stain_weights: torch.Tensor, cfg: RefitConfig, mean, std
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (index (B,), normalised views (B, 3, S, S) float32) over ``cfg.views`` passes of
    (M, S, S, 3) uint8 ``crops``, augmented as in training (``train.augment_batch``) with
    ``cfg.stain_mix`` and ``cfg.augment``; pass v draws from a generator seeded (seed, v)."""
    params = classifier_augment(cfg.augment)
    for view in range(cfg.views):
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + view)
        for start in range(0, len(crops), cfg.batch):
            idx = np.arange(start, min(start + cfg.batch, len(crops)))
            x = torch.from_numpy(crops[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            x, _ = random_geometry(x, None, params, generator)
            x = stain_mix(x, crop_stain[idx], stain_targets, stain_weights, cfg.stain_mix,
                          generator)
            x = random_degrade(random_colour(x, params, generator), params, generator)
            yield idx, normalize(x, mean, std).numpy()


def fit_head(features: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: np.ndarray,
             class_weight: np.ndarray, l2: float, max_iter: int = 200,
             label_smoothing: float = 0.1) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit one head: features (N, C), labels (N,) int in [0, K), start W0 (K, C), b0 (K,).

    Minimises class-weighted cross-entropy (``class_weight`` (K,), label smoothing) +
    (l2 / 2) ||W - W0||^2 by full-batch L-BFGS. Returns (W, b, {loss before, loss after})."""
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    weight = torch.tensor(class_weight, dtype=torch.float32)
    anchor = torch.from_numpy(w0.astype(np.float32))
    w = anchor.clone().requires_grad_(True)
    b = torch.from_numpy(b0.astype(np.float32)).clone().requires_grad_(True)

    def objective() -> torch.Tensor:
        loss = F.cross_entropy(x @ w.T + b, y, weight=weight, label_smoothing=label_smoothing)
        return loss + 0.5 * l2 * ((w - anchor) ** 2).sum()

    with torch.no_grad():
        before = float(objective())
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        after = float(objective())
    return (w.detach().numpy().copy(), b.detach().numpy().copy(),
            {"loss_before": round(before, 5), "loss_after": round(after, 5)})


def refit_heads(models_dir: Path, out: Path, version: str, train_cfg: ClassifierConfig,
                cfg: RefitConfig, fp16: bool = True, threads: int = 0,
                max_feature_bytes: int = MAX_FEATURE_BYTES) -> dict:
    """Refit every head of ``models_dir/classifier.onnx`` on views of the training crops that
    ``train_cfg`` (a ``train.ClassifierConfig``) describes, and write the new graph, its fp16
    copy and manifest to ``out``. Calibration and review thresholds are left for
    ``leukoscope evaluate``, as after ``export`` or ``ensemble``."""
    from daemon.training.data import load_splits
    from daemon.training.train import classifier_crops

    source = load_manifest(Path(models_dir) / "classifier.json")
    model = onnx.load(str(Path(models_dir) / source.file))
    heads = find_heads(model)
    splits = load_splits(train_cfg.data, train_cfg.block_size, train_cfg.seed, 0,
                         Path(out).parent / "cache")
    crops = classifier_crops(train_cfg, splits["train"], splits["val"])
    read = feature_reader(model, heads, threads)
    n = len(crops.crops)
    widths = [head_weights(model, head)[0].shape[1] for head in heads]
    needed = cfg.views * n * sum(widths) * 4
    if needed > max_feature_bytes:
        raise ValueError(f"{cfg.views} views of {n} crops need {needed / 2**30:.1f} GiB of "
                         f"features, over the {max_feature_bytes / 2**30:.1f} GiB bound: "
                         "use fewer --views")
    features = [np.empty((cfg.views * n, width), np.float32) for width in widths]
    row, started = 0, time.monotonic()
    for idx, x in augmented_views(crops.crops, crops.crop_stain, crops.stain_targets,
                                  crops.stain_weights, cfg, source.input.mean, source.input.std):
        for store, part in zip(features, read(x), strict=True):
            store[row : row + len(idx)] = part
        row += len(idx)
        if row % n == 0:  # a view done: minutes of work, so say where it stands
            print(f"refit-head: view {row // n}/{cfg.views} of {n} crops read "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    labels = np.tile(crops.labels, cfg.views)
    fitted, fits = [], []
    for head, store in zip(heads, features, strict=True):
        w0, b0 = head_weights(model, head)
        w, b, report = fit_head(store, labels, w0, b0, crops.class_weight.numpy(), cfg.l2,
                                cfg.max_iter, cfg.label_smoothing)
        report.update(head=head.node, weight_change=round(
            float(np.linalg.norm(w - w0) / np.linalg.norm(w0)), 4))
        print(f"refit-head: {head.node} fitted, loss {report['loss_before']} -> "
              f"{report['loss_after']}", file=sys.stderr, flush=True)
        fitted.append((w, b))
        fits.append(report)
    write_derived_classifier(
        with_heads(model, heads, fitted), source, out, version, fp16,
        architecture=f"{getattr(source, 'architecture', None) or 'classifier'}; last layer of "
        f"each network refitted by leukoscope refit-head ({len(heads)} heads)",
        training={"method": "last layer refitted (leukoscope refit-head); backbone of "
                  f"{source.version} ({source.sha256[:12]}) unchanged",
                  "from": {"version": source.version, "sha256": source.sha256},
                  "refit": asdict(cfg), "crops": n, "heads": fits},
    )
    return {"out": str(out), "version": version, "crops": n, "views": cfg.views,
            "heads": fits}

"""Precise BatchNorm statistics for an exported classifier (``leukoscope recalibrate-bn``).

A network trained on heavily augmented crops ends with BatchNorm running statistics that follow
its last augmented batches, while the daemon feeds it un-augmented crops. Re-estimating them
over the plain training crops (one pass, cumulative average) fits the crops it will see
(``deploy/gpu/decision-2026-11-27i.txt``).

An exported graph has each BatchNorm folded into the convolution before it, so BatchNorm's own
``beta`` and ``|gamma|`` are gone. They are recovered as what that convolution's output looks
like over augmented training crops (mean and spread per channel: the distribution the stored
statistics were kept on), then the statistics of its input are re-estimated on plain crops, and
everything is folded back into the convolution's weight and bias. Only those initializers
change; the graph, its outputs and every other weight stay as they were.

    members    ONNX classifier                      -> one torch MobileNetV2 per member, exact
    recalibrate  networks + augmented / plain crops  -> new running statistics
    fold_back  networks                             -> the graph's Conv initializers
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from daemon.training.nets import MobileNetV2

#: Widths tried when rebuilding a member from its graph (every conv's shape must match).
WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.25, 1.4)


@dataclass
class Member:
    """One network of the graph, rebuilt in torch: its folded Conv nodes in graph order, each
    paired with the torch Conv2d and the BatchNorm2d after it (the head is ``net.classifier``)."""

    prefix: str
    net: MobileNetV2
    nodes: list[onnx.NodeProto]
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]]


def _conv_pairs(net: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each Conv2d in registration order with the BatchNorm2d that follows it, if any."""
    pairs: list[list] = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            pairs.append([module, None])
        elif isinstance(module, nn.BatchNorm2d) and pairs and pairs[-1][1] is None:
            pairs[-1][1] = module
    return [(conv, bn) for conv, bn in pairs]


def _member_prefixes(graph: onnx.GraphProto) -> list[str]:
    """``m0_``, ``m1_``, ... for an ensemble (``leukoscope ensemble``), ``""`` for one net."""
    prefixes = sorted({n.name.split("/")[0] for n in graph.node
                       if n.op_type == "Conv" and n.name.split("/")[0].startswith("m")
                       and n.name.split("/")[0].endswith("_")})
    return prefixes or [""]


def members(model: onnx.ModelProto, n_out: int) -> list[Member]:
    """Rebuild every MobileNetV2 of ``model`` in torch with its folded weights: each BatchNorm
    set to add the folded bias and nothing else, so the net computes what the graph does.

    Raises ValueError when a member's convolutions do not match a MobileNetV2 of any width."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for prefix in _member_prefixes(model.graph):
        nodes = [n for n in model.graph.node if n.op_type == "Conv"
                 and (n.name.startswith(prefix) if prefix else True)]
        # the last Conv is the head: the linear classifier applied per position (the cam)
        nodes, head = nodes[:-1], nodes[-1]
        shapes = [tuple(weights[n.input[1]].shape) for n in nodes]
        for width in WIDTHS:
            net = MobileNetV2(num_classes=n_out, width=width)
            pairs = _conv_pairs(net)
            if ([tuple(c.weight.shape) for c, _ in pairs] == shapes
                    and weights[head.input[1]].shape[:2] == tuple(net.classifier.weight.shape)):
                break
        else:
            raise ValueError(f"the graph's convolutions{' of ' + prefix if prefix else ''} are "
                             "not a MobileNetV2 this project builds")
        with torch.no_grad():
            net.classifier.weight.copy_(torch.tensor(weights[head.input[1]][:, :, 0, 0]))
            net.classifier.bias.copy_(torch.tensor(weights[head.input[2]]))
            for node, (conv, bn) in zip(nodes, pairs, strict=True):
                conv.weight.copy_(torch.tensor(weights[node.input[1]]))
                bias = torch.tensor(weights[node.input[2]])
                if bn is None:
                    raise ValueError(f"{node.name}: a convolution without BatchNorm")
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)  # (z - 0) / sqrt(1 - eps + eps) = z
        net.eval()
        out.append(Member(prefix, net, nodes, pairs))
    return out


def ensemble_probabilities(nets: list[Member], x: torch.Tensor) -> torch.Tensor:
    """(N, C) softmax of the members' mean logit, as the exported ensemble computes it."""
    with torch.no_grad():
        return torch.softmax(torch.stack([m.net(x) for m in nets]).mean(0), dim=1)


def _output_moments(member: Member, batches: Iterator[torch.Tensor]
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per channel mean and standard deviation of every folded convolution's output (its
    BatchNorm's output) over ``batches``, the net in eval mode (its stored statistics)."""
    sums: dict[int, list] = {}
    hooks = []
    for i, (_, bn) in enumerate(member.pairs):

        def hook(_module, _inputs, output, i=i):
            var, mean = torch.var_mean(output.detach(), dim=(0, 2, 3), correction=0)
            n = output.numel() // output.shape[1]
            s = sums.setdefault(i, [0, 0.0, 0.0])  # count, sum of y, sum of y^2 per channel
            s[0] += n
            s[1] = s[1] + mean.double() * n
            s[2] = s[2] + (var.double() + mean.double() ** 2) * n

        hooks.append(bn.register_forward_hook(hook))
    member.net.eval()
    with torch.no_grad():
        for x in batches:
            member.net(x)
    for h in hooks:
        h.remove()
    moments = []
    for n, s1, s2 in (sums[i] for i in range(len(member.pairs))):
        mean = s1 / n
        std = torch.sqrt(torch.clamp(s2 / n - mean * mean, min=1e-12))
        moments.append((mean.float(), std.float()))
    return moments


def recalibrate(member: Member, augmented: Iterator[torch.Tensor],
                plain: Iterator[torch.Tensor]) -> None:
    """Give ``member``'s BatchNorms the ``beta`` and ``|gamma|`` its folded outputs show on
    ``augmented`` batches, then re-estimate their running statistics on ``plain`` batches (one
    pass, cumulative average, train mode as ``torch.optim.swa_utils.update_bn`` does)."""
    moments = _output_moments(member, augmented)
    with torch.no_grad():
        for (_, bn), (mean, std) in zip(member.pairs, moments, strict=True):
            bn.bias.copy_(mean)
            bn.weight.copy_(std)
            bn.reset_running_stats()
            bn.momentum = None
    member.net.train()
    with torch.no_grad():
        for x in plain:
            member.net(x)
    member.net.eval()


def fold_back(model: onnx.ModelProto, member: Member) -> None:
    """Write ``member``'s convolutions with their BatchNorms folded in over the graph's Conv
    initializers (weight, and bias, which a folded Conv always has)."""
    index = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for node, (conv, bn) in zip(member.nodes, member.pairs, strict=True):
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
        for name, value in ((node.input[1], weight), (node.input[2], bias)):
            old = model.graph.initializer[index[name]]
            array = value.numpy().astype(numpy_helper.to_array(old).dtype)
            model.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(array, name))


def batches(crops: np.ndarray, mean, std, batch: int = 256, augment=None, share: float = 1.0,
            seed: int = 0) -> Iterator[torch.Tensor]:
    """(M, S, S, 3) uint8 crops -> normalized (B, 3, S, S) batches in a seeded order. With
    ``augment(idx, generator)`` (the training's augmentation), a ``share`` of each batch's
    crops go through it and the rest stay plain, so one batch holds both (its variance then
    includes the shift between them)."""
    from daemon.training.augment import normalize

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(crops), generator=generator).numpy()
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        n_augmented = int(round(share * len(idx))) if augment is not None else 0
        parts = [augment(idx[:n_augmented], generator)] if n_augmented else []
        if n_augmented < len(idx):
            plain = np.ascontiguousarray(crops[idx[n_augmented:]])
            x = torch.from_numpy(plain).permute(0, 3, 1, 2).float()
            parts.append(normalize(x / 255.0, mean, std))
        yield torch.cat(parts) if len(parts) > 1 else parts[0]


def recalibrate_graph(model: onnx.ModelProto, n_out: int, crops: np.ndarray, mean, std,
                      augment, augmented_share: float = 0.0, log=sys.stderr) -> list[dict]:
    """Every member of ``model`` recalibrated (see the module's docstring) and folded back in
    place. ``augment(idx, generator)``: a normalized batch of augmented crops ``idx``, as the
    training made them; ``augmented_share``: the share of them in the batches the new
    statistics are taken on (0: plain crops only). Returns a line per member."""
    report = []
    for member in members(model, n_out):
        started = time.monotonic()
        recalibrate(member, batches(crops, mean, std, augment=augment),
                    batches(crops, mean, std, augment=augment, share=augmented_share, seed=1))
        fold_back(model, member)
        report.append({"member": member.prefix or "net", "batchnorms": len(member.pairs),
                       "seconds": round(time.monotonic() - started, 1)})
        print(f"recalibrate-bn: {member.prefix or 'network'} done in "
              f"{time.monotonic() - started:.0f} s", file=log, flush=True)
    return report


def recalibrate_models(models_dir: Path, out: Path, version: str, train_cfg, fp16: bool = True,
                       augmented_share: float = 0.0) -> dict:
    """``models_dir/classifier.onnx`` with every member's BatchNorm statistics re-estimated on
    the plain training crops that ``train_cfg`` (a ``train.ClassifierConfig``) describes,
    written to ``out`` (graph, fp16 copy, manifest naming its origin). Calibration and review
    thresholds are left for ``leukoscope evaluate``, as after ``export``."""
    from daemon.domain.manifest import load_manifest
    from daemon.training.augment import classifier_augment
    from daemon.training.data import load_splits
    from daemon.training.derived import write_derived_classifier
    from daemon.training.train import augment_batch, classifier_crops

    source = load_manifest(Path(models_dir) / "classifier.json")
    model = onnx.load(str(Path(models_dir) / source.file))
    members(model, len(source.classes))  # a graph this cannot rebuild fails before the crops
    splits = load_splits(train_cfg.data, train_cfg.block_size, train_cfg.seed, 0,
                         Path(out).parent / "cache")
    crops = classifier_crops(train_cfg, splits["train"], splits["val"])
    mean, std = source.input.mean, source.input.std
    augment = classifier_augment(train_cfg.augment)
    stain = (crops.crop_stain, crops.stain_targets, crops.stain_weights, train_cfg.stain_mix)

    def augmented(idx: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return augment_batch(crops.crops, idx, *stain, augment, mean, std, generator)

    report = recalibrate_graph(model, len(source.classes), crops.crops, mean, std, augmented,
                               augmented_share)
    taken_on = ("the plain training crops" if not augmented_share else
                f"training crops, {augmented_share:.0%} of each batch augmented")
    write_derived_classifier(
        model, source, Path(out), version, fp16,
        architecture=f"{getattr(source, 'architecture', None) or 'classifier'}; BatchNorm "
        f"statistics re-estimated on {taken_on} by leukoscope recalibrate-bn",
        training={"method": f"BatchNorm running statistics re-estimated on {taken_on} "
                  f"(leukoscope recalibrate-bn); weights of {source.version} "
                  f"({source.sha256[:12]}) otherwise unchanged",
                  "from": {"version": source.version, "sha256": source.sha256},
                  "crops": len(crops.crops), "augmented_share": augmented_share,
                  "members": report},
    )
    return {"out": str(out), "version": version, "crops": len(crops.crops),
            "augmented_share": augmented_share,
            "members": report}

"""Average exported classifiers into one ONNX graph (onnx only, no torch).

Two seeds of one recipe differed by 2.6 points of test field accuracy here (model card, G and
G2): a single run's number is a draw. Averaging members lowers that variance without a new
training run, and the daemon needs no change: the ensemble is one ``classifier.onnx`` with the
same input and outputs as each member.

    crop (N,3,S,S) float32 -> probabilities (N,K) = softmax(mean_m logits_m)
                              cam (N,K,h,w)       = mean_m cam_m

Each member's cam has the property that its spatial mean is the member's logit (``nets.
ClassifierExport``), so the mean cam's spatial mean is the mean logit: the ensemble's cam keeps
the property, and softmax of the mean logit is the geometric mean of the members' probabilities,
renormalised. Members must share the input contract (size, mean, std, crop, classes, scale),
checked from their manifests, except the input's per-channel ``mean`` and ``std``: a member
trained on another draw of the crops keeps its own normalisation, folded into the graph as one
affine step in front of it (:func:`renormalise`). A member that is itself an ensemble is
flattened: each of its networks counts once, as if listed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from daemon.domain.manifest import InputSpec, ModelManifest, load_manifest
from daemon.training.derived import write_derived_classifier

# What every member's manifest must agree on, or averaging mixes different inputs or classes.
SHARED_FIELDS = ("input", "classes", "crop", "scale", "um_per_pixel", "colour_norm")
# A member's own normalisation is adapted in the graph (renormalise), so it may differ.
ADAPTED_INPUT_FIELDS = {"mean", "std"}
# The nodes ``average_graphs`` appends; finding them marks a member that is an ensemble.
_MEAN_CAM, _LOGITS, _SOFTMAX = "ensemble_mean_cam", "ensemble_logits", "ensemble_softmax"


def check_members(manifests: list[ModelManifest]) -> None:
    """Raise ValueError naming the first field on which a member differs from the first one."""
    if len(manifests) < 2:
        raise ValueError("an ensemble needs at least two member classifiers")
    first = manifests[0]
    for manifest in manifests:
        if manifest.kind != "classifier":
            raise ValueError(f"{manifest.file}: kind {manifest.kind!r}, not a classifier")
        for field in SHARED_FIELDS:
            mine, theirs = getattr(manifest, field, None), getattr(first, field, None)
            if field == "input" and mine is not None and theirs is not None:
                mine = mine.model_dump(exclude=ADAPTED_INPUT_FIELDS)
                theirs = theirs.model_dump(exclude=ADAPTED_INPUT_FIELDS)
            if mine != theirs:
                raise ValueError(f"{manifest.file}: {field} differs from {first.file}'s; "
                                 "members must share the input contract")


def renormalise(ensemble_input: InputSpec, member_input: InputSpec
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift), each (1, 3, 1, 1) float32, that turn a crop normalised by the
    ensemble's input contract into the same crop normalised by the member's:
    ``x_m = x * std_e / std_m + (mean_e - mean_m) / std_m``; None when they already agree."""
    mean_e, std_e = np.asarray(ensemble_input.mean), np.asarray(ensemble_input.std)
    mean_m, std_m = np.asarray(member_input.mean), np.asarray(member_input.std)
    if np.array_equal(mean_e, mean_m) and np.array_equal(std_e, std_m):
        return None
    scale = (std_e / std_m).astype(np.float32).reshape(1, 3, 1, 1)
    shift = ((mean_e - mean_m) / std_m).astype(np.float32).reshape(1, 3, 1, 1)
    return scale, shift


def average_graphs(members: list[onnx.ModelProto],
                   adapters: list[tuple[np.ndarray, np.ndarray] | None] | None = None
                   ) -> onnx.ModelProto:
    """One graph: every member fed the same ``crop`` (through its adapter from
    :func:`renormalise`, if any), logits averaged through the networks' cams. An ensemble
    member contributes each of its networks' cams, not its own mean, so all count alike."""
    input_name = members[0].graph.input[0].name
    adapters = adapters or [None] * len(members)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    cams: list[str] = []
    for index, (member, adapter) in enumerate(zip(members, adapters, strict=True)):
        prefix = f"m{index}_"
        named = onnx.ModelProto()
        named.CopyFrom(member)
        for number, node in enumerate(named.graph.node):
            # Unique node names: the fp16 converter names its casts after them.
            node.name = node.name or f"{node.op_type}_{number}"
        renamed = compose.add_prefix(named, prefix)
        fed = input_name
        if adapter is not None:
            fed = prefix + "adapted_" + input_name
            initializers += [numpy_helper.from_array(adapter[0], prefix + "adapt_scale"),
                             numpy_helper.from_array(adapter[1], prefix + "adapt_shift")]
            nodes += [helper.make_node("Mul", [input_name, prefix + "adapt_scale"],
                                       [prefix + "scaled_" + input_name], name=prefix + "adapt_mul"),
                      helper.make_node("Add", [prefix + "scaled_" + input_name,
                                               prefix + "adapt_shift"], [fed],
                                       name=prefix + "adapt_add")]
        for node in renamed.graph.node:
            node.input[:] = [fed if name == prefix + input_name else name
                             for name in node.input]
        inner = next((node for node in renamed.graph.node
                      if node.name == prefix + _MEAN_CAM), None)
        if inner is None:
            # The member's own softmax is dropped: only its cam feeds the average.
            dropped = {prefix + "probabilities"}
            cams.append(prefix + "cam")
        else:
            # An ensemble: its own mean, logits and softmax go; its networks' cams stay.
            dropped = {prefix + "cam", prefix + "logits", prefix + "probabilities"}
            cams.extend(inner.input)
        nodes.extend(node for node in renamed.graph.node if not dropped & set(node.output))
        initializers.extend(renamed.graph.initializer)
    nodes += [
        helper.make_node("Mean", cams, ["cam"], name=_MEAN_CAM),
        helper.make_node("ReduceMean", ["cam"], ["logits"], axes=[2, 3], keepdims=0,
                         name=_LOGITS),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name=_SOFTMAX),
    ]
    first = members[0].graph
    outputs = {o.name: o for o in first.output}
    graph = helper.make_graph(nodes, "leukoscope_classifier_ensemble", [first.input[0]],
                              [outputs["probabilities"], outputs["cam"]], initializers)
    model = helper.make_model(graph, opset_imports=members[0].opset_import,
                              producer_name="leukoscope-ensemble")
    model.ir_version = members[0].ir_version
    onnx.checker.check_model(model)
    return model


def build_ensemble(member_dirs: list[Path], out: Path, version: str, fp16: bool = True) -> dict:
    """Write ``out/classifier.onnx`` (+ fp16) and its manifest from the classifiers in
    ``member_dirs`` (each holding ``classifier.onnx`` and ``classifier.json``). The manifest is
    the first member's, with the files, the version and the members (file sha256s) replaced.
    Metrics, temperature and review thresholds are left for ``leukoscope evaluate``."""
    manifests = [load_manifest(d / "classifier.json") for d in member_dirs]
    check_members(manifests)
    adapters = [renormalise(manifests[0].input, m.input) for m in manifests]
    graph = average_graphs([onnx.load(str(d / m.file))
                            for d, m in zip(member_dirs, manifests, strict=True)], adapters)
    members = [network for m in manifests for network in _networks(m)]
    path = write_derived_classifier(
        graph, manifests[0], out, version, fp16,
        architecture=f"ensemble of {len(members)} classifiers: softmax of the mean logit "
        "(cam = mean of the members' cams); members: " + "; ".join(
            f"{m['version']} {m['sha256'][:12]} ({m['architecture'].split(',')[0]})"
            for m in members),
        members=members,
        # The first member's training is not the ensemble's: each member's is under members.
        training={"method": "softmax of the members' mean logit (leukoscope ensemble); "
                  "no training of its own", "members": len(members)},
    )
    return {"out": str(out), "members": [str(d) for d in member_dirs],
            "bytes": path.stat().st_size, "version": version}


def _networks(manifest: ModelManifest) -> list[dict]:
    """The networks a member brings: itself, or an ensemble's own members (flattened)."""
    inner = getattr(manifest, "members", None)
    if inner:
        return [dict(network) for network in inner]
    return [{"version": manifest.version, "sha256": manifest.sha256,
             "architecture": _arch(manifest), "training": getattr(manifest, "training", None)}]


def _arch(manifest: ModelManifest) -> str:
    return str(getattr(manifest, "architecture", "") or "unknown architecture")

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
checked from their manifests.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import compose, helper

from daemon.domain.manifest import (
    ModelManifest,
    ReviewSpec,
    file_sha256,
    load_manifest,
    write_manifest_for,
)

# What every member's manifest must agree on, or averaging mixes different inputs or classes.
SHARED_FIELDS = ("input", "classes", "crop", "scale", "um_per_pixel", "colour_norm")


def check_members(manifests: list[ModelManifest]) -> None:
    """Raise ValueError naming the first field on which a member differs from the first one."""
    if len(manifests) < 2:
        raise ValueError("an ensemble needs at least two member classifiers")
    first = manifests[0]
    for manifest in manifests:
        if manifest.kind != "classifier":
            raise ValueError(f"{manifest.file}: kind {manifest.kind!r}, not a classifier")
        for field in SHARED_FIELDS:
            if getattr(manifest, field, None) != getattr(first, field, None):
                raise ValueError(f"{manifest.file}: {field} differs from {first.file}'s; "
                                 "members must share the input contract")


def average_graphs(members: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph: every member fed the same ``crop``, logits averaged through their cams."""
    input_name = members[0].graph.input[0].name
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    cams: list[str] = []
    for index, member in enumerate(members):
        prefix = f"m{index}_"
        named = onnx.ModelProto()
        named.CopyFrom(member)
        for number, node in enumerate(named.graph.node):
            # Unique node names: the fp16 converter names its casts after them.
            node.name = node.name or f"{node.op_type}_{number}"
        renamed = compose.add_prefix(named, prefix)
        for node in renamed.graph.node:
            node.input[:] = [input_name if name == prefix + input_name else name
                             for name in node.input]
        # The member's own softmax is dropped: only its cam feeds the average.
        probs = prefix + "probabilities"
        nodes.extend(node for node in renamed.graph.node if probs not in node.output)
        initializers.extend(renamed.graph.initializer)
        cams.append(prefix + "cam")
    nodes += [
        helper.make_node("Mean", cams, ["cam"], name="ensemble_mean_cam"),
        helper.make_node("ReduceMean", ["cam"], ["logits"], axes=[2, 3], keepdims=0,
                         name="ensemble_logits"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1,
                         name="ensemble_softmax"),
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classifier.onnx"
    onnx.save(average_graphs([onnx.load(str(d / m.file))
                              for d, m in zip(member_dirs, manifests, strict=True)]), str(path))
    fp16_path = None
    if fp16:
        from daemon.training.export import convert_fp16

        fp16_path = out / "classifier_fp16.onnx"
        convert_fp16(path, fp16_path)
    members = [{"version": m.version, "sha256": m.sha256, "architecture": _arch(m),
                "training": getattr(m, "training", None)} for m in manifests]
    base = manifests[0].model_dump(exclude={"file", "sha256", "fp16_file", "fp16_sha256"})
    base.update(
        version=version, fp16_file=fp16_path.name if fp16_path else None,
        fp16_sha256=file_sha256(fp16_path) if fp16_path else None,
        metrics={}, temperature=None, aggregation=None, review=ReviewSpec().model_dump(),
        architecture=f"ensemble of {len(manifests)} classifiers: softmax of the mean logit "
        "(cam = mean of the members' cams); members: " + "; ".join(
            f"{m.version} {m.sha256[:12]} ({_arch(m).split(',')[0]})" for m in manifests),
        members=members,
        # The first member's training is not the ensemble's: each member's is under members.
        training={"method": "softmax of the members' mean logit (leukoscope ensemble); "
                  "no training of its own", "members": len(manifests)},
    )
    write_manifest_for(path, **base)
    return {"out": str(out), "members": [str(d) for d in member_dirs],
            "bytes": path.stat().st_size, "version": version}


def _arch(manifest: ModelManifest) -> str:
    return str(getattr(manifest, "architecture", "") or "unknown architecture")

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

Mixed input sizes (``resample=True``, asked for explicitly): the first member's size is the
ensemble's; a member trained on smaller crops gets the crop area-resampled to its size inside
the graph (:func:`resample_matrix`: the linear map ``cv2.INTER_AREA`` applies), which is close to,
not the same as, the crop the daemon would cut for it directly. The members' cams then differ in
grid; each is resampled bilinearly to the first member's grid and the mean cam is shifted so
that its spatial mean is still exactly the mean logit.
"""

from __future__ import annotations

from pathlib import Path

import cv2
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
# Marks a mixed-size ensemble, whose mean cam is built from resampled cams (not flattenable).
_MIXED = "ensemble_mixed_sizes"


def check_members(manifests: list[ModelManifest], resample: bool = False) -> None:
    """Raise ValueError naming the first field on which a member differs from the first one.
    With ``resample``, a member's input size may be smaller than the first member's."""
    if len(manifests) < 2:
        raise ValueError("an ensemble needs at least two member classifiers")
    first = manifests[0]
    adapted = ADAPTED_INPUT_FIELDS | ({"size"} if resample else set())
    for manifest in manifests:
        if manifest.kind != "classifier":
            raise ValueError(f"{manifest.file}: kind {manifest.kind!r}, not a classifier")
        for field in SHARED_FIELDS:
            mine, theirs = getattr(manifest, field, None), getattr(first, field, None)
            if field == "input" and mine is not None and theirs is not None:
                mine = mine.model_dump(exclude=adapted)
                theirs = theirs.model_dump(exclude=adapted)
            if mine != theirs:
                hint = (" (a smaller input size is allowed with resample: --resample-smaller)"
                        if field == "input" and not resample else "")
                raise ValueError(f"{manifest.file}: {field} differs from {first.file}'s; "
                                 f"members must share the input contract{hint}")
        if resample and any(m > f for m, f in zip(manifest.input.size, first.input.size,
                                                   strict=True)):
            raise ValueError(f"{manifest.file}: input size {tuple(manifest.input.size)} is "
                             f"larger than {first.file}'s {tuple(first.input.size)}; list the "
                             "member with the largest input first (crops are only shrunk)")


def resample_matrix(source: int, target: int, interpolation: int = cv2.INTER_AREA
                    ) -> np.ndarray:
    """(target, source) float32 matrix M with ``M @ X @ M.T == cv2.resize(X, (target, target),
    interpolation=interpolation)`` for a (source, source) float image X (OpenCV's area and
    bilinear resampling are separable). Taken from OpenCV itself, so the graph shrinks a crop
    as the daemon would (area) and enlarges a cam as a viewer would (bilinear)."""
    eye = np.eye(source, dtype=np.float64)
    return cv2.resize(eye, (source, target), interpolation=interpolation).astype(np.float32)


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
                   adapters: list[tuple[np.ndarray, np.ndarray] | None] | None = None,
                   resample: bool = False) -> onnx.ModelProto:
    """One graph: every member fed the same ``crop`` (shrunk to the member's own input size if
    ``resample`` and it is smaller, then through its adapter from :func:`renormalise`, if any),
    logits averaged through the networks' cams. An ensemble member contributes each of its
    networks' cams, not its own mean, so all count alike."""
    input_name = members[0].graph.input[0].name
    adapters = adapters or [None] * len(members)
    size = _input_size(members[0])
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    cams: list[str] = []
    for index, (member, adapter) in enumerate(zip(members, adapters, strict=True)):
        prefix = f"m{index}_"
        if any(node.name == _MIXED for node in member.graph.node):
            raise ValueError("a mixed-size ensemble cannot be a member; list its members instead")
        named = onnx.ModelProto()
        named.CopyFrom(member)
        for number, node in enumerate(named.graph.node):
            # Unique node names: the fp16 converter names its casts after them.
            node.name = node.name or f"{node.op_type}_{number}"
        renamed = compose.add_prefix(named, prefix)
        fed = input_name
        own = _input_size(member)
        if own != size:
            if not resample:
                raise ValueError(f"member {index}: input size {own} is not {size}")
            fed = _two_sided(nodes, initializers, fed, resample_matrix(size[0], own[0]),
                             resample_matrix(size[1], own[1]), prefix + "shrunk_" + input_name)
        if adapter is not None:
            initializers += [numpy_helper.from_array(adapter[0], prefix + "adapt_scale"),
                             numpy_helper.from_array(adapter[1], prefix + "adapt_shift")]
            nodes += [helper.make_node("Mul", [fed, prefix + "adapt_scale"],
                                       [prefix + "scaled_" + input_name], name=prefix + "adapt_mul"),
                      helper.make_node("Add", [prefix + "scaled_" + input_name,
                                               prefix + "adapt_shift"],
                                       [prefix + "adapted_" + input_name],
                                       name=prefix + "adapt_add")]
            fed = prefix + "adapted_" + input_name
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
    grids = {index: _cam_grid(member) for index, member in enumerate(members)}
    if len(set(grids.values())) == 1:
        nodes += [
            helper.make_node("Mean", cams, ["cam"], name=_MEAN_CAM),
            helper.make_node("ReduceMean", ["cam"], ["logits"], axes=[2, 3], keepdims=0,
                             name=_LOGITS),
        ]
    else:
        nodes += _mixed_mean(cams, grids, initializers)
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1,
                                  name=_SOFTMAX))
    first = members[0].graph
    outputs = {o.name: o for o in first.output}
    graph = helper.make_graph(nodes, "leukoscope_classifier_ensemble", [first.input[0]],
                              [outputs["probabilities"], outputs["cam"]], initializers)
    model = helper.make_model(graph, opset_imports=members[0].opset_import,
                              producer_name="leukoscope-ensemble")
    model.ir_version = members[0].ir_version
    onnx.checker.check_model(model)
    return model


def _mixed_mean(cams: list[str], grids: dict[int, tuple[int, int]],
                initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Nodes for ``logits`` (N, K) = the mean of every network's own logit (its cam's spatial
    mean) and ``cam`` (N, K, h, w) on the first member's grid: the cams enlarged bilinearly to
    it, averaged, and shifted so that the mean cam's spatial mean is exactly ``logits``."""
    nodes: list[onnx.NodeProto] = []
    target = grids[0]
    own_logits, grown = [], []
    for cam in cams:
        index = int(cam.split("_", 1)[0][1:])  # "m3_..." -> member 3
        own_logits.append(cam + "_logit")
        nodes.append(helper.make_node("ReduceMean", [cam], [cam + "_logit"], axes=[2, 3],
                                      keepdims=1, name=cam + "_logit"))
        grid = grids[index]
        if grid == target:
            grown.append(cam)
            continue
        grown.append(_two_sided(nodes, initializers, cam, resample_matrix(grid[0], target[0], cv2.INTER_LINEAR),
                                resample_matrix(grid[1], target[1], cv2.INTER_LINEAR), cam + "_grown"))
    nodes += [
        helper.make_node("Mean", own_logits, ["ensemble_logits_4d"], name="ensemble_logits_4d"),
        helper.make_node("Flatten", ["ensemble_logits_4d"], ["logits"], axis=1, name=_LOGITS),
        helper.make_node("Mean", grown, ["ensemble_grown_cam"], name="ensemble_grown_cam"),
        helper.make_node("ReduceMean", ["ensemble_grown_cam"], ["ensemble_grown_level"],
                         axes=[2, 3], keepdims=1, name="ensemble_grown_level"),
        helper.make_node("Sub", ["ensemble_grown_cam", "ensemble_grown_level"],
                         ["ensemble_cam_shape"], name="ensemble_cam_shape"),
        helper.make_node("Add", ["ensemble_cam_shape", "ensemble_logits_4d"], ["cam"],
                         name=_MIXED),
    ]
    return nodes


def _two_sided(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], source: str,
               rows: np.ndarray, cols: np.ndarray, out: str) -> str:
    """Append nodes for ``out = rows @ source @ cols.T`` over the last two axes (a separable
    resampling of an (N, C, h, w) tensor); returns ``out``."""
    initializers += [numpy_helper.from_array(rows, out + "_rows"),
                     numpy_helper.from_array(np.ascontiguousarray(cols.T), out + "_cols")]
    nodes += [helper.make_node("MatMul", [source, out + "_cols"], [out + "_half"],
                               name=out + "_half"),
              helper.make_node("MatMul", [out + "_rows", out + "_half"], [out], name=out)]
    return out


def _input_size(model: onnx.ModelProto) -> tuple[int, int]:
    return _static_hw(model.graph.input[0], "input")


def _cam_grid(model: onnx.ModelProto) -> tuple[int, int]:
    return _static_hw(next(o for o in model.graph.output if o.name == "cam"), "cam")


def _static_hw(value: onnx.ValueInfoProto, what: str) -> tuple[int, int]:
    dims = value.type.tensor_type.shape.dim[2:]
    if len(dims) != 2 or not all(d.HasField("dim_value") for d in dims):
        raise ValueError(f"the {what} {value.name!r} has no fixed height and width")
    return dims[0].dim_value, dims[1].dim_value


def build_ensemble(member_dirs: list[Path], out: Path, version: str, fp16: bool = True,
                   resample: bool = False) -> dict:
    """Write ``out/classifier.onnx`` (+ fp16) and its manifest from the classifiers in
    ``member_dirs`` (each holding ``classifier.onnx`` and ``classifier.json``). The manifest is
    the first member's, with the files, the version and the members (file sha256s) replaced.
    ``resample``: members with a smaller input size are fed the crop shrunk in the graph.
    Metrics, temperature and review thresholds are left for ``leukoscope evaluate``."""
    manifests = [load_manifest(d / "classifier.json") for d in member_dirs]
    check_members(manifests, resample)
    adapters = [renormalise(manifests[0].input, m.input) for m in manifests]
    graph = average_graphs([onnx.load(str(d / m.file))
                            for d, m in zip(member_dirs, manifests, strict=True)], adapters,
                           resample)
    members = [network for m in manifests for network in _networks(m)]
    path = write_derived_classifier(
        graph, manifests[0], out, version, fp16,
        architecture=f"ensemble of {len(members)} classifiers: softmax of the mean logit "
        "(cam = mean of the members' cams); members: " + "; ".join(
            f"{m['version']} {m['sha256'][:12]} ({m['architecture'].split(',')[0]}"
            f"{_fed(m, manifests[0])})" for m in members),
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
    size = list(manifest.input.size)  # what the network was trained on (fed shrunk if smaller)
    if inner:
        return [{"input_size": size, **network} for network in inner]
    return [{"version": manifest.version, "sha256": manifest.sha256,
             "architecture": _arch(manifest), "training": getattr(manifest, "training", None),
             "input_size": size}]


def _fed(network: dict, first: ModelManifest) -> str:
    size = tuple(network["input_size"])
    if size == tuple(first.input.size):
        return ""
    return f", trained at {size[0]}x{size[1]}, fed the crop area-resampled to it"


def _arch(manifest: ModelManifest) -> str:
    return str(getattr(manifest, "architecture", "") or "unknown architecture")

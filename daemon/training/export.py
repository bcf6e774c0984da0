"""ONNX export, fp16 conversion, parity check and manifest writing (torch).

    segmenter.onnx    image (N,3,H,W) float32 -> mask (N,1,H,W) float32 probability
    classifier.onnx   crop (N,3,S,S) float32  -> probabilities (N,4), cam (N,4,S/16,S/16)

N, H and W are dynamic (H, W multiples of the manifest's ``size_multiple``). The fp16 variants
keep float32 inputs and outputs (casts inside the graph) so the daemon feeds them the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from daemon.domain.classes import CELL_OUTCOMES, CLASS_CODES
from daemon.domain.manifest import (
    AcquisitionSpec,
    CellFilter,
    ClassSpec,
    CropSpec,
    InputSpec,
    ModelManifest,
    RedCellScale,
    ReviewSpec,
    file_sha256,
    write_manifest_for,
)
from daemon.training.data import CLASS_DISPLAY, CLASS_FOLDERS, UNIDENTIFIED_DISPLAY
from daemon.training.nets import ClassifierExport, MobileNetV2, SegmenterExport, UNet

OPSET = 17
VERSION = "2.0.0"


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network of ``best.pt``/``last.pt`` in eval mode; returns (net, meta)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    meta = state["meta"]
    if meta["kind"] == "segmenter":
        net: torch.nn.Module = UNet(meta["arch"]["base"], meta["arch"]["levels"])
    else:
        # 4 outputs (the classes) or 5 (then ``unidentified`` last), as the head says.
        outputs = int(state["model"]["classifier.weight"].shape[0])
        meta = {**meta, "classes": list(CELL_OUTCOMES[:outputs])}
        net = MobileNetV2(num_classes=outputs, width=meta["arch"]["width"])
    net.load_state_dict(state["model"])
    meta = dict(meta, epoch=state.get("epoch"))
    return net.eval(), meta


def export_onnx(net: torch.nn.Module, kind: str, path: Path, size: int) -> torch.nn.Module:
    """Write the export wrapper of ``net`` to ``path`` (opset 17); returns the wrapper."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "segmenter":
        wrapper: torch.nn.Module = SegmenterExport(net).eval()
        names_in, names_out = ["image"], ["mask"]
        axes = {"image": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", 2: "H", 3: "W"}}
    else:
        wrapper = ClassifierExport(net).eval()
        names_in, names_out = ["crop"], ["probabilities", "cam"]
        axes = {"crop": {0: "N"}, "probabilities": {0: "N"}, "cam": {0: "N"}}
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(path),
        input_names=names_in,
        output_names=names_out,
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return wrapper


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and arithmetic, float32 graph inputs/outputs (onnxconverter-common).

    ReduceMean and Softmax stay in float32 (the converter otherwise emits a type-inconsistent
    ReduceMean, and float32 softmax keeps probabilities summing to 1); any graph output the
    converter leaves in float16 gets a final Cast to float32.
    """
    from onnx import TensorProto, helper
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    blocked = list(float16.DEFAULT_OP_BLOCK_LIST) + ["ReduceMean", "Softmax"]
    with warnings.catch_warnings():  # "float32 number ... will be truncated": expected in fp16
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    graph = half.graph
    for output in graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = output.name + "_fp16"
        for node in graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
        output.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))


def parity(wrapper: torch.nn.Module, onnx_path: Path, inputs: np.ndarray) -> dict:
    """Max abs difference between torch and onnxruntime (CPU) outputs on ``inputs`` (N,3,H,W)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ort_out = session.run(None, {name: inputs.astype(np.float32)})
    with torch.no_grad():
        torch_out = wrapper(torch.from_numpy(inputs.astype(np.float32)))
    if isinstance(torch_out, torch.Tensor):
        torch_out = (torch_out,)
    names = [o.name for o in session.get_outputs()]
    return {
        n: float(np.abs(a - b.numpy()).max())
        for n, a, b in zip(names, ort_out, torch_out, strict=True)
    }


def write_model_manifest(
    kind: str,
    onnx_path: Path,
    fp16_path: Path | None,
    meta: dict,
    metrics: dict | None = None,
    cells: CellFilter | None = None,
    aggregation: str | None = None,
    version: str = VERSION,
) -> ModelManifest:
    """Write ``<model>.json`` beside ``onnx_path`` from checkpoint metadata and test metrics."""
    scale = RedCellScale(**meta["scale"]) if meta.get("scale") else None
    um_per_pixel = round(scale.rbc_um / scale.rbc_diameter_px, 4) if scale else None
    acquisition = (AcquisitionSpec(background_rgb=tuple(meta["reference_background"]))
                   if meta.get("reference_background") else None)
    # What only one kind has: its outputs, cell filter or classes and crop, its description.
    specific: dict = {}
    if kind == "segmenter":
        size = (224, 224)
        multiple = 2 ** meta["arch"]["levels"]
        specific.update(
            outputs=["mask"], cells=cells,
            architecture=f"U-Net, base {meta['arch']['base']} channels, "
            f"{meta['arch']['levels']} poolings; sigmoid in graph")
    else:
        size = (meta["size"], meta["size"])
        multiple = 1
        codes = tuple(meta.get("classes", CLASS_CODES))
        displays = (*CLASS_DISPLAY, UNIDENTIFIED_DISPLAY)[: len(codes)]
        specific.update(
            outputs=["probabilities", "cam"], aggregation=aggregation, review=ReviewSpec(),
            classes=[ClassSpec(code=c, display=d) for c, d in zip(codes, displays, strict=True)],
            crop=CropSpec(**meta["crop"]),
            architecture=f"MobileNetV2 width {meta['arch']['width']}, output stride 16; "
            "softmax in graph; cam = last conv features weighted by the linear head",
            class_folders=dict(zip(CLASS_CODES, CLASS_FOLDERS, strict=True)),
            colour_norm=meta["config"].get("colour_norm", "none"))
        if meta.get("lab_target"):
            specific["lab_target"] = meta["lab_target"]  # Reinhard target LAB mean, std
    return write_manifest_for(
        onnx_path,
        name=f"leukoscope-{kind}",
        kind=kind,
        version=version,
        fp16_file=fp16_path.name if fp16_path else None,
        fp16_sha256=file_sha256(fp16_path) if fp16_path else None,
        input=InputSpec(
            name="image" if kind == "segmenter" else "crop",
            channel_order="RGB",
            size=size,
            size_multiple=multiple,
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
        ),
        um_per_pixel=um_per_pixel,
        scale=scale,
        acquisition=acquisition,
        training_data_sha256=meta["training_data_sha256"],
        metrics=metrics or {},
        created=dt.date.today().isoformat(),
        trained_from_scratch=True,
        training={
            "epoch": meta.get("epoch"),
            "config": meta["config"],
            "split": {
                "block_size": meta["config"]["block_size"],
                "seed": meta["config"]["seed"],
                "fractions": "train/val/test by blocks, >=15% test and >=15% val per class",
            },
        },
        um_per_pixel_note=(
            "the data set does not state the pixel scale (100x objective, Zeiss camera, fields "
            "resized to 224x224); um_per_pixel = 7.5 um (nominal red-cell diameter) / the "
            "median red-cell diameter measured on the training fields (scale.rbc_diameter_px); "
            "red cells are 6.5-8.5 um (+-13 %) and the ruler reads cells with central pallor "
            "about 10 % larger than solid discs, so the absolute value is uncertain by about "
            "+-15 %, "
            "while rescaling between frames and models uses the measured diameters only"),
        **specific,
    )


def export_checkpoint(
    checkpoint: Path, out_dir: Path, name: str | None = None, fp16: bool = True,
    version: str = VERSION,
) -> dict:
    """Export one checkpoint to ``out_dir/<name>.onnx`` (+ ``_fp16``) and check parity.

    Returns a report with parity differences; raises if fp32 probability parity >= 1e-4.
    Writes a manifest without metrics (``evaluate`` fills them in), with ``version``: every
    result names the model versions that made it, so a retrained model needs a new one.
    """
    net, meta = load_checkpoint(checkpoint)
    kind = meta["kind"]
    name = name or kind
    size = 224 if kind == "segmenter" else meta["size"]
    path = out_dir / f"{name}.onnx"
    wrapper = export_onnx(net, kind, path, size)
    rng = np.random.default_rng(0)
    if kind == "segmenter":
        sample = rng.normal(0, 1, (2, 3, 224, 224)).astype(np.float32)
        sample_odd = rng.normal(0, 1, (1, 3, 96, 160)).astype(np.float32)
    else:
        sample = rng.normal(0, 1, (8, 3, size, size)).astype(np.float32)
        sample_odd = rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)
    report = {
        "fp32": parity(wrapper, path, sample),
        "fp32_other_shape": parity(wrapper, path, sample_odd),
    }
    key = "mask" if kind == "segmenter" else "probabilities"
    worst = max(report["fp32"][key], report["fp32_other_shape"][key])
    if worst >= 1e-4:
        raise RuntimeError(f"ONNX parity failed for {kind}: max abs diff {worst}")
    fp16_path = None
    if fp16:
        fp16_path = out_dir / f"{name}_fp16.onnx"
        convert_fp16(path, fp16_path)
        report["fp16"] = parity(wrapper, fp16_path, sample)
    existing = path.with_suffix(".json")
    metrics, cells, aggregation = {}, None, None
    if existing.is_file():  # keep evaluation results of a previous export
        old = json.loads(existing.read_text())
        metrics = old.get("metrics", {})
        cells = CellFilter(**old["cells"]) if old.get("cells") else None
        aggregation = old.get("aggregation")
    write_model_manifest(kind, path, fp16_path, meta, metrics, cells, aggregation, version)
    report["kind"] = kind
    report["bytes"] = path.stat().st_size
    return report

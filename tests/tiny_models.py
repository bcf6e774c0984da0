"""Tiny hand-built ONNX models with manifests, for plumbing tests (no training, no torch).

The segmenter marks pixels whose green channel is low (purple-stained white cells on a pale
background); the classifier is a 1x1 convolution (its output doubles as the CAM) followed by
global average pooling and softmax. They exercise the same ONNX Runtime path as the real
models, with the same input/output names and manifest fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.domain.classes import CLASS_CODES
from daemon.domain.manifest import write_manifest_for
from daemon.imaging.synthetic import BACKGROUND_RGB

CROP = 32


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_segmenter(folder: Path) -> Path:
    path = folder / "segmenter.onnx"
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "start"),
        numpy_helper.from_array(np.array([2], np.int64), "end"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(0.55, np.float32), "threshold"),
        numpy_helper.from_array(np.array(25.0, np.float32), "gain"),
    ]
    nodes = [
        helper.make_node("Slice", ["image", "start", "end", "axis"], ["green"]),
        helper.make_node("Sub", ["threshold", "green"], ["margin"]),
        helper.make_node("Mul", ["margin", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        inits,
    )
    _save(graph, path)
    write_manifest_for(  # nested specs as plain data, validated by the manifest model
        path,
        name="tiny-segmenter",
        kind="segmenter",
        version="0.0.1-test",
        input={"name": "image", "size": (224, 224)},
        outputs=["mask"],
        cells={"threshold": 0.5, "min_area_px": 60, "max_area_px": 20000},
        # as the red-cell ruler measures daemon.synthetic's fields, and their background
        scale={"rbc_diameter_px": 21.0},
        acquisition={"background_rgb": BACKGROUND_RGB},
    )
    return path


TINY_WEIGHT = np.array([[4, 2, -3], [-2, 3, 0], [3, -4, 3], [0, 1, -1]], np.float32)


def build_classifier(folder: Path, weight: np.ndarray = TINY_WEIGHT, size: int = CROP,
                     version: str = "0.0.1-test") -> Path:
    """``weight`` (4, 3): class scores from mean colour; the default makes purple cells (high R
    and B, low G) favour pre_b."""
    path = folder / "classifier.onnx"
    inits = [
        numpy_helper.from_array(weight.astype(np.float32).reshape(4, 3, 1, 1), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["crop", "w", "b"], ["cam"]),
        helper.make_node("GlobalAveragePool", ["cam"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 4, size, size]),
        ],
        inits,
    )
    _save(graph, path)
    write_manifest_for(
        path,
        name="tiny-classifier",
        kind="classifier",
        version=version,
        input={"name": "crop", "size": (size, size)},
        outputs=["probabilities", "cam"],
        classes=[{"code": c, "display": c} for c in CLASS_CODES],
        crop={"margin": 0.25, "min_side_px": 32},
        aggregation="mean",
        # The tiny classifier is never sure of anything: no confidence-based review.
        review={"cell_confidence": 0.0, "frame_confidence": 0.0},
    )
    return path

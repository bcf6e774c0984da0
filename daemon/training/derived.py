"""A classifier derived from exported ones (``ensemble``, ``head``): graph, fp16 copy, manifest.

It keeps its source's input contract, classes, crop and scale. The files, the version and what
the graph was made from are new; the calibration temperature, aggregation, review thresholds and
metrics are cleared, because they belong to the old graph: ``leukoscope evaluate`` fits them
again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from daemon.domain.manifest import ModelManifest, ReviewSpec, file_sha256, write_manifest_for


def write_derived_classifier(model: onnx.ModelProto, source: ModelManifest, out: Path,
                             version: str, fp16: bool = True, **fields: Any) -> Path:
    """Write ``model`` as ``out/classifier.onnx`` (+ ``classifier_fp16.onnx`` if ``fp16``) with
    ``source``'s manifest, its version, files and ``fields`` (architecture, training, ...)
    replaced and its fitted settings cleared; returns the graph's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classifier.onnx"
    onnx.save(model, str(path))
    fp16_path = None
    if fp16:
        from daemon.training.export import convert_fp16  # torch's module; onnxconverter-common

        fp16_path = out / "classifier_fp16.onnx"
        convert_fp16(path, fp16_path)
    base = source.model_dump(exclude={"file", "sha256", "fp16_file", "fp16_sha256"})
    base.update(
        version=version, fp16_file=fp16_path.name if fp16_path else None,
        fp16_sha256=file_sha256(fp16_path) if fp16_path else None,
        metrics={}, temperature=None, aggregation=None, review=ReviewSpec().model_dump(),
        **fields)
    write_manifest_for(path, **base)
    return path

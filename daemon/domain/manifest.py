"""Model manifests: the JSON file beside each ONNX model that tells the daemon how to use it.

A manifest is written by ``leukoscope export`` and read by every worker; the sha256 it
states is checked against the ONNX file at load time, so a result's model versions are
the ones that actually ran.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class InputSpec(BaseModel):
    """How to turn an RGB uint8 image into the model's input tensor.

    The tensor is ``((pixel / 255) - mean) / std`` per channel, NCHW float32, channels in
    ``channel_order``. ``size`` is the training size [height, width]; a fully convolutional
    model accepts other sizes whose sides are multiples of ``size_multiple``.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    layout: Literal["NCHW"] = "NCHW"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    size: tuple[int, int]
    size_multiple: int = 1
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


class ClassSpec(BaseModel):
    code: str
    display: str


class CropSpec(BaseModel):
    """How cell crops are cut for the classifier (shared by training and the daemon).

    A crop is a square centred on the cell's bounding box with side
    ``max(min_side_px, max(w, h) * (1 + 2 * margin))`` in frame pixels (at the model's
    training scale), padded by edge replication where it leaves the frame, then resized to
    the classifier's input size.
    """

    margin: float = 0.25
    min_side_px: int = 48


class CellFilter(BaseModel):
    """Which connected components of the segmenter's mask count as cells (frame pixels)."""

    threshold: float = 0.5
    min_area_px: int = 60
    max_area_px: int = 20000


class RedCellScale(BaseModel):
    """The models' scale, measured on their own training fields with ``daemon.imaging.ruler``.

    Frames are brought to it by ``rbc_diameter_px / frame's red-cell diameter`` (a ratio of
    two measurements made the same way); ``um_per_pixel`` of the manifest follows from the
    nominal red-cell diameter and carries its uncertainty (red cells are 6.5-8.5 µm)."""

    rbc_diameter_px: float
    q1: float | None = None
    q3: float | None = None
    fields: int | None = None
    reliable: int | None = None
    rbc_um: float = 7.5
    method: str = "median red-cell diameter, scale-space LoG (daemon/imaging/ruler.py)"


class AcquisitionSpec(BaseModel):
    """The models' reference background and the range of acquisitions they were validated on."""

    background_rgb: tuple[float, float, float]
    min_brightness: float = 170.0  # background grey below this: outside the validated range
    max_chroma: float = 25.0  # background colour cast (CIELAB chroma) above this: outside
    #: The training fields' median stain hue (YIQ chroma angle of stained pixels, degrees,
    #: ``daemon.imaging.stain``); None: rigs' stain hue is not calibrated.
    stain_hue_deg: float | None = None


class ReviewSpec(BaseModel):
    """When a cell or a frame goes to a person (chosen on validation, see models/README.md)."""

    cell_confidence: float = 0.6  # a cell whose calibrated confidence is below this
    frame_confidence: float = 0.6  # a frame whose class probability is below this
    max_unidentified_share: float = 0.5  # a frame with a larger share of unidentified cells


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    kind: Literal["segmenter", "classifier"]
    version: str
    file: str
    sha256: str
    fp16_file: str | None = None
    fp16_sha256: str | None = None
    input: InputSpec
    outputs: list[str]
    um_per_pixel: float | None = Field(
        default=None, description="Pixel scale the model was trained at (µm/pixel); null if unknown"
    )
    classes: list[ClassSpec] = []
    crop: CropSpec | None = None
    cells: CellFilter | None = None
    aggregation: str | None = None
    scale: RedCellScale | None = None
    acquisition: AcquisitionSpec | None = None
    temperature: float | None = Field(
        default=None, description="classifier: calibration temperature applied to its "
                                  "probabilities (p^(1/T), renormalised); null: none")
    review: ReviewSpec | None = None
    views: int = Field(
        default=1, ge=1, le=2, description="classifier: views of each crop whose calls are "
        "averaged (1: the crop; 2: the crop and its mirror image), chosen on validation by "
        "`leukoscope evaluate`; the temperature was fitted on the same views")
    training_data_sha256: str | None = None
    metrics: dict = {}
    created: str | None = None
    intended_use: str = "For research use only. Not for use in diagnostic procedures."


class ManifestError(ValueError):
    """A manifest is missing, malformed or does not match its model file."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path_for(model_path: Path) -> Path:
    """``models/classifier.onnx`` -> ``models/classifier.json``."""
    return model_path.with_suffix(".json")


def load_manifest(path: Path, verify: bool = True) -> ModelManifest:
    """Read a manifest (given the .json or the .onnx path) and check the model file's sha256."""
    path = Path(path)
    if path.suffix == ".onnx":
        path = manifest_path_for(path)
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ManifestError(f"model manifest not found: {path}") from exc
    except (json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"invalid model manifest {path}: {exc}") from exc
    if verify:
        model_file = path.parent / manifest.file
        if not model_file.is_file():
            raise ManifestError(f"{path}: model file {model_file} does not exist")
        actual = file_sha256(model_file)
        if actual != manifest.sha256:
            raise ManifestError(
                f"{path}: sha256 of {model_file.name} is {actual}, manifest says {manifest.sha256}"
            )
    return manifest


def write_manifest(manifest: ModelManifest, path: Path) -> None:
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")


def write_manifest_for(model_path: Path, **fields: Any) -> ModelManifest:
    """The manifest of the model file ``model_path`` (its ``file`` and ``sha256`` filled in
    from the file), validated and written beside it (``manifest_path_for``)."""
    manifest = ModelManifest(file=model_path.name, sha256=file_sha256(model_path), **fields)
    write_manifest(manifest, manifest_path_for(model_path))
    return manifest

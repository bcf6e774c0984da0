"""FrameResult: what the daemon stores per frame and serves to the LIS (API schema too)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from daemon.domain.pages import Paged

FrameStatus = Literal["done", "rejected", "failed"]
ScaleSource = Literal["configured", "file", "estimated", "assumed"]

#: Why a cell or a frame goes to a person (bounded set: metric label values too).
LOW_CONFIDENCE = "low_confidence"
UNIDENTIFIED_CELL = "unidentified"
CUT_OFF = "cut_off"
UNIDENTIFIED_CELLS = "unidentified_cells"
NO_CELLS = "no_cells"
SCALE_UNCERTAIN = "scale_uncertain"
SCALE_UNKNOWN = "scale_unknown"
ACQUISITION_OUT_OF_RANGE = "acquisition_out_of_range"
#: A quarter or more of the field clipped white: its red cells cannot be measured, so with no
#: rig estimate its scale is unknown (the lamp or exposure time is the fix, or a set um/px).
OVEREXPOSED = "overexposed"
CELL_REVIEW_REASONS = (LOW_CONFIDENCE, UNIDENTIFIED_CELL, CUT_OFF)
FRAME_REVIEW_REASONS = (LOW_CONFIDENCE, UNIDENTIFIED_CELLS, NO_CELLS, SCALE_UNCERTAIN,
                        SCALE_UNKNOWN, ACQUISITION_OUT_OF_RANGE, OVEREXPOSED)


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class ScaleInfo(BaseModel):
    """The pixel scale a frame was analysed at, and where it came from."""

    um_per_pixel: float | None = Field(
        description="µm per pixel of the frame as captured (None: unknown, see source)")
    source: ScaleSource = Field(
        description="configured (rig setting or push), file (CZI/TIFF metadata), estimated "
                    "(red cells in the frame or the rig's running estimate), assumed (nothing "
                    "known: analysed at the models' scale and sent to review)")
    factor: float = Field(description="enlargement applied before the models (1: as captured)")
    rbc_diameter_px: float | None = Field(
        default=None, description="typical red-cell diameter measured in the frame (pixels); "
                                     "null when the scale was given (no ruler run)")
    reliable: bool = Field(
        default=True, description="false when the estimate rests on too few red cells")
    # Not stored: said once in the frame's review reasons (overexposed) where it mattered.
    overexposed: bool = Field(default=False, exclude=True)


class AcquisitionInfo(BaseModel):
    """The frame's own white reference (background glass/plasma), before normalisation."""

    background_rgb: list[float] = Field(description="median background colour, RGB 0-255")
    brightness: float = Field(description="background grey level 0-255")
    hue_deg: float = Field(description="background hue angle in CIELAB a*b* (degrees, 0-360)")
    chroma: float = Field(description="background chroma in CIELAB (0: neutral grey/white)")
    gain: list[float] = Field(description="per-channel gain applied to reach the models' "
                                          "reference background")
    stain_hue_deg: float | None = Field(
        default=None, description="the frame's stain hue: YIQ chroma angle of its stained "
        "pixels after the gain (degrees); null: too few stained pixels")
    rig_stain_offset_deg: float | None = Field(
        default=None, description="the models' reference stain hue minus the rig's running "
        "median (degrees); null: no rig, or the rig's first frames")
    stain_turned_deg: float = Field(
        default=0.0, description="what the frame's chroma was turned by to the models' stain "
        "hue (stain calibration per rig; 0: not turned)")


class CellResult(BaseModel):
    bbox: list[int] = Field(description="[x, y, w, h] in frame pixels")
    area_px: int
    class_: str = Field(alias="class", serialization_alias="class",
                        description="one of the four classes, or 'unidentified'")
    probabilities: dict[str, float]
    confidence: float | None = Field(
        default=None, description="calibrated probability of the called class")
    needs_review: bool = False
    review_reasons: list[str] = Field(
        default=[], description="low_confidence, unidentified, cut_off")

    model_config = {"populate_by_name": True}


class FrameResult(BaseModel):
    frame_id: str
    specimen_id: str
    source: str = Field(description="where the frame came from (file path or upload name), "
                        "as it was when captured")
    archived_path: str | None = Field(
        default=None, description="where the original is now, once capture has moved it "
        "(archive/ when analysed, quarantine/ when rejected); null until then, and for "
        "frames capture never held (live cameras)")
    rig_id: str | None = None
    status: FrameStatus
    error: str | None = Field(default=None, description="why a frame was rejected or failed")
    reason: str | None = Field(default=None, description="bounded reason code for rejections")
    captured_at: float = Field(description="Unix time (s) the frame was taken by capture")
    completed_at: float = Field(description="Unix time (s) the result was made")
    frame_class: str | None = None
    frame_probabilities: dict[str, float] = {}
    cells: list[CellResult] = []
    models: dict[str, ModelRef] = {}
    timings_ms: dict[str, float] = {}
    worker: str | None = None
    quality: dict[str, float] | None = Field(
        default=None, description="frame QC measures (daemon/imaging/quality.py); set on QC rejections"
    )
    um_per_pixel: float | None = Field(
        default=None, description="pixel size of the frame as captured (config or CZI metadata)"
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="field metadata sent with the frame (HTTP push, CZI scene/tile)"
    )
    scale: ScaleInfo | None = Field(default=None, description="scale the frame was analysed at")
    acquisition: AcquisitionInfo | None = None
    needs_review: bool = Field(
        default=False, description="a person must look at this frame before it is reported")
    review_reasons: list[str] = Field(
        default=[], description="low_confidence, unidentified_cells, no_cells, scale_uncertain, "
                                "scale_unknown, acquisition_out_of_range, overexposed")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class ResultPage(Paged, BaseModel):
    items: list[FrameResult]
    next: str | None = Field(description="cursor for the next call's `after`; null if none yet")

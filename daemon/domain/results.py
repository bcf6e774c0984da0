"""FrameResult: what the daemon stores per frame and serves to the LIS (API schema too)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FrameStatus = Literal["done", "rejected", "failed"]


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class CellResult(BaseModel):
    bbox: list[int] = Field(description="[x, y, w, h] in frame pixels")
    area_px: int
    class_: str = Field(alias="class", serialization_alias="class")
    probabilities: dict[str, float]

    model_config = {"populate_by_name": True}


class FrameResult(BaseModel):
    frame_id: str
    specimen_id: str
    source: str = Field(description="where the frame came from (file path or upload name)")
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
        default=None, description="frame QC measures (capture/quality.py); set on QC rejections"
    )
    um_per_pixel: float | None = Field(
        default=None, description="pixel size of the frame as captured (config or CZI metadata)"
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="field metadata sent with the frame (HTTP push, CZI scene/tile)"
    )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class ResultPage(BaseModel):
    items: list[FrameResult]
    next: str | None = Field(description="cursor for the next call's `after`; null if none yet")

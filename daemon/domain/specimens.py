"""A specimen's report: the per-specimen aggregate of frame results, as the API serves it.

Built from the specimen's Redis hash by ``daemon.store.specimens``; rendered for the LIS by
``daemon.lis`` (FHIR DiagnosticReport, HL7 ORU^R01).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from daemon.domain.orders import Order
from daemon.domain.pages import Paged
from daemon.domain.results import ModelRef


class SpecimenModel(ModelRef):
    kind: str


class Signature(BaseModel):
    """One sign-off of a specimen's review (the review station, issue 13)."""

    by: str = Field(description="name of the API key that signed")
    role: str
    at: float = Field(description="Unix time (s) of the signature")


class Specimen(BaseModel):
    specimen_id: str
    status: Literal["open", "complete"]
    result_status: Literal["preliminary", "final"] = Field(
        description="preliminary until a reviewer has verified the complete specimen "
                    "(POST /specimens/{id}/verify); final only after verification"
    )
    review_status: Literal["unverified", "signed", "verified"] = Field(
        default="unverified",
        description="signed: some but not all of the required signatures (review.signatures)")
    verified_by: str | None = Field(default=None, description="the key that verified it")
    verified_at: float | None = None
    signatures: list[Signature] = []
    reclassified_cells: int = Field(
        default=0, description="cells whose class a reviewer changed (counted at verification)")
    model_cells: dict[str, int] | None = Field(
        default=None, description="once verified: the models' counts per class before review "
                                  "(cells and percent then hold the verified counts)")
    needs_review: bool = Field(
        default=False, description="some cell or frame of the specimen needs a person's review")
    frames_needing_review: int = 0
    cells_needing_review: int = 0
    unidentified_cells: int = Field(
        default=0, description="cells not placed in any of the four classes (not in the "
                               "differential: cells, percent and blast share leave them out)")
    opened_at: float
    completed_at: float | None = None
    completed_by: str | None = Field(default=None, description="api, marker or idle")
    completion_requested_at: float | None = None
    control_id: str | None = Field(default=None, description="HL7 message control id")
    first_frame_at: float
    last_frame_at: float
    last_activity_at: float | None = None
    frames_done: int = 0
    frames_rejected: int = 0
    frames_failed: int = 0
    late_frames: int = Field(default=0, description="results stored after completion")
    late_frame_ids: list[str] = []
    cells_classified: int = Field(
        default=0, description="cells in the differential (one of the four classes)")
    cells: dict[str, int] = {}
    percent: dict[str, float] = {}
    blast_share_percent: float | None = Field(
        default=None, description="ALL-class share of identified lymphoid cells: early_pre_b + "
        "pre_b + pro_b over cells_classified, % (local code all-lymphoid-share; not blasts per "
        "100 leukocytes)"
    )
    predominant_class: str | None = Field(
        default=None, description="the class with most identified cells (null: none, or a tie)")
    predominant_share_percent: float | None = Field(
        default=None, description="predominant_class's share of identified lymphoid cells, %")
    identified_share_percent: float | None = Field(
        default=None, description="cells_classified over all cells found (identified + "
        "unidentified), %")
    ordered: bool = Field(default=False, description="an order from the LIS names this specimen;"
                          " false: unordered (reports carry no patient; MLLP push waits)")
    order: Order | None = Field(default=None, description="the LIS order, when one arrived")
    mean_confidence: float | None = None
    low_confidence_cells: int = 0
    low_confidence_threshold: float | None = None
    rejections: dict[str, int] = {}
    models: list[SpecimenModel] = []
    delivery: dict[str, str | int | float | None] | None = Field(
        default=None, description="MLLP delivery state, when MLLP push is configured"
    )
    statement: str = ""


class SpecimenEvent(BaseModel):
    cursor: str
    specimen: Specimen


class SpecimenPage(Paged, BaseModel):
    items: list[Specimen]
    next: str = Field(description="cursor for the next call's `after`")

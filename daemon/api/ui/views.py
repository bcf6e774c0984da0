"""What the review station's pages show, read from Redis (no HTML here: see templates/)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from daemon.domain.classes import BLAST_CLASSES, CELL_OUTCOMES, CLASS_CODES, UNIDENTIFIED
from daemon.domain.results import FrameResult
from daemon.domain.specimens import Specimen
from daemon.store.review import ReviewStore, cell_key, latest_results
from daemon.store.specimens import SpecimenStore

LABELS = {"benign": "Benign", "early_pre_b": "Early pre-B", "pre_b": "Pre-B", "pro_b": "Pro-B",
          UNIDENTIFIED: "Unidentified"}
#: keys of the gallery: digits for the four classes, u for unidentified
KEYS = {"benign": "1", "early_pre_b": "2", "pre_b": "3", "pro_b": "4", UNIDENTIFIED: "u"}
HISTOGRAM_BINS = 10


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} %"


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "–"
    seconds = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def label(code: str) -> str:
    return LABELS.get(code, code.replace("_", " "))


def _specimens(state) -> SpecimenStore:
    if getattr(state, "specimens", None) is None:
        settings = state.settings
        state.specimens = SpecimenStore(state.client, settings.lis.statement,
                                        mllp_enabled=settings.lis.mllp is not None)
    return state.specimens


def _reviews(state) -> ReviewStore:
    if getattr(state, "review", None) is None:
        state.review = ReviewStore(state.client)
    return state.review


@dataclass
class SpecimenRow:
    specimen: Specimen
    state: str  # collecting, awaiting, verified
    rig: str | None

    @property
    def state_label(self) -> str:
        if self.state == "awaiting" and self.specimen.review_status == "signed":
            return "awaiting 2nd signature"
        return {"collecting": "collecting", "awaiting": "awaiting review",
                "verified": "verified"}[self.state]

    @property
    def frames(self) -> int:
        s = self.specimen
        return s.frames_done + s.frames_rejected + s.frames_failed


def state_of(specimen: Specimen) -> str:
    if specimen.status == "open":
        return "collecting"
    return "verified" if specimen.review_status == "verified" else "awaiting"


def specimen_rows(state, limit: int = 1000) -> list[SpecimenRow]:
    items, _cursor = _specimens(state).page(None, None, limit)
    reviews = _reviews(state)
    first = [reviews.frame_ids(s.specimen_id, 1) for s in items]
    rigs: dict[str, str | None] = {}
    ids = [f[0] for f in first if f]
    if ids:
        for frame_id in ids:
            result = state.store.get(frame_id)
            if result is not None:
                rigs[result.specimen_id] = result.rig_id
    return [SpecimenRow(s, state_of(s), rigs.get(s.specimen_id)) for s in items]


def sort_rows(rows: list[SpecimenRow], by: str, descending: bool) -> list[SpecimenRow]:
    def key(row: SpecimenRow):
        s = row.specimen
        return {"age": s.first_frame_at, "id": s.specimen_id,
                "blast": s.blast_share_percent or -1.0,
                "review": s.cells_needing_review + s.frames_needing_review,
                "cells": s.cells_classified}[by]

    # "age" descending means youngest first: newest first_frame_at first.
    return sorted(rows, key=key, reverse=descending)


@dataclass
class Cell:
    frame_id: str
    index: int
    model: str
    current: str
    confidence: float
    needs_review: bool
    reasons: list[str]
    reviewed: bool
    bbox: list[int]


@dataclass
class Group:
    code: str
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Review:
    specimen: Specimen
    state: str
    frames: list[FrameResult]
    groups: list[Group]
    total: int
    reviewed: int
    flagged: int
    flagged_reviewed: int
    before: dict[str, int]
    after: dict[str, int]
    histogram: list[tuple[str, int]]
    keys: dict[str, str]
    flagged_frames: list[FrameResult]

    @property
    def max_count(self) -> int:
        return max([1, *self.before.values(), *self.after.values()])

    @property
    def max_bin(self) -> int:
        return max([1, *(n for _label, n in self.histogram)])

    @property
    def blast_before(self) -> float | None:
        return _blast(self.before)

    @property
    def blast_after(self) -> float | None:
        return _blast(self.after)


def _blast(counts: dict[str, int]) -> float | None:
    total = sum(counts.get(c, 0) for c in CLASS_CODES)
    if not total:
        return None
    return 100.0 * sum(counts.get(c, 0) for c in BLAST_CLASSES) / total


def specimen_review(state, specimen_id: str) -> Review | None:
    specimen = _specimens(state).get(specimen_id)
    if specimen is None:
        return None
    reviews = _reviews(state)
    frames = reviews.frames(specimen_id)
    overrides = reviews.reviewed(specimen_id)
    groups = {code: Group(code) for code in CELL_OUTCOMES}
    before = dict.fromkeys(CELL_OUTCOMES, 0)
    after = dict.fromkeys(CELL_OUTCOMES, 0)
    bins = [0] * HISTOGRAM_BINS
    reviewed = flagged = flagged_reviewed = 0
    for result in frames:
        for index, c in enumerate(result.cells):
            review = overrides.get(cell_key(result.frame_id, index))
            current = review.class_ if review else c.class_
            confidence = c.confidence if c.confidence is not None else max(
                c.probabilities.values(), default=0.0)
            cell = Cell(result.frame_id, index, c.class_, current, confidence, c.needs_review,
                        list(c.review_reasons), review is not None, list(c.bbox))
            groups.setdefault(current, Group(current)).cells.append(cell)
            before[c.class_] = before.get(c.class_, 0) + 1
            after[current] = after.get(current, 0) + 1
            bins[min(HISTOGRAM_BINS - 1, int(confidence * HISTOGRAM_BINS))] += 1
            reviewed += review is not None
            flagged += c.needs_review
            flagged_reviewed += c.needs_review and review is not None
    for group in groups.values():
        group.cells.sort(key=lambda cell: (cell.confidence, cell.frame_id, cell.index))
    width = 1.0 / HISTOGRAM_BINS
    histogram = [(f"{i * width:.1f}–{(i + 1) * width:.1f}", n) for i, n in enumerate(bins)]
    return Review(specimen, state_of(specimen), frames, list(groups.values()),
                  sum(before.values()), reviewed, flagged, flagged_reviewed, before, after,
                  histogram, KEYS,
                  [f for f in frames if f.status == "done" and f.needs_review])


@dataclass
class RigRow:
    rig: str
    capture: object | None
    frames: list[tuple[float, FrameResult]]
    per_minute: int
    rejections: dict[str, int]


def rig_rows(state, recent: int = 300) -> list[RigRow]:
    now = time.time()
    captures = {c.id: c for c in state.reader.report().captures}
    by_rig: dict[str, list[tuple[float, FrameResult]]] = {}
    for stored_at, result in latest_results(state.client, recent):
        by_rig.setdefault(result.rig_id or "–", []).append((stored_at, result))
    rows = []
    for rig in sorted(set(captures) | set(by_rig)):
        frames = by_rig.get(rig, [])
        rejections: dict[str, int] = {}
        for _at, result in frames:
            if result.status == "rejected":
                rejections[result.reason or "other"] = rejections.get(result.reason or "other",
                                                                       0) + 1
        per_minute = sum(1 for at, _r in frames if now - at <= 60)
        rows.append(RigRow(rig, captures.get(rig), frames[:6], per_minute, rejections))
    return rows

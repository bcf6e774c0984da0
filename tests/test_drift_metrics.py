"""Drift metrics per rig: increments from a FrameResult, the rig label cap, the scrape text."""

from __future__ import annotations

import json
import math
import time

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.results import (
    FRAME_REVIEW_REASONS,
    AcquisitionInfo,
    CellResult,
    FrameResult,
    ScaleInfo,
)
from daemon.ops.metrics import RedisCollector
from daemon.store import counters, keys
from daemon.store.results import ResultStore, outcome_increments


def cell(class_: str, confidence: float | None) -> CellResult:
    return CellResult(bbox=[0, 0, 10, 10], area_px=80, class_=class_, probabilities={},
                      confidence=confidence)


def frame(
    frame_id: str = "f1",
    rig: str | None = "rig-1",
    status: str = "done",
    scale: ScaleInfo | None = None,
    acquisition: AcquisitionInfo | None = None,
    cells: list[CellResult] | None = None,
    reasons: list[str] | None = None,
) -> FrameResult:
    now = time.time()
    return FrameResult(
        frame_id=frame_id, specimen_id="S1", source=f"/in/{frame_id}.jpg", rig_id=rig,
        status=status, captured_at=now - 2, completed_at=now, cells=cells or [],
        scale=scale, acquisition=acquisition, needs_review=bool(reasons),
        review_reasons=reasons or [],
    )


def drifting_frame(frame_id: str = "f1", rig: str | None = "rig-1") -> FrameResult:
    return frame(
        frame_id, rig,
        scale=ScaleInfo(um_per_pixel=0.1, source="estimated", factor=1.4, reliable=True),
        acquisition=AcquisitionInfo(background_rgb=[230, 220, 235], brightness=224.0,
                                    hue_deg=90.0, chroma=6.0, gain=[1.0, 1.0, 1.0],
                                    stain_hue_deg=-158.0),
        cells=[cell("pre_b", 0.93), cell("unidentified", 0.55), cell("benign", None)],
        reasons=["unidentified_cells", "scale_uncertain", "unidentified_cells"],
    )


def as_dict(increments: list[counters.Increment]) -> dict[str, float]:
    """Increments of the same field summed, as HINCRBYFLOAT in the store script sums them."""
    total: dict[str, float] = {}
    for name, amount in increments:
        total[name] = total.get(name, 0.0) + amount
    return total


def field(name: str, part: str = "", **labels: str) -> str:
    return counters._field(name, labels, part)


def test_drift_increments_land_in_their_buckets_and_labels() -> None:
    inc = as_dict(outcome_increments(drifting_frame()))
    rig = {"rig": "rig-1"}
    # Scale: source counter, µm/px by source (0.1 is a bucket bound: le=0.1), factor.
    assert inc[field("leukoscope_frames_scale_source_total", rig="rig-1", source="estimated")] == 1
    um = "leukoscope_frame_scale_um_per_pixel"
    assert inc[field(um, "le=0.1", rig="rig-1", source="estimated")] == 1
    assert inc[field(um, "sum", rig="rig-1", source="estimated")] == pytest.approx(0.1)
    factor = "leukoscope_frame_scale_factor"
    assert inc[field(factor, "le=1.4142", **rig)] == 1  # 1.4 <= 2^(1/2)
    # Background: brightness 224 -> le=230; hue 90 -> le=90; a* = 0, b* = 6 (+128).
    assert inc[field("leukoscope_frame_background_brightness", "le=230.0", **rig)] == 1
    assert inc[field("leukoscope_frame_background_brightness", "sum", **rig)] == 224.0
    assert inc[field("leukoscope_frame_background_hue_degrees", "le=90.0", **rig)] == 1
    # Stain hue -158 is 202 degrees: le=210, and the sum stays positive (an angle on 0-360).
    assert inc[field("leukoscope_frame_stain_hue_degrees", "le=210.0", **rig)] == 1
    assert inc[field("leukoscope_frame_stain_hue_degrees", "sum", **rig)] == 202.0
    ab = "leukoscope_frame_background_chromaticity"
    assert inc[field(ab, "sum", rig="rig-1", axis="a")] == 128.0
    assert inc[field(ab, "le=128.0", rig="rig-1", axis="a")] == 1
    assert inc[field(ab, "sum", rig="rig-1", axis="b")] == 134.0
    assert inc[field(ab, "le=134.0", rig="rig-1", axis="b")] == 1
    # Cells: every class counted, confidence only where known (0.93 -> le=0.95, 0.55 -> 0.6).
    cls = "leukoscope_cells_classified_total"
    assert inc[field(cls, rig="rig-1", **{"class": "unidentified"})] == 1
    assert inc[field(cls, rig="rig-1", **{"class": "benign"})] == 1
    assert inc[field("leukoscope_cell_confidence", "count", **rig)] == 2
    assert inc[field("leukoscope_cell_confidence", "le=0.95", **rig)] == 1
    assert inc[field("leukoscope_cell_confidence", "le=0.6", **rig)] == 1
    assert inc[field("leukoscope_cell_confidence", "sum", **rig)] == pytest.approx(1.48)
    # Review: the frame once, each reason once.
    assert inc[field("leukoscope_frames_review_total", **rig)] == 1
    reasons = "leukoscope_frame_review_reasons_total"
    assert inc[field(reasons, rig="rig-1", reason="unidentified_cells")] == 1
    assert inc[field(reasons, rig="rig-1", reason="scale_uncertain")] == 1


def test_what_is_not_known_is_not_observed() -> None:
    assumed = frame(scale=ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0,
                                    reliable=False), reasons=["scale_unknown", "made_up"])
    names = {json.loads(k)[0] for k in as_dict(outcome_increments(assumed))}
    assert "leukoscope_frames_scale_source_total" in names
    assert "leukoscope_frame_scale_um_per_pixel" not in names  # unknown µm/px
    assert "leukoscope_frame_scale_factor" not in names  # nothing applied
    assert "leukoscope_frame_background_brightness" not in names
    inc = as_dict(outcome_increments(assumed))
    reasons = "leukoscope_frame_review_reasons_total"
    assert inc[field(reasons, rig="rig-1", reason="other")] == 1  # unknown code: bounded
    rejected = drifting_frame().model_copy(update={"status": "rejected", "reason": "blur"})
    names = {json.loads(k)[0] for k in as_dict(outcome_increments(rejected))}
    assert not {n for n in names if n.startswith("leukoscope_frame_scale")
                or n.startswith("leukoscope_frame_background")}
    nan = frame(acquisition=AcquisitionInfo(background_rgb=[0, 0, 0], brightness=math.nan,
                                            hue_deg=0.0, chroma=0.0, gain=[1, 1, 1]))
    names = {json.loads(k)[0] for k in as_dict(outcome_increments(nan))}
    assert "leukoscope_frame_background_brightness" not in names


def scrape(client: redis.Redis, **kwargs: int) -> dict[str, list]:
    registry = CollectorRegistry()
    registry.register(RedisCollector(client, **kwargs))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_collector_exposes_the_drift_families(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    store.store(drifting_frame("a"))
    store.store(drifting_frame("a"))  # stored once, counted once
    store.store(drifting_frame("b"))
    families = scrape(redis_client)
    counts = {
        "leukoscope_frame_scale_um_per_pixel": 2, "leukoscope_frame_scale_factor": 2,
        "leukoscope_frame_background_brightness": 2, "leukoscope_frame_background_hue_degrees": 2,
        "leukoscope_frame_background_chromaticity": 2,  # per axis
        "leukoscope_frame_stain_hue_degrees": 2,
        "leukoscope_cell_confidence": 4,  # two frames, two cells with a confidence each
    }
    for name, expected in counts.items():
        count = [s for s in families[name] if s.name == f"{name}_count"]
        assert count and all(s.labels["rig"] == "rig-1" for s in count), name
        assert {s.value for s in count} == {expected}, name
    brightness = {s.labels["le"]: s.value for s in families["leukoscope_frame_background_brightness"]
                  if s.name.endswith("_bucket")}
    assert brightness["220.0"] == 0 and brightness["230.0"] == 2 and brightness["+Inf"] == 2
    # Counters with known label values start at 0 for every value (series exist for rate()).
    classes = {s.labels["class"]: s.value for s in families["leukoscope_cells_classified"]}
    assert set(classes) == set(CELL_OUTCOMES) and classes["unidentified"] == 2
    assert classes["early_pre_b"] == 0
    reasons = {s.labels["reason"]: s.value
               for s in families["leukoscope_frame_review_reasons"]}
    assert set(reasons) == set(FRAME_REVIEW_REASONS)
    assert reasons["unidentified_cells"] == 2 and reasons["low_confidence"] == 0
    sources = {s.labels["source"]: s.value for s in families["leukoscope_frames_scale_source"]}
    assert sources == {"configured": 0, "file": 0, "estimated": 2, "assumed": 0}
    (review,) = families["leukoscope_frames_review"]
    assert review.labels == {"rig": "rig-1"} and review.value == 2


def test_the_33rd_rig_is_labelled_other(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    rigs = [f"rig-{i:02d}" for i in range(counters.MAX_RIGS + 3)]
    for i, rig in enumerate(rigs[: counters.MAX_RIGS]):
        store.store(drifting_frame(f"f{i}", rig))
    scrape(redis_client)  # the first 32 rigs are admitted
    for i, rig in enumerate(rigs[counters.MAX_RIGS:]):
        store.store(drifting_frame(f"late{i}", rig))
    store.store(drifting_frame("none", None))  # no rig: always its own (empty) label
    families = scrape(redis_client)
    processed = {s.labels["rig"]: s.value for s in families["leukoscope_frames_processed"]
                 if s.labels["outcome"] == "done"}
    assert set(processed) == {*rigs[: counters.MAX_RIGS], "other", ""}
    assert processed["other"] == 3 and processed["rig-00"] == 1
    brightness = {s.labels["rig"] for s in families["leukoscope_frame_background_brightness"]}
    assert "other" in brightness and not brightness & set(rigs[counters.MAX_RIGS:])
    # Folded in Redis too: no field names a rig beyond the cap, and nothing was lost.
    raw = redis_client.hgetall(keys.METRICS_KEY)
    assert not any(f'"rig":"{rig}"'.encode() in key for key in raw for rig in rigs[32:])
    assert redis_client.scard(keys.RIGS_KEY) == counters.MAX_RIGS
    again = scrape(redis_client)  # another API process: same set, same labels, same values
    assert again["leukoscope_frames_processed"] == families["leukoscope_frames_processed"]


def test_rig_labels_cache_admissions(redis_client: redis.Redis) -> None:
    labels = counters.RigLabels(redis_client, cap=2)
    calls = []
    admit = labels._admit
    labels._admit = lambda **kw: calls.append(kw) or admit(**kw)  # type: ignore[method-assign]
    assert labels.labels(["b", "a", ""]) == {"a": "a", "b": "b", "": ""}
    assert labels.label("c") == "other" and labels.label("a") == "a"
    assert labels.label("d") == "other"
    assert len(calls) == 1  # full after the first call: no more round trips
    other = counters.RigLabels(redis_client, cap=2)  # a second process shares the set
    assert other.labels(["c", "a"]) == {"c": "other", "a": "a"}

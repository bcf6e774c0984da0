"""Review flags: cells and frames that need a person, from the analyzer to the specimen report,
FHIR and HL7 (real ONNX Runtime with the tiny models, a real Redis)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from daemon.domain.manifest import ReviewSpec
from daemon.domain.results import AcquisitionInfo, CellResult, FrameResult, ScaleInfo
from daemon.imaging.synthetic import WHITE_CELL_RGB, smear_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.lis.fhir import diagnostic_report
from daemon.lis.hl7 import oru_r01, parse, to_er7
from daemon.store.results import ResultStore
from daemon.store.review import ReviewStore
from daemon.store.specimens import SpecimenStore


@pytest.fixture(scope="module")
def analyzer(tiny_models: tuple[Path, Path]) -> Analyzer:
    analyzer = Analyzer(Segmenter(tiny_models[0], "cpu"), Classifier(tiny_models[1], "cpu"))
    # The tiny classifier is never sure: no confidence threshold unless a test sets one.
    analyzer.review = ReviewSpec(cell_confidence=0.0, frame_confidence=0.0)
    return analyzer


def estimated(reliable: bool = True) -> ScaleInfo:
    return ScaleInfo(um_per_pixel=0.43, source="estimated", factor=1.0, reliable=reliable)


def test_a_cell_cut_by_the_field_edge_is_unidentified_and_left_out(analyzer: Analyzer):
    image, _ = smear_field(np.random.default_rng(4), white_cells=2)
    cv2.circle(image, (0, 112), 14, WHITE_CELL_RGB, -1)  # half a cell at the left edge
    (analysis,) = analyzer.analyze([image])
    described = analyzer.describe(analysis, estimated())
    edge = [c for c in described["cells"] if c.bbox[0] == 0]
    assert len(edge) == 1 and edge[0].class_ == "unidentified"
    assert edge[0].needs_review and edge[0].review_reasons == ["cut_off"]
    whole = [c for c in described["cells"] if c.bbox[0] > 0]
    assert len(whole) == 2 and all(c.class_ != "unidentified" for c in whole)
    # the frame's class comes from the two whole cells only
    alone = analyzer.analyze([smear_field(np.random.default_rng(4), white_cells=2)[0]])[0]
    np.testing.assert_allclose(analysis.frame_probabilities, alone.frame_probabilities,
                               atol=1e-5)


def test_frame_reasons_scale_acquisition_and_confidence(analyzer: Analyzer):
    image, _ = smear_field(np.random.default_rng(5), white_cells=2)
    (analysis,) = analyzer.analyze([image])
    assumed = ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0, reliable=False)
    assert analyzer.describe(analysis, assumed)["review_reasons"] == ["scale_unknown"]
    assert analyzer.describe(analysis, estimated(False))["review_reasons"] == ["scale_uncertain"]
    assert analyzer.describe(analysis, estimated())["needs_review"] is False
    # the tiny classifier is unsure of everything at a threshold of 0.99
    strict = analyzer.review.model_copy(update={"frame_confidence": 0.99})
    analyzer.review, saved = strict, analyzer.review
    try:
        assert "low_confidence" in analyzer.describe(analysis, estimated())["review_reasons"]
    finally:
        analyzer.review = saved


def test_acquisition_outside_the_validated_range_is_flagged(analyzer: Analyzer):
    from daemon.domain.manifest import AcquisitionSpec

    image, _ = smear_field(np.random.default_rng(6), white_cells=1)
    analyzer.acquisition, saved = AcquisitionSpec(background_rgb=(232, 226, 238)), None
    try:
        prepared, acquisition = analyzer.prepare((image * 0.55).astype(np.uint8), estimated())
        assert acquisition is not None and acquisition.brightness < 150
        assert acquisition.gain[0] > 1.5  # a dark frame is brightened back to the reference
        (analysis,) = analyzer.analyze([prepared])
        described = analyzer.describe(analysis, estimated(), acquisition)
        assert described["review_reasons"] == ["acquisition_out_of_range"]
        _, fine = analyzer.prepare(image, estimated())
        assert fine is not None and fine.brightness > 200 and not analyzer.describe(
            analysis, estimated(), fine)["needs_review"]
    finally:
        analyzer.acquisition = saved


def test_an_overexposed_frame_of_unknown_scale_says_so(analyzer: Analyzer):
    # scale_unknown alone sends the lab after the scale; the cause is the lamp.
    from daemon.domain.results import ScaleInfo

    image, _ = smear_field(np.random.default_rng(6), white_cells=1)
    (analysis,) = analyzer.analyze([image])
    bright = ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0, reliable=False,
                       overexposed=True)
    dim = bright.model_copy(update={"overexposed": False})
    assert analyzer.describe(analysis, bright)["review_reasons"][:2] == [
        "scale_unknown", "overexposed"]
    assert "overexposed" not in analyzer.describe(analysis, dim)["review_reasons"]
    # with a scale (the rig's estimate), a bright frame is analysed as any other
    known = bright.model_copy(update={"source": "estimated", "reliable": True})
    assert "overexposed" not in analyzer.describe(analysis, known)["review_reasons"]


def cell(class_: str, p: float, reasons: list[str]) -> CellResult:
    probs = {c: (1 - p) / 4 for c in ("benign", "early_pre_b", "pre_b", "pro_b", "unidentified")}
    probs[class_] = p
    return CellResult(bbox=[5, 5, 4, 4], area_px=16, class_=class_, probabilities=probs,
                      confidence=p, needs_review=bool(reasons), review_reasons=reasons)


def frame(frame_id: str, cells: list[CellResult], reasons: list[str]) -> FrameResult:
    now = time.time()
    return FrameResult(
        frame_id=frame_id, specimen_id="REV-1", source=f"/in/{frame_id}.png", rig_id="rig-1",
        status="done", captured_at=now - 1, completed_at=now, cells=cells,
        frame_class="pre_b", frame_probabilities={"pre_b": 0.9},
        scale=estimated(), needs_review=bool(reasons), review_reasons=reasons,
        acquisition=AcquisitionInfo(background_rgb=[250, 250, 250], brightness=250, hue_deg=0,
                                    chroma=0, gain=[1, 1, 1]))


def test_flags_reach_the_specimen_fhir_and_hl7(redis_client: redis.Redis, make_settings):
    store = ResultStore(redis_client, low_confidence=0.6)
    store.store(frame("a", [cell("pre_b", 0.95, []), cell("unidentified", 0.9, ["unidentified"])],
                      []))
    store.store(frame("b", [cell("pre_b", 0.45, ["low_confidence"])], ["scale_uncertain"]))
    specimens = SpecimenStore(redis_client)
    assert specimens.complete("REV-1", "api") == "completed"
    spec = specimens.get("REV-1")
    assert spec is not None and spec.status == "complete"
    assert spec.unidentified_cells == 1 and "unidentified" not in spec.cells
    assert spec.cells_classified == 2 and spec.cells["pre_b"] == 2  # the differential: 4 classes
    assert spec.percent["pre_b"] == 100.0 and spec.blast_share_percent == 100.0
    assert (spec.cells_needing_review, spec.frames_needing_review) == (2, 1)
    assert spec.needs_review and spec.result_status == "preliminary"  # never final unverified

    report = diagnostic_report(spec, "research use only")
    assert report["status"] == "preliminary"
    assert "2 cell(s) and 1 frame(s) are flagged for review" in report["conclusion"]
    values = {o["id"]: o.get("valueInteger") for o in report["contained"]
              if o["resourceType"] == "Observation"}
    assert values["cells-unidentified"] == 1
    assert (values["cells-needing-review"], values["frames-needing-review"]) == (2, 1)

    lis = make_settings().lis
    er7 = to_er7(oru_r01(spec, lis))
    parse(er7).validate()
    obr = next(s for s in er7.split("\r") if s.startswith("OBR"))
    assert obr.split("|")[25] == "P"  # OBR-25 result status: preliminary
    obx = {f[3].split("^")[0]: f[5] for f in
           (seg.split("|") for seg in er7.split("\r") if seg.startswith("OBX"))}
    assert obx["cells-unidentified"] == "1" and obx["cells-needing-review"] == "2"
    assert obx["frames-needing-review"] == "1"


def test_a_specimen_with_nothing_to_review_becomes_final(redis_client: redis.Redis):
    store = ResultStore(redis_client, low_confidence=0.6)
    store.store(frame("c", [cell("benign", 0.97, [])], []))
    specimens = SpecimenStore(redis_client)
    assert specimens.get("REV-1").result_status == "preliminary"  # open
    specimens.complete("REV-1", "api")
    assert specimens.get("REV-1").result_status == "preliminary"  # until verified (issue 13)
    ReviewStore(redis_client).sign("REV-1", "alice", "reviewer", 1, queue_for_mllp=False)
    spec = specimens.get("REV-1")
    assert not spec.needs_review and spec.result_status == "final"
    assert diagnostic_report(spec, "x")["status"] == "final"

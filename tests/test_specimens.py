"""Specimen aggregation, lifecycle, cursor polling and the FHIR/HL7 reports, on a real Redis."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from daemon.api.app import create_app
from daemon.domain.results import CellResult, FrameResult, ModelRef
from daemon.lis.hl7 import parse
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from daemon.store.specimens import SpecimenStore
from tests.conftest import serve_http

STATEMENT = "For research use only. Not for use in diagnostic procedures."
MODELS = {
    "segmenter": ModelRef(name="seg", version="1.2.0", sha256="a" * 64),
    "classifier": ModelRef(name="cls", version="2.0.1", sha256="b" * 64),
}


def cell(class_: str, p: float) -> CellResult:
    rest = (1 - p) / 3
    probs = {c: rest for c in ("benign", "early_pre_b", "pre_b", "pro_b")}
    probs[class_] = p
    return CellResult(bbox=[0, 0, 4, 4], area_px=16, class_=class_, probabilities=probs)


def result(frame_id: str, specimen: str = "S1", status: str = "done", **kw) -> FrameResult:
    now = time.time()
    fields = {
        "frame_id": frame_id,
        "specimen_id": specimen,
        "source": f"/inbox/{specimen}/{frame_id}.jpg",
        "rig_id": "rig-1",
        "status": status,
        "captured_at": kw.pop("captured_at", now - 1),
        "completed_at": now,
        "models": MODELS if status == "done" else {},
    }
    fields.update(kw)
    return FrameResult(**fields)


def fill(store: ResultStore) -> None:
    store.store(result("f1", cells=[cell("benign", 0.9), cell("pre_b", 0.5)], captured_at=100.0))
    store.store(result("f2", cells=[cell("pro_b", 0.95), cell("benign", 0.8)], captured_at=50.0))
    store.store(result("f3", status="rejected", reason="blurry", error="too blurry"))
    store.store(result("f4", status="rejected", reason="blurry", error="too blurry"))
    store.store(result("f5", status="failed", error="boom"))


def test_aggregation_counts_each_result_once(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client, low_confidence=0.6)
    fill(store)
    # The same frames stored again (a worker died after storing, before acking): no change.
    fill(store)
    store.store(result("loose", specimen="unassigned", cells=[cell("benign", 0.9)]))
    spec = SpecimenStore(redis_client, STATEMENT).get("S1")
    assert spec is not None and SpecimenStore(redis_client).get("unassigned") is None
    assert spec.status == "open" and spec.result_status == "preliminary"
    assert (spec.frames_done, spec.frames_rejected, spec.frames_failed) == (2, 2, 1)
    assert spec.cells == {"benign": 2, "early_pre_b": 0, "pre_b": 1, "pro_b": 1}
    assert spec.cells_classified == 4
    assert spec.percent == {"benign": 50.0, "early_pre_b": 0.0, "pre_b": 25.0, "pro_b": 25.0}
    assert spec.blast_share_percent == 50.0
    assert spec.mean_confidence == pytest.approx((0.9 + 0.5 + 0.95 + 0.8) / 4, abs=1e-4)
    assert spec.low_confidence_cells == 1 and spec.low_confidence_threshold == 0.6
    assert spec.rejections == {"blurry": 2}
    assert {(m.kind, m.version, m.sha256) for m in spec.models} == {
        ("segmenter", "1.2.0", "a" * 64),
        ("classifier", "2.0.1", "b" * 64),
    }
    assert spec.first_frame_at == 50.0 and spec.last_frame_at >= 100.0
    assert spec.statement == STATEMENT


def test_completion_once_and_late_frames_flagged_not_folded(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    specimens = SpecimenStore(redis_client)
    store.store(result("f1", cells=[cell("benign", 0.9)]))
    assert specimens.complete("S1", "api") == "completed"
    assert specimens.complete("S1", "api") == "already"
    assert specimens.complete("nope", "api") == "missing"
    assert store.store(result("late1", cells=[cell("pro_b", 0.9)]))  # the result is kept
    spec = specimens.get("S1")
    # final only once a reviewer verifies it (issue 13)
    assert spec.status == "complete" and spec.result_status == "preliminary"
    assert spec.completed_by == "api" and spec.control_id.startswith("LKS")
    assert spec.cells_classified == 1 and spec.late_frames == 1
    assert spec.late_frame_ids == ["late1"]
    assert store.get("late1") is not None


def test_requested_completion_waits_for_frames_in_flight(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    specimens = SpecimenStore(redis_client)
    queue = FrameQueue(redis_client)
    store.store(result("f1", cells=[cell("benign", 0.9)]))
    queue.enqueue("f2", "S1", "/inbox/S1/f2.jpg", "rig-1", b"x")
    assert specimens.request_complete("S1", "api") == ("deferred", 1)
    assert specimens.tick(None, 300) == []
    store.store(result("f2", cells=[cell("pre_b", 0.9)]))
    queue.forget("f2")
    assert specimens.tick(None, 300) == ["S1"]
    spec = specimens.get("S1")
    assert spec.status == "complete" and spec.cells_classified == 2 and spec.late_frames == 0


def test_idle_specimens_complete(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    specimens = SpecimenStore(redis_client)
    store.store(result("f1", specimen="IDLE", cells=[cell("benign", 0.9)]))
    assert specimens.tick(60, 300) == []
    time.sleep(0.3)
    assert specimens.tick(0.2, 300) == ["IDLE"]
    assert specimens.get("IDLE").completed_by == "idle"


@pytest.fixture
def api(make_settings, redis_client: redis.Redis):
    settings = make_settings()
    with serve_http(create_app(settings, redis_client)) as client:
        yield client


def test_specimen_api_polls_completed_once_and_reports_validate(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    store = ResultStore(redis_client)
    for name in ("A", "B", "C"):
        store.store(result(f"{name}-1", specimen=name, cells=[cell("pre_b", 0.9)]))
        store.store(result(f"{name}-2", specimen=name, cells=[cell("benign", 0.7)]))
    page = api.get("/specimens").json()
    assert [s["specimen_id"] for s in page["items"]] == ["A", "B", "C"]
    assert api.get("/specimens?status=complete").json()["items"] == []
    cursor = api.get("/specimens?status=complete").json()["next"]
    assert api.post("/specimens/B/complete").status_code == 200
    assert api.post("/specimens/B/complete").json()["outcome"] == "already"
    seen = []
    body = api.get(f"/specimens?status=complete&after={cursor}").json()
    seen += [s["specimen_id"] for s in body["items"]]
    cursor = body["next"]
    api.post("/specimens/A/complete")
    body = api.get(f"/specimens?status=complete&after={cursor}&limit=1").json()
    seen += [s["specimen_id"] for s in body["items"]]
    assert api.get(f"/specimens?status=complete&after={body['next']}").json()["items"] == []
    assert seen == ["B", "A"]
    assert [s["specimen_id"] for s in api.get("/specimens?status=open").json()["items"]] == ["C"]

    spec = api.get("/specimens/B").json()
    assert spec["status"] == "complete" and spec["blast_share_percent"] == 50.0

    assert api.post("/specimens/B/verify").json()["outcome"] == "verified"  # issue 13
    spec = api.get("/specimens/B").json()  # the final report has its own control id
    # FHIR R4 DiagnosticReport, validated with fhir.resources' R4B models.
    response = api.get("/specimens/B/fhir")
    assert response.headers["content-type"].startswith("application/fhir+json")
    report = DiagnosticReport.model_validate(response.json())
    assert report.status == "final" and report.conclusion.startswith(STATEMENT)
    contained = {r.id: r for r in report.contained}
    blast = contained["all-lymphoid-share"]  # not LOINC 26446-5: not blasts/100 leukocytes
    assert blast.code.coding[0].system == "urn:leukoscope:codes"
    assert blast.code.coding[0].code == "all-lymphoid-share"
    assert float(blast.valueQuantity.value) == 50.0 and blast.valueQuantity.unit == "%"
    assert contained["count-pre-b"].valueInteger == 1
    assert contained["cells-identified"].valueInteger == 2
    devices = [r for r in report.contained if r.__resource_type__ == "Device"]
    assert {d.version[0].value for d in devices} == {"1.2.0", "2.0.1"}
    assert {d.identifier[0].value for d in devices} == {"a" * 64, "b" * 64}
    referenced = {ref.reference for ref in report.result}
    # ALL share, identified count and share, unidentified and review counts, count + share
    # per class; a 1:1 tie between two classes: no predominant class
    assert contained.get("predominant-class") is None
    assert "#all-lymphoid-share" in referenced and len(referenced) == 3 + 3 + 2 * 4
    assert contained["cells-unidentified"].valueInteger == 0
    assert contained["frames-needing-review"].valueInteger == 0
    assert blast.device.reference.startswith("#model-classifier")
    assert report.subject is None and not report.basedOn  # unordered: no patient invented
    open_report = DiagnosticReport.model_validate(api.get("/specimens/C/fhir").json())
    assert open_report.status == "preliminary"

    # HL7 v2.5.1 ORU^R01, parsed and validated strictly with hl7apy.
    response = api.get("/specimens/B/hl7")
    assert response.headers["content-type"].startswith("application/hl7-v2")
    message = parse(response.text)
    assert message.validate()
    assert message.msh.msh_9.value == "ORU^R01^ORU_R01" and message.msh.msh_12.value == "2.5.1"
    assert message.msh.msh_10.value == spec["control_id"]
    segments = response.text.split("\r")
    assert not any(s.startswith("PID") for s in segments)  # unordered: no pseudo-patient
    obr = next(s for s in segments if s.startswith("OBR")).split("|")
    assert obr[3] == "B^LEUKOSCOPE" and obr[2] == ""  # filler = specimen id; no placer
    obx = [s.split("|") for s in segments if s.startswith("OBX")]
    assert obx[0][2] == "NM" and obx[0][3].startswith("all-lymphoid-share^")
    assert obx[0][3].endswith("^99LKS") and obx[0][5] == "50"
    assert obx[0][6].startswith("%^") and all(f[11] == "F" for f in obx)
    assert "cls:2.0.1^classifier^" + "b" * 64 in obx[0][18]
    spm = next(s for s in segments if s.startswith("SPM")).split("|")
    assert spm[2] == "^B&LEUKOSCOPE"
    nte = next(s for s in segments if s.startswith("NTE"))
    assert STATEMENT in nte
    open_obx = [
        s.split("|") for s in api.get("/specimens/C/hl7").text.split("\r") if s.startswith("OBX")
    ]
    assert all(f[11] == "P" for f in open_obx)


def test_specimen_api_input_errors(api: httpx.Client) -> None:
    assert api.get("/specimens/nope").status_code == 404
    assert "nope" in api.get("/specimens/nope").json()["detail"]
    assert api.get("/specimens/bad%20id").status_code == 400
    assert api.get("/specimens/" + "x" * 65).status_code == 400
    assert api.get("/specimens?after=garbage").status_code == 400
    assert api.get("/specimens?limit=0").status_code == 422
    assert api.get("/specimens?limit=100000").status_code == 422
    assert api.get("/specimens?status=weird").status_code == 422
    assert api.post("/specimens/nope/complete").status_code == 404


def test_unassigned_frames_are_listed_counted_and_never_reported(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    """Issue 14: a frame with no specimen (straight in the inbox, misplaced) is analysed and
    held where people see it (GET /specimens/unassigned, /status), never sent to the LIS."""
    store = ResultStore(redis_client)
    store.store(result("loose", specimen="unassigned", cells=[cell("pre_b", 0.9)]))
    store.store(result("S1-f1", cells=[cell("benign", 0.9)]))
    store.store(result("nested", specimen="unassigned", status="rejected",
                       reason="bad_location", error="file is nested too deep (a/b/)"))
    store.store(result("loose", specimen="unassigned", cells=[cell("pre_b", 0.9)]))  # again

    first = api.get("/specimens/unassigned?limit=1").json()
    assert [i["frame_id"] for i in first["items"]] == ["loose"] and first["total"] == 2
    assert first["items"][0]["cells"][0]["class"] == "pre_b"  # the API's field names
    rest = api.get(f"/specimens/unassigned?after={first['next']}").json()
    assert [(i["frame_id"], i["reason"]) for i in rest["items"]] == [("nested", "bad_location")]
    assert api.get(f"/specimens/unassigned?after={rest['next']}").json()["items"] == []
    assert api.get("/specimens/unassigned?after=garbage").status_code == 400
    assert api.get("/status").json()["unassigned_frames"] == 2

    # Not a specimen: no listing entry, no report, no completion; the answer says why.
    assert [s["specimen_id"] for s in api.get("/specimens").json()["items"]] == ["S1"]
    for answer in (api.get("/specimens/unassigned/fhir"), api.get("/specimens/unassigned/hl7"),
                   api.post("/specimens/unassigned/complete")):
        assert answer.status_code == 404
        assert "GET /specimens/unassigned" in answer.json()["detail"]

    # Trimmed with the results (results.retention_days).
    from daemon.ops.housekeeping import trim_results

    assert trim_results(redis_client, time.time() + 1) == 3
    assert api.get("/specimens/unassigned").json() == {"items": [], "next": "0-0", "total": 0}

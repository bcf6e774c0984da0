"""Examples for ``/openapi.json``: one per success and error answer of every route.

The JSON examples are built from the same pydantic models the routes answer with (and the
reports by the same code that renders them), so an example cannot drift from the schema it
illustrates; ``tests/test_api_docs.py`` fails on any route answer without one.
"""

from __future__ import annotations

from daemon.domain.ids import NAME_RULE
from daemon.domain.orders import Order, OrderEvent, Patient, PatientIdentifier
from daemon.domain.results import CellResult, FrameResult, ModelRef, ResultPage, ScaleInfo
from daemon.domain.specimens import Specimen, SpecimenModel, SpecimenPage
from daemon.ops.status import Backlog, Readiness, StatusReport, WorkerStatus
from daemon.settings import LisSettings
from daemon.store.audit import AuditEntry, AuditPage

AT = 1718000000.0
CURSOR = "1718000004000-0"
STATEMENT = "For research use only. Not for use in diagnostic procedures."
MODELS = {
    "segmenter": ModelRef(name="wbc-seg", version="1.2.0", sha256="5e" * 32),
    "classifier": ModelRef(name="all-subtype", version="2.0.1", sha256="c1" * 32),
}


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True)


def _frame(specimen_id: str, frame_id: str, source: str, archived: str) -> FrameResult:
    cell = CellResult(
        bbox=[412, 388, 64, 61], area_px=3012, class_="pre_b", confidence=0.91,
        probabilities={"benign": 0.04, "early_pre_b": 0.03, "pre_b": 0.91, "pro_b": 0.02})
    return FrameResult(
        frame_id=frame_id, specimen_id=specimen_id, source=source, archived_path=archived,
        rig_id="rig-1", status="done", captured_at=AT, completed_at=AT + 1.2, cells=[cell],
        models=MODELS, timings_ms={"segment": 41.0, "classify": 12.5}, worker="node-1:4242",
        um_per_pixel=0.1, scale=ScaleInfo(um_per_pixel=0.1, source="configured", factor=1.0))


FRAME = dump(_frame("ACC-1001", "3f9a1c2b7d4e5f60", "/srv/inbox/ACC-1001/field-001.png",
                    "/var/lib/leukoscope/archive/ACC-1001/field-001.png"))
UNASSIGNED_FRAME = dump(_frame("unassigned", "8b0e61d2a9c47f13", "/srv/inbox/field-007.png",
                               "/var/lib/leukoscope/archive/unassigned/field-007.png"))
RESULT_PAGE = dump(ResultPage(items=[FrameResult.model_validate(FRAME)], next=CURSOR))

ORDER_MODEL = Order(
    placer_order_number="PL-1001", placer_authority="urn:oid:1.2.840.99999.1",
    filler_order_number="ACC-1001", specimen_id="ACC-1001", source="fhir",
    patient=Patient(identifiers=[PatientIdentifier(value="MRN-77", type="MR",
                                                   authority="urn:oid:1.2.840.99999.2")],
                    family="Doe", given="Jane", birth_date="1980-01-02", sex="F"),
    service_code="wbc-all-subtype-panel", service_system="urn:leukoscope:codes",
    service_request_id="sr-1001", received_at=AT - 600)
ORDER = dump(ORDER_MODEL)
ORDER_PAGE = {"items": [dump(OrderEvent(cursor=CURSOR, order=ORDER_MODEL))], "next": CURSOR}

SPECIMEN_MODEL = Specimen(
    specimen_id="ACC-1001", status="complete", result_status="preliminary",
    opened_at=AT, completed_at=AT + 300, completed_by="api", control_id="LKS42",
    first_frame_at=AT, last_frame_at=AT + 240, last_activity_at=AT + 241, frames_done=12,
    frames_rejected=1, cells_classified=200,
    cells={"benign": 150, "early_pre_b": 10, "pre_b": 30, "pro_b": 10},
    percent={"benign": 75.0, "early_pre_b": 5.0, "pre_b": 15.0, "pro_b": 5.0},
    blast_share_percent=25.0, predominant_class="benign", predominant_share_percent=75.0,
    unidentified_cells=4, identified_share_percent=98.04, needs_review=True,
    cells_needing_review=6, frames_needing_review=2, mean_confidence=0.8731,
    low_confidence_cells=6, low_confidence_threshold=0.6, rejections={"out_of_focus": 1},
    models=[SpecimenModel(kind=k, **m.model_dump()) for k, m in MODELS.items()],
    ordered=True, order=ORDER_MODEL, statement=STATEMENT)
SPECIMEN = dump(SPECIMEN_MODEL)
SPECIMEN_PAGE = dump(SpecimenPage(items=[SPECIMEN_MODEL], next=CURSOR))
UNASSIGNED_PAGE = {"items": [UNASSIGNED_FRAME], "next": CURSOR, "total": 1}


def fhir_report() -> dict:
    from daemon.lis.fhir import diagnostic_report

    return diagnostic_report(SPECIMEN_MODEL, STATEMENT)


def hl7_report() -> str:
    from daemon.lis.hl7 import oru_r01, to_er7

    return to_er7(oru_r01(SPECIMEN_MODEL, LisSettings(statement=STATEMENT), now=AT + 300))


AUDIT_PAGE = dump(AuditPage(items=[AuditEntry(
    cursor=CURSOR, time=AT, key="lis", role="read", action="specimen.fhir",
    specimen_id="ACC-1001", client="10.0.0.7")], next=CURSOR))
STATUS = dump(StatusReport(
    version="1.0.0", uptime_seconds=86400.0, redis="up", results_stored=5120,
    unassigned_frames=1, backlog=Backlog(length=3, pending=1, max_backlog=10000), captures=[],
    workers=[WorkerStatus(id="node-1:4242", host="node-1", pid=4242, provider="cuda",
                          last_heartbeat=AT, heartbeat_age_seconds=0.4, alive=True,
                          frames_done=5120, models=MODELS)],
    models=list(MODELS.values())))
READY = dump(Readiness(ready=True, reasons=[]))
NOT_READY = dump(Readiness(ready=False, reasons=[
    "redis unreachable: Error 111 connecting to localhost:6379. Connection refused."]))
METRICS = ('# HELP leukoscope_frames_processed_total Frames analysed, by outcome\n'
           '# TYPE leukoscope_frames_processed_total counter\n'
           'leukoscope_frames_processed_total{outcome="done",rig="rig-1"} 5120.0\n')
# FastAPI's own answer to a parameter or body that fails validation.
VALIDATION_ERROR = {"detail": [{"type": "less_than_equal", "loc": ["query", "limit"],
                                "msg": "Input should be less than or equal to 1000",
                                "input": "5000", "ctx": {"le": 1000}}]}


def ok(example: object, description: str = "Successful Response",
       media_type: str = "application/json") -> dict:
    """A success answer's OpenAPI entry with its example (FastAPI adds the schema)."""
    return {"description": description, "content": {media_type: {"example": example}}}


def error(description: str, detail: str) -> dict:
    """An error answer's OpenAPI entry: ``{"detail": ...}`` with an example."""
    return {"description": description,
            "content": {"application/json": {"example": {"detail": detail}}}}


def image(media_type: str, description: str) -> dict:
    """A binary answer (JPEG/PNG): its schema says so; bytes have no useful JSON example."""
    return {"description": description,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


BAD_CURSOR = error("a cursor this API did not hand out",
                   "malformed cursor 'x': expected the 'next' value of a page")
BAD_FRAME_ID = error("malformed frame id", "frame_id must be 1-64 of [A-Za-z0-9_-]")
BAD_SPECIMEN_ID = error("malformed specimen id", f"specimen_id must be {NAME_RULE}")
NO_FRAME = error("no such frame", "no result for frame 3f9a1c2b7d4e5f60")
NO_SPECIMEN = error("no such specimen (or `unassigned`, which is never reported)",
                    "no frames recorded for specimen ACC-1001")

"""Specimen, report and audit routes (registered by ``daemon.api.app.create_app``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from daemon.api import examples as ex
from daemon.api.auth import Caller, client_address, require
from daemon.api.paging import Page
from daemon.domain.ids import NAME_RULE, UNASSIGNED, valid_specimen_id
from daemon.domain.pages import Paged
from daemon.domain.results import FrameResult
from daemon.domain.specimens import Specimen, SpecimenPage
from daemon.settings import LisSettings, Settings
from daemon.store import audit, outbox
from daemon.store.specimens import SpecimenStore

router = APIRouter()


def get_specimens(request: Request) -> SpecimenStore:
    state = request.app.state
    store = getattr(state, "specimens", None)
    if store is None:
        settings: Settings = state.settings
        store = SpecimenStore(
            state.client, settings.lis.statement, mllp_enabled=settings.lis.mllp is not None
        )
        state.specimens = store
    return store


Specimens = Annotated[SpecimenStore, Depends(get_specimens)]


UNREPORTED = (f"{UNASSIGNED!r} is not a specimen: frames without one are analysed and "
              "listed at GET /specimens/unassigned, never reported or completed; move the "
              "original into <inbox>/<specimen_id>/ to report it")


class UnassignedPage(Paged, BaseModel):
    items: list[FrameResult]
    next: str = Field(description="cursor for the next call's `after`")
    total: int = Field(description="results of frames without a specimen held now (the same "
                       "as /status unassigned_frames)")


def _check_id(specimen_id: str) -> None:
    if not valid_specimen_id(specimen_id):
        raise HTTPException(status_code=400, detail=f"specimen_id must be {NAME_RULE}")
    if specimen_id == UNASSIGNED:
        raise HTTPException(status_code=404, detail=UNREPORTED)


def _specimen(store: SpecimenStore, specimen_id: str) -> Specimen:
    _check_id(specimen_id)
    specimen = store.get(specimen_id)
    if specimen is None:
        raise HTTPException(
            status_code=404, detail=f"no frames recorded for specimen {specimen_id}"
        )
    return specimen


@router.get("/specimens", tags=["specimens"], response_model=SpecimenPage,
            responses={200: ex.ok(ex.SPECIMEN_PAGE), 400: ex.BAD_CURSOR})
def list_specimens(
    store: Specimens,
    _caller: Annotated[Caller, Depends(require("read", "specimens.list"))],
    page: Page,
    status: Annotated[
        Literal["open", "complete"] | None,
        Query(description="complete: each completed specimen once, in completion order"),
    ] = None,
    ordered: Annotated[
        bool | None,
        Query(description="false: only unordered specimens (no LIS order names them); true: "
              "only ordered ones"),
    ] = None,
) -> SpecimenPage:
    # Filters apply before the limit; a page may be short (see SpecimenStore.page).
    return SpecimenPage.of(store.page(status, page.after, page.limit, ordered))  # BadCursor: 400


@router.get(
    "/specimens/unassigned",
    tags=["specimens"],
    response_model=UnassignedPage,
    response_model_by_alias=True,
    summary="Frames without a specimen (held: analysed, never reported)",
    description="Results of frames that came with no specimen: dropped straight into the "
    "inbox, or misplaced (a folder name that is not a specimen id, a file nested too deep; "
    "those are `rejected` with reason `bad_location`). No report or order can name them, so "
    "they are never sent to the LIS; this list (and /status `unassigned_frames`) is where "
    "they show. To report one, move its original (`archived_path`) into "
    "`<inbox>/<specimen_id>/`: it is analysed again as a frame of that specimen. Oldest "
    "first, cursor paged like /results; trimmed with the results (results.retention_days).",
    responses={200: ex.ok(ex.UNASSIGNED_PAGE), 400: ex.BAD_CURSOR},
)
def list_unassigned(
    request: Request,
    _caller: Annotated[Caller, Depends(require("read", "specimens.unassigned"))],
    page: Page,
) -> UnassignedPage:
    store = request.app.state.store
    return UnassignedPage.of(store.unassigned_page(page.after, page.limit),  # BadCursor: 400
                             total=store.unassigned_count())


@router.get(
    "/specimens/{specimen_id}",
    tags=["specimens"],
    response_model=Specimen,
    responses={200: ex.ok(ex.SPECIMEN), 400: ex.BAD_SPECIMEN_ID, 404: ex.NO_SPECIMEN},
)
def get_specimen(
    store: Specimens,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("read", "specimen.read"))],
) -> Specimen:
    return _specimen(store, specimen_id)


def _fhir(specimen: Specimen, lis: LisSettings) -> str:
    from daemon.lis.fhir import diagnostic_report

    return json.dumps(diagnostic_report(specimen, lis.statement))


def _hl7(specimen: Specimen, lis: LisSettings) -> str:
    from daemon.lis.hl7 import oru_r01, to_er7

    return to_er7(oru_r01(specimen, lis))


def _report_route(name: str, media_type: str, render: Callable[[Specimen, LisSettings], str],
                  example: object) -> None:
    """``GET /specimens/{id}/<name>``: the specimen's report rendered for the LIS."""

    def report(request: Request, store: Specimens, specimen_id: str) -> Response:
        specimen = _specimen(store, specimen_id)
        return Response(render(specimen, request.app.state.settings.lis), media_type=media_type)

    router.add_api_route(
        f"/specimens/{{specimen_id}}/{name}",
        report,
        methods=["GET"],
        dependencies=[Depends(require("read", f"specimen.{name}"))],
        name=f"specimen_{name}",  # keeps the OpenAPI operationId of the former functions
        tags=["specimens"],
        response_class=Response,
        responses={200: ex.ok(example, "the report", media_type.split(";")[0]),
                   400: ex.BAD_SPECIMEN_ID, 404: ex.NO_SPECIMEN},
    )


_report_route("fhir", "application/fhir+json", _fhir, ex.fhir_report())
_report_route("hl7", "application/hl7-v2; charset=utf-8", _hl7, ex.hl7_report())


@router.post(
    "/specimens/{specimen_id}/complete",
    tags=["specimens"],
    responses={
        200: ex.ok({"outcome": "completed", "frames_in_flight": 0, "specimen": ex.SPECIMEN},
                   "complete (outcome `completed`, or `already` if it was)"),
        202: ex.ok({"outcome": "deferred", "frames_in_flight": 2,
                    "specimen": {**ex.SPECIMEN, "status": "open", "completed_at": None}},
                   "frames still in flight: completes once they are stored"),
        400: ex.BAD_SPECIMEN_ID,
        404: ex.NO_SPECIMEN,
    },
)
def complete_specimen(
    store: Specimens,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("ingest", "specimen.complete"))],
) -> JSONResponse:
    _check_id(specimen_id)
    outcome, in_flight = store.request_complete(specimen_id, "api")
    if outcome == "missing":
        raise HTTPException(
            status_code=404, detail=f"no frames recorded for specimen {specimen_id}"
        )
    specimen = store.get(specimen_id)
    body = {"outcome": outcome, "frames_in_flight": in_flight, "specimen": specimen.model_dump()}
    return JSONResponse(status_code=202 if outcome == "deferred" else 200, content=body)


@router.get("/audit", tags=["ops"], response_model=audit.AuditPage,
            responses={200: ex.ok(ex.AUDIT_PAGE), 400: ex.BAD_CURSOR})
def audit_log(
    request: Request,
    caller: Annotated[Caller, Depends(require("admin"))],
    page: Page,
) -> audit.AuditPage:
    client = request.app.state.client
    entries = audit.page(client, page.after, page.limit)  # BadCursor: 400 (daemon.api.app)
    audit.record(
        client,
        caller.name,
        caller.role,
        "audit.read",
        detail=page.after,
        address=client_address(request),
    )
    return audit.AuditPage.of(entries)


@router.post(
    "/lis/outbox/{specimen_id}/retry",
    tags=["ops"],
    responses={
        200: ex.ok({"specimen_id": "ACC-1001", "outcome": "queued"},
                   "the parked message is back in the outbox, due now, attempts at 0"),
        400: ex.BAD_SPECIMEN_ID,
        404: ex.ok({"detail": "specimen ACC-1001 has no parked LIS message"},
                   "nothing parked for this specimen"),
    },
)
def retry_parked_message(
    request: Request,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("admin", "lis.outbox.retry"))],
) -> dict[str, str]:
    """Send a parked (dead-letter) LIS message again, once its cause is fixed (see
    `/status` → `lis.parked` for the reason)."""
    _check_id(specimen_id)
    if not outbox.retry(request.app.state.client, specimen_id, time.time()):
        raise HTTPException(status_code=404,
                            detail=f"specimen {specimen_id} has no parked LIS message")
    return {"specimen_id": specimen_id, "outcome": "queued"}

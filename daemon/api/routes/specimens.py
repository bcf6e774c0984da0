"""Specimen, report and audit routes (registered by ``daemon.api.app.create_app``)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from daemon.api.auth import Caller, client_address, require
from daemon.domain.ids import NAME_RULE, valid_specimen_id
from daemon.domain.specimens import Specimen, SpecimenPage
from daemon.settings import Settings
from daemon.store import audit
from daemon.store.paging import BadCursor
from daemon.store.specimens import SpecimenStore

MAX_PAGE = 1000

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


def _check_id(specimen_id: str) -> None:
    if not valid_specimen_id(specimen_id):
        raise HTTPException(status_code=400, detail=f"specimen_id must be {NAME_RULE}")


def _specimen(store: SpecimenStore, specimen_id: str) -> Specimen:
    _check_id(specimen_id)
    specimen = store.get(specimen_id)
    if specimen is None:
        raise HTTPException(
            status_code=404, detail=f"no frames recorded for specimen {specimen_id}"
        )
    return specimen


@router.get("/specimens", tags=["specimens"], response_model=SpecimenPage)
def list_specimens(
    store: Specimens,
    _caller: Annotated[Caller, Depends(require("read", "specimens.list"))],
    status: Annotated[
        Literal["open", "complete"] | None,
        Query(description="complete: each completed specimen once, in completion order"),
    ] = None,
    after: Annotated[
        str | None, Query(max_length=48, description="the `next` cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> SpecimenPage:
    try:
        items, cursor = store.page(status, after, limit)
    except BadCursor as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return SpecimenPage(items=items, next=cursor)


@router.get(
    "/specimens/{specimen_id}",
    tags=["specimens"],
    response_model=Specimen,
    responses={404: {"description": "no such specimen"}},
)
def get_specimen(
    store: Specimens,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("read", "specimen.read"))],
) -> Specimen:
    return _specimen(store, specimen_id)


@router.get(
    "/specimens/{specimen_id}/fhir",
    tags=["specimens"],
    responses={200: {"content": {"application/fhir+json": {}}}},
)
def specimen_fhir(
    request: Request,
    store: Specimens,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("read", "specimen.fhir"))],
) -> Response:
    from daemon.lis.fhir import diagnostic_report

    specimen = _specimen(store, specimen_id)
    report = diagnostic_report(specimen, request.app.state.settings.lis.statement)
    return Response(json.dumps(report), media_type="application/fhir+json")


@router.get(
    "/specimens/{specimen_id}/hl7",
    tags=["specimens"],
    responses={200: {"content": {"application/hl7-v2": {}}}},
)
def specimen_hl7(
    request: Request,
    store: Specimens,
    specimen_id: str,
    _caller: Annotated[Caller, Depends(require("read", "specimen.hl7"))],
) -> Response:
    from daemon.lis.hl7 import oru_r01, to_er7

    specimen = _specimen(store, specimen_id)
    er7 = to_er7(oru_r01(specimen, request.app.state.settings.lis))
    return Response(er7, media_type="application/hl7-v2; charset=utf-8")


@router.post(
    "/specimens/{specimen_id}/complete",
    tags=["specimens"],
    responses={
        200: {"description": "complete (or already was)"},
        202: {"description": "frames still in flight: completes once they are stored"},
        404: {"description": "no frames recorded for the specimen"},
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


@router.get("/audit", tags=["ops"], response_model=audit.AuditPage)
def audit_log(
    request: Request,
    caller: Annotated[Caller, Depends(require("admin"))],
    after: Annotated[str | None, Query(max_length=48)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> audit.AuditPage:
    client = request.app.state.client
    try:
        items, cursor = audit.page(client, after, limit)
    except BadCursor as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    audit.record(
        client,
        caller.name,
        caller.role,
        "audit.read",
        detail=after,
        address=client_address(request),
    )
    return audit.AuditPage(items=items, next=cursor)

"""Specimen, report and audit routes (registered by ``daemon.api.app.create_app``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from daemon.api.auth import Caller, client_address, require
from daemon.domain.ids import NAME_RULE, valid_specimen_id
from daemon.domain.specimens import Specimen, SpecimenPage
from daemon.settings import LisSettings, Settings
from daemon.store import audit
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
    ordered: Annotated[
        bool | None,
        Query(description="false: only unordered specimens (no LIS order names them); true: "
              "only ordered ones"),
    ] = None,
) -> SpecimenPage:
    # Filters apply before the limit; a page may be short (see SpecimenStore.page).
    items, cursor = store.page(status, after, limit, ordered)  # BadCursor: 400
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


def _fhir(specimen: Specimen, lis: LisSettings) -> str:
    from daemon.lis.fhir import diagnostic_report

    return json.dumps(diagnostic_report(specimen, lis.statement))


def _hl7(specimen: Specimen, lis: LisSettings) -> str:
    from daemon.lis.hl7 import oru_r01, to_er7

    return to_er7(oru_r01(specimen, lis))


def _report_route(name: str, media_type: str, render: Callable[[Specimen, LisSettings], str]
                  ) -> None:
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
        responses={200: {"content": {media_type.split(";")[0]: {}}}},
    )


_report_route("fhir", "application/fhir+json", _fhir)
_report_route("hl7", "application/hl7-v2; charset=utf-8", _hl7)


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
    items, cursor = audit.page(client, after, limit)  # BadCursor: 400 (daemon.api.app)
    audit.record(
        client,
        caller.name,
        caller.role,
        "audit.read",
        detail=after,
        address=client_address(request),
    )
    return audit.AuditPage(items=items, next=cursor)

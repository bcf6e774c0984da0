"""Orders from the LIS over HTTP: FHIR ServiceRequest in, orders listed and read back.

HL7 orders (OML^O33, ORM^O01) come over MLLP (``daemon/lis/listener.py``); both paths store
the same ``Order`` and link the specimen to it (``daemon/store/orders.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from daemon import telemetry
from daemon.api import examples as ex
from daemon.api.auth import Caller, require
from daemon.api.paging import Page
from daemon.domain.orders import Order, OrderEvent
from daemon.domain.pages import Paged
from daemon.lis.fhir import ServiceRequestError, read_service_request
from daemon.store.orders import OrderConflict, OrderStore

router = APIRouter()

SERVICE_REQUEST_EXAMPLE = {
    "resourceType": "ServiceRequest",
    "id": "sr-1001",
    "status": "active",
    "intent": "order",
    "identifier": [{
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "PLAC"}]},
        "system": "urn:oid:1.2.840.99999.1", "value": "PL-1001"}],
    "code": {"coding": [{"system": "urn:leukoscope:codes", "code": "wbc-all-subtype-panel"}]},
    "contained": [
        {"resourceType": "Patient", "id": "p", "identifier": [
            {"system": "urn:oid:1.2.840.99999.2", "value": "MRN-77",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "MR"}]}}],
         "name": [{"family": "Doe", "given": ["Jane"]}], "gender": "female",
         "birthDate": "1980-01-02"},
        {"resourceType": "Specimen", "id": "s", "accessionIdentifier": {"value": "ACC-1001"}},
    ],
    "subject": {"reference": "#p"},
    "specimen": [{"reference": "#s"}],
}


class OrderPage(Paged, BaseModel):
    items: list[OrderEvent]
    next: str = Field(description="cursor for the next call's `after`")


class OrderAccepted(BaseModel):
    order: Order
    specimen_has_results: bool = Field(description="frames of the specimen were already stored")


def _orders(request: Request) -> OrderStore:
    return OrderStore(request.app.state.client)


def _count(outcome: str) -> None:
    telemetry.count("leukoscope_orders_received_total", {"source": "fhir", "outcome": outcome})


@router.post(
    "/fhir/ServiceRequest",
    tags=["orders"],
    status_code=201,
    response_model=OrderAccepted,
    summary="Order the differential for a specimen (FHIR R4/R4B ServiceRequest)",
    description="Stores the order and links the specimen (its accession number: a contained "
    "Specimen's accessionIdentifier) to the placer order number (identifier typed PLAC) and "
    "the patient (a contained Patient, or the subject reference as sent). Reports of the "
    "specimen then carry them (HL7 PID/ORC/OBR, FHIR subject/basedOn). Posting the same "
    "placer order number again replaces the order.",
    responses={
        201: {"headers": {"Location": {
            "description": "/orders/{placer order number}", "schema": {"type": "string"}}},
              **ex.ok({"order": ex.ORDER, "specimen_has_results": False}, "order stored")},
        409: {"description": "the specimen is already linked to another order",
              "content": {"application/json": {"example": {"detail": "specimen ACC-1001 is "
                                                           "already ordered by 'PL-9'"}}}},
        422: {"description": "not a valid ServiceRequest, or no placer number/specimen",
              "content": {"application/json": {"example": {
                  "detail": "no placer order number: give an identifier typed PLAC"}}}},
    },
)
def post_service_request(
    request: Request,
    _caller: Annotated[Caller, Depends(require("ingest", "order.fhir"))],
    resource: Annotated[dict, Body(
        media_type="application/fhir+json",
        openapi_examples={"order": {"summary": "ServiceRequest with contained Patient and "
                                    "Specimen", "value": SERVICE_REQUEST_EXAMPLE}})],
) -> JSONResponse:
    settings = request.app.state.settings
    try:
        order = read_service_request(resource, settings.lis.filler_authority)
    except ServiceRequestError as exc:
        _count("refused")
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    try:
        has_results = _orders(request).save(order)
    except OrderConflict as exc:
        _count("refused")
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    _count("accepted")
    body = OrderAccepted(order=order, specimen_has_results=has_results)
    return JSONResponse(status_code=201, content=body.model_dump(mode="json"),
                        headers={"Location": f"/orders/{order.placer_order_number}"})


@router.get("/orders", tags=["orders"], response_model=OrderPage,
            responses={200: ex.ok(ex.ORDER_PAGE), 400: ex.BAD_CURSOR},
            summary="Orders received (HL7 and FHIR), oldest first, cursor paged")
def list_orders(
    request: Request,
    _caller: Annotated[Caller, Depends(require("read", "orders.list"))],
    page: Page,
) -> OrderPage:
    return OrderPage.of(_orders(request).page(page.after, page.limit))  # BadCursor: 400


@router.get("/orders/{placer_order_number}", tags=["orders"], response_model=Order,
            responses={200: ex.ok(ex.ORDER), 404: {"description": "no such order",
                             "content": {"application/json": {"example": {
                                 "detail": "no order PL-1"}}}}})
def get_order(
    request: Request,
    placer_order_number: str,
    _caller: Annotated[Caller, Depends(require("read", "order.read"))],
) -> Order:
    order = _orders(request).get(placer_order_number)
    if order is None:
        raise HTTPException(status_code=404, detail=f"no order {placer_order_number}")
    return order

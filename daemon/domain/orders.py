"""An order for the differential, as the LIS sent it (HL7 OML^O33/ORM^O01 or FHIR
ServiceRequest), and the patient it names.

The order links a specimen (its id is the accession number, the inbox folder name) to the
placer's order number and to the patient identifiers. Reports take PID/subject from here and
from nowhere else: a specimen without an order is *unordered* and its reports carry no
patient at all (never an invented one).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from daemon.domain.ids import SPECIMEN_ID_PATTERN


class PatientIdentifier(BaseModel):
    value: str = Field(min_length=1, max_length=200)
    authority: str | None = Field(default=None, description="assigning authority (PID-3.4)")
    type: str | None = Field(default=None, description="identifier type code, e.g. MR (PID-3.5)")


class Patient(BaseModel):
    identifiers: list[PatientIdentifier] = Field(min_length=1)
    family: str | None = None
    given: str | None = None
    birth_date: str | None = Field(default=None, description="YYYYMMDD (HL7) or YYYY-MM-DD")
    sex: str | None = Field(default=None, description="HL7 table 0001: F, M, O, U, A, N")


class Order(BaseModel):
    placer_order_number: str = Field(min_length=1, max_length=200, description="ORC-2/OBR-2")
    placer_authority: str | None = Field(default=None, description="namespace of ORC-2")
    filler_order_number: str = Field(
        min_length=1, max_length=200,
        description="ORC-3/OBR-3: the LIS's own, or the specimen id when the LIS sent none")
    filler_authority: str | None = None
    specimen_id: str = Field(pattern=SPECIMEN_ID_PATTERN, description="accession number = "
                             "the specimen folder name (SPM-2, else OBR-3/ORC-3)")
    patient: Patient | None = None
    service_code: str | None = Field(default=None, description="OBR-4.1 as ordered")
    service_text: str | None = None
    service_system: str | None = None
    ordering_provider: str | None = Field(default=None, description="ORC-12/OBR-16, ER7 as sent")
    source: Literal["hl7-oml", "hl7-orm", "fhir"]
    message_control_id: str | None = Field(default=None, description="MSH-10 of the order")
    patient_reference: str | None = Field(
        default=None, description="FHIR orders: the ServiceRequest's subject reference as sent "
        "(e.g. Patient/123), kept as is in the report's subject")
    service_request_id: str | None = Field(
        default=None, description="the FHIR ServiceRequest id (FHIR orders; derived otherwise)")
    received_at: float


class OrderEvent(BaseModel):
    cursor: str
    order: Order

"""A specimen as a FHIR DiagnosticReport (JSON), self-contained; FHIR ServiceRequest orders in.

**FHIR version: R4B (4.3.0).** The resources used here (DiagnosticReport, Observation,
Specimen, Device, Patient, ServiceRequest) have the same structure in R4 (4.0.1) and R4B, so
the JSON is valid R4 as well; it is validated in the tests with ``fhir.resources.R4B``
because the installed ``fhir.resources`` (8.x) ships R5 (default), R4B and STU3 models and no
R4 package.

The report contains (``contained``) the Specimen (accession = the specimen id), the Patient
from the order (when the order names one, or a ``subject`` reference as the FHIR order sent
it), one Device per model (name, version, SHA-256) and the Observations, coded from
``daemon.domain.codes`` (the same codes as the HL7 OBX-3). ``basedOn`` is the order's
ServiceRequest (by reference when it came as FHIR, by placer identifier otherwise). An
unordered specimen has no ``subject`` and no ``basedOn``: never a made-up patient. Status is
``preliminary`` until a reviewer has verified the complete specimen at the review station
(issue 13), ``final`` afterwards, with the verifier as ``resultsInterpreter`` (a contained
Practitioner identified by the API key's name) and the verified counts. The research-use
statement is the report's conclusion and a note on every Observation.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from daemon import __version__
from daemon.domain import codes
from daemon.domain.ids import NAME_RULE, valid_specimen_id
from daemon.domain.orders import Order, Patient, PatientIdentifier
from daemon.domain.specimens import Specimen

FHIR_VERSION = "4.3.0"  # R4B; see the module docstring
UCUM = codes.UCUM_URI
LOCAL_CODES = codes.LOCAL_SYSTEM_URI
SPECIMEN_SYSTEM = "urn:leukoscope:specimen"
PLACER_SYSTEM = "urn:leukoscope:placer"  # placer order numbers without a namespace URI
MODEL_SHA_SYSTEM = "urn:leukoscope:model-sha256"
DEVICE_EXTENSION = "urn:leukoscope:fhir:extension:model-device"
KEY_SYSTEM = "urn:leukoscope:api-key"  # the verifier: the name of the API key that signed
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDER = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
GENDER_V2 = {"female": "F", "male": "M", "other": "O", "unknown": "U"}

display = codes.display  # kept for callers of the former name


def fhir_id(value: str) -> str:
    """FHIR ids are [A-Za-z0-9.-]{1,64}."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", value)[:64]


def instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def concept(code: codes.Code) -> dict:
    return {"coding": [{"system": LOCAL_CODES, "code": code.code, "display": code.display}],
            "text": code.display}


def _quantity(value: float | int, unit: str) -> dict:
    return {"value": value, "unit": unit.strip("{}") if unit != "%" else "%", "system": UCUM,
            "code": unit}


def _system(authority: str | None) -> str:
    if not authority:
        return PLACER_SYSTEM
    if ":" in authority:  # already a URI (urn:oid:..., https://...)
        return authority
    return f"urn:leukoscope:authority:{fhir_id(authority)}"


def placer_identifier(order: Order) -> dict:
    return {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
            "system": _system(order.placer_authority), "value": order.placer_order_number}


def filler_identifier(order: Order) -> dict:
    return {"type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
            "system": _system(order.filler_authority), "value": order.filler_order_number}


def patient_resource(patient: Patient) -> dict:
    resource: dict = {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [
            {k: v for k, v in (
                ("system", _system(i.authority) if i.authority else None),
                ("value", i.value),
                ("type", {"coding": [{"system": V2_0203, "code": i.type}]} if i.type else None),
            ) if v is not None}
            for i in patient.identifiers
        ],
    }
    if patient.family or patient.given:
        name: dict = {}
        if patient.family:
            name["family"] = patient.family
        if patient.given:
            name["given"] = [patient.given]
        resource["name"] = [name]
    if patient.sex in GENDER:
        resource["gender"] = GENDER[patient.sex]
    if patient.birth_date and re.match(r"^\d{8}$", patient.birth_date.replace("-", "")):
        d = patient.birth_date.replace("-", "")
        resource["birthDate"] = f"{d[:4]}-{d[4:6]}-{d[6:8]}"
    return resource


def observation_values(specimen: Specimen) -> list[tuple[str, codes.Code, dict]]:
    """(resource id, code, value[x]) of every Observation, the same values as the OBX."""
    out: list[tuple[str, codes.Code, dict]] = []
    if specimen.predominant_class is not None:
        out.append(("predominant-class", codes.PREDOMINANT_CLASS,
                    {"valueCodeableConcept": concept(
                        codes.class_value_code(specimen.predominant_class))}))
        out.append(("predominant-class-share", codes.PREDOMINANT_SHARE,
                    {"valueQuantity": _quantity(specimen.predominant_share_percent, "%")}))
    if specimen.blast_share_percent is not None:
        out.append(("all-lymphoid-share", codes.ALL_SHARE,
                    {"valueQuantity": _quantity(specimen.blast_share_percent, "%")}))
    out.append(("cells-identified", codes.IDENTIFIED_CELLS,
                {"valueInteger": specimen.cells_classified}))
    if specimen.identified_share_percent is not None:
        out.append(("cells-identified-share", codes.IDENTIFIED_SHARE,
                    {"valueQuantity": _quantity(specimen.identified_share_percent, "%")}))
    for code, count in ((codes.UNIDENTIFIED_CELLS, specimen.unidentified_cells),
                        (codes.REVIEW_CELLS, specimen.cells_needing_review),
                        (codes.REVIEW_FRAMES, specimen.frames_needing_review)):
        out.append((code.code, code, {"valueInteger": count}))
    for class_code, count in specimen.cells.items():
        code = codes.count_code(class_code)
        out.append((fhir_id(code.code), code, {"valueInteger": count}))
        if class_code in specimen.percent:
            code = codes.share_code(class_code)
            out.append((fhir_id(code.code), code,
                        {"valueQuantity": _quantity(specimen.percent[class_code], "%")}))
    return out


def diagnostic_report(specimen: Specimen, statement: str) -> dict:
    status = specimen.result_status  # preliminary until complete and verified by a reviewer
    order = specimen.order
    devices = []
    for model in specimen.models:
        devices.append(
            {
                "resourceType": "Device",
                "id": fhir_id(f"model-{model.kind}-{model.sha256[:12]}"),
                "identifier": [{"system": MODEL_SHA_SYSTEM, "value": model.sha256}],
                "deviceName": [{"name": model.name, "type": "model-name"}],
                "type": {"text": f"{model.kind} model"},
                "version": [{"type": {"text": model.kind}, "value": model.version}],
                "note": [{"text": f"leukoscope {__version__}; sha256 {model.sha256}"}],
            }
        )
    classifier = next(
        (d for d, m in zip(devices, specimen.models, strict=True) if m.kind == "classifier"), None
    )
    device_ref = {"reference": f"#{classifier['id']}"} if classifier else None
    period = {"start": instant(specimen.first_frame_at), "end": instant(specimen.last_frame_at)}
    notes = [{"text": statement}]
    patient = None
    subject = None
    if order is not None and order.patient_reference:
        subject = {"reference": order.patient_reference}
    elif order is not None and order.patient is not None:
        patient = patient_resource(order.patient)
        subject = {"reference": "#patient"}

    def observation(ident: str, code: codes.Code, value: dict) -> dict:
        obs = {
            "resourceType": "Observation",
            "id": ident,
            "status": status,
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": concept(code),
            "specimen": {"reference": "#specimen"},
            "effectivePeriod": period,
            "note": notes,
            **value,
        }
        if subject:
            obs["subject"] = subject
        if device_ref:
            obs["device"] = device_ref
        return obs

    observations = [observation(i, c, v) for i, c, v in observation_values(specimen)]
    conclusion = statement
    if specimen.late_frames:
        conclusion += (
            f" {specimen.late_frames} frame(s) arrived after the specimen was completed;"
            " they are not included in these results."
        )
    conclusion += verification_note(specimen)
    if order is None:
        conclusion += " Unordered: no order from the LIS names this specimen; no patient is given."
    specimen_resource: dict = {
        "resourceType": "Specimen",
        "id": "specimen",
        "identifier": [{"system": SPECIMEN_SYSTEM, "value": specimen.specimen_id}],
        "accessionIdentifier": {"system": SPECIMEN_SYSTEM, "value": specimen.specimen_id},
        "receivedTime": instant(specimen.opened_at),
    }
    if subject:
        specimen_resource["subject"] = subject
    report: dict = {
        "resourceType": "DiagnosticReport",
        "id": fhir_id(specimen.specimen_id),
        "meta": {"profile": []},
        "contained": [specimen_resource, *([patient] if patient else []), *devices,
                      *observations],
        "extension": [
            {"url": DEVICE_EXTENSION, "valueReference": {"reference": f"#{d['id']}"}}
            for d in devices
        ],
        "identifier": [{"system": SPECIMEN_SYSTEM, "value": specimen.specimen_id}],
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "HM",
                        "display": "Hematology",
                    }
                ]
            }
        ],
        "code": concept(codes.PANEL),
        "effectivePeriod": period,
        "issued": instant(specimen.completed_at or specimen.last_activity_at or specimen.opened_at),
        "specimen": [{"reference": "#specimen"}],
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }
    del report["meta"]
    if order is not None:
        based_on: dict = {"type": "ServiceRequest", "identifier": placer_identifier(order)}
        if order.service_request_id:
            based_on["reference"] = f"ServiceRequest/{order.service_request_id}"
        report["basedOn"] = [based_on]
        report["identifier"].append(filler_identifier(order))
    if subject:
        report["subject"] = subject
    if not devices:
        del report["extension"]
    if specimen.verified_by:  # the review station's sign-off (issue 13)
        report["contained"].append({
            "resourceType": "Practitioner", "id": "verifier",
            "identifier": [{"system": KEY_SYSTEM, "value": specimen.verified_by}],
            "name": [{"text": specimen.verified_by}],
        })
        report["resultsInterpreter"] = [{"reference": "#verifier",
                                         "display": specimen.verified_by}]
    return report


def verification_note(specimen: Specimen) -> str:
    """Who verified the results and when, or that nobody has yet (FHIR and HL7)."""
    if specimen.verified_by and specimen.verified_at:
        others = [s.by for s in specimen.signatures if s.by != specimen.verified_by]
        also = f" (also signed by {', '.join(others)})" if others else ""
        return (f" Verified by {specimen.verified_by}{also} at "
                f"{instant(specimen.verified_at)}; {specimen.reclassified_cells} cell(s) "
                "reclassified on review.")
    flagged = (f"; {specimen.cells_needing_review} cell(s) and "
               f"{specimen.frames_needing_review} frame(s) are flagged for review"
               if specimen.needs_review else "")
    return f" Preliminary: not yet verified by a reviewer{flagged}."


# --- orders in: ServiceRequest -> Order --------------------------------------------------
class ServiceRequestError(ValueError):
    """A ServiceRequest the daemon cannot take as an order (422 with this text)."""


def _identifier_of_type(identifiers: list[dict], code: str) -> dict | None:
    for ident in identifiers:
        for coding in (ident.get("type") or {}).get("coding") or []:
            if coding.get("code") == code:
                return ident
    return None


def _authority(ident: dict) -> str | None:
    system = ident.get("system")
    if not system:
        return None
    return system.removeprefix("urn:leukoscope:authority:")


def read_service_request(resource: dict, filler_authority: str, now: float | None = None,
                         ) -> Order:
    """The Order in a FHIR ServiceRequest (validated with fhir.resources R4B first).

    Placer order number: the identifier typed PLAC (else the first identifier); filler: the
    one typed FILL. The specimen: ``specimen[0]`` → a contained Specimen's
    ``accessionIdentifier`` (or identifier), or the reference's own identifier. The patient:
    ``subject`` → a contained Patient (identifiers, name, birthDate, gender), or a literal
    reference kept as it is; no subject means no patient.
    """
    from fhir.resources.R4B.servicerequest import ServiceRequest
    from pydantic import ValidationError

    if resource.get("resourceType") != "ServiceRequest":
        raise ServiceRequestError("the body must be a FHIR ServiceRequest resource")
    try:
        ServiceRequest.model_validate(resource)
    except ValidationError as exc:
        raise ServiceRequestError(f"not a valid FHIR R4B ServiceRequest: {exc}") from exc
    contained = {f"#{r.get('id')}": r for r in resource.get("contained") or []}
    identifiers = resource.get("identifier") or []
    placer = _identifier_of_type(identifiers, "PLAC") or (identifiers[0] if identifiers else None)
    if not placer or not placer.get("value"):
        raise ServiceRequestError("no placer order number: give an identifier typed PLAC")
    filler = _identifier_of_type(identifiers, "FILL")
    specimen_id = None
    for ref in resource.get("specimen") or []:
        target = contained.get(ref.get("reference", ""))
        if target is not None:
            ident = target.get("accessionIdentifier") or (target.get("identifier") or [{}])[0]
            specimen_id = ident.get("value")
        elif ref.get("identifier"):
            specimen_id = ref["identifier"].get("value")
        if specimen_id:
            break
    if not specimen_id and filler:
        specimen_id = filler.get("value")
    if not specimen_id:
        raise ServiceRequestError("no specimen: give specimen[0] (a contained Specimen with an "
                                  "accessionIdentifier, or an identifier) or a FILL identifier")
    if not valid_specimen_id(specimen_id):
        raise ServiceRequestError(f"specimen id {specimen_id!r} must be {NAME_RULE}")
    patient = None
    patient_reference = None
    subject = resource.get("subject") or {}
    target = contained.get(subject.get("reference", ""))
    if target is not None and target.get("resourceType") == "Patient":
        idents = [
            PatientIdentifier(value=i["value"], authority=_authority(i),
                              type=((i.get("type") or {}).get("coding") or [{}])[0].get("code"))
            for i in target.get("identifier") or [] if i.get("value")
        ]
        if not idents:
            raise ServiceRequestError("the contained Patient has no identifier with a value")
        name = (target.get("name") or [{}])[0]
        patient = Patient(
            identifiers=idents,
            family=name.get("family"),
            given=" ".join(name.get("given") or []) or None,
            birth_date=(target.get("birthDate") or "").replace("-", "") or None,
            sex=GENDER_V2.get(target.get("gender", "")),
        )
    elif subject.get("reference"):
        patient_reference = subject["reference"]
        if subject.get("identifier", {}).get("value"):
            i = subject["identifier"]
            patient = Patient(identifiers=[PatientIdentifier(value=i["value"],
                                                             authority=_authority(i))])
    elif subject.get("identifier", {}).get("value"):
        i = subject["identifier"]
        patient = Patient(identifiers=[PatientIdentifier(value=i["value"],
                                                         authority=_authority(i))])
    coding = ((resource.get("code") or {}).get("coding") or [{}])[0]
    return Order(
        placer_order_number=placer["value"],
        placer_authority=_authority(placer),
        filler_order_number=(filler or {}).get("value") or specimen_id,
        filler_authority=_authority(filler) if filler else filler_authority,
        specimen_id=specimen_id,
        patient=patient,
        patient_reference=patient_reference,
        service_code=coding.get("code"),
        service_text=coding.get("display") or (resource.get("code") or {}).get("text"),
        service_system=coding.get("system"),
        ordering_provider=(resource.get("requester") or {}).get("reference"),
        source="fhir",
        service_request_id=fhir_id(resource.get("id") or f"sr-{placer['value']}"),
        received_at=time.time() if now is None else now,
    )

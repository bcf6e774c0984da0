"""A specimen as a FHIR R4 DiagnosticReport (JSON), self-contained.

The report contains (``contained``) the Specimen, one Device per model (name, version,
SHA-256) and the Observations: blast share as LOINC 26446-5 (Blasts/100 leukocytes in
Blood), the number of cells classified, and the count and share of each class under local
codes. The Devices are referenced from the report (extension) and from each Observation.
Status is ``preliminary`` while the specimen is open and ``final`` once complete. The
research-use statement is the report's conclusion and a note on every Observation.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from daemon import __version__
from daemon.domain.specimens import Specimen

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
LOCAL_CODES = "urn:leukoscope:codes"
SPECIMEN_SYSTEM = "urn:leukoscope:specimen"
MODEL_SHA_SYSTEM = "urn:leukoscope:model-sha256"
DEVICE_EXTENSION = "urn:leukoscope:fhir:extension:model-device"
KEY_SYSTEM = "urn:leukoscope:api-key"  # the verifier: the name of the API key that signed

CLASS_DISPLAY = {
    "benign": "Benign (non-blast) white cell",
    "early_pre_b": "Early pre-B lymphoblast",
    "pre_b": "Pre-B lymphoblast",
    "pro_b": "Pro-B lymphoblast",
}


def display(class_code: str) -> str:
    return CLASS_DISPLAY.get(class_code, class_code.replace("_", " "))


def fhir_id(value: str) -> str:
    """FHIR ids are [A-Za-z0-9.-]{1,64}."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", value)[:64]


def instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _local(code: str, text: str) -> dict:
    return {"coding": [{"system": LOCAL_CODES, "code": code, "display": text}], "text": text}


def _percent(value: float) -> dict:
    return {"value": value, "unit": "%", "system": UCUM, "code": "%"}


def diagnostic_report(specimen: Specimen, statement: str) -> dict:
    status = specimen.result_status  # preliminary until complete and nothing to review
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

    def observation(ident: str, code: dict, value: dict) -> dict:
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
            "code": code,
            "specimen": {"reference": "#specimen"},
            "effectivePeriod": period,
            "note": notes,
            **value,
        }
        if device_ref:
            obs["device"] = device_ref
        return obs

    observations = []
    if specimen.blast_share_percent is not None:
        observations.append(
            observation(
                "blast-share",
                {
                    "coding": [
                        {
                            "system": LOINC,
                            "code": "26446-5",
                            "display": "Blasts/100 leukocytes in Blood",
                        }
                    ],
                    "text": "Blast share (early pre-B + pre-B + pro-B over cells classified)",
                },
                {"valueQuantity": _percent(specimen.blast_share_percent)},
            )
        )
    observations.append(
        observation(
            "cells-classified",
            _local("cells-classified", "White cells classified"),
            {"valueInteger": specimen.cells_classified},
        )
    )
    for ident, text, count in (
        ("unidentified-cells", "Cells not identified (not in the differential)",
         specimen.unidentified_cells),
        ("cells-needing-review", "Cells flagged for review", specimen.cells_needing_review),
        ("frames-needing-review", "Frames flagged for review", specimen.frames_needing_review),
    ):
        observations.append(observation(ident, _local(ident, text), {"valueInteger": count}))
    for class_code, count in specimen.cells.items():
        name = display(class_code)
        observations.append(
            observation(
                fhir_id(f"count-{class_code}"),
                _local(f"count-{class_code}", f"{name} count"),
                {"valueInteger": count},
            )
        )
        if class_code in specimen.percent:
            observations.append(
                observation(
                    fhir_id(f"percent-{class_code}"),
                    _local(f"percent-{class_code}", f"{name} share of cells classified"),
                    {"valueQuantity": _percent(specimen.percent[class_code])},
                )
            )
    conclusion = statement
    if specimen.needs_review:
        conclusion += (
            f" Not verified: {specimen.cells_needing_review} cell(s) and "
            f"{specimen.frames_needing_review} frame(s) need review by a person; these results"
            " stay preliminary until verified."
        )
    if specimen.late_frames:
        conclusion += (
            f" {specimen.late_frames} frame(s) arrived after the specimen was completed;"
            " they are not included in these results."
        )
    conclusion += verification_note(specimen)
    specimen_resource = {
        "resourceType": "Specimen",
        "id": "specimen",
        "identifier": [{"system": SPECIMEN_SYSTEM, "value": specimen.specimen_id}],
        "receivedTime": instant(specimen.opened_at),
    }
    report = {
        "resourceType": "DiagnosticReport",
        "id": fhir_id(specimen.specimen_id),
        "contained": [specimen_resource, *devices, *observations],
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
        "code": _local("wbc-all-subtype-panel", "White-cell ALL subtype panel (research use)"),
        "effectivePeriod": period,
        "issued": instant(specimen.completed_at or specimen.last_activity_at or specimen.opened_at),
        "specimen": [{"reference": "#specimen"}],
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }
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
    return " Preliminary: not yet verified by a reviewer."

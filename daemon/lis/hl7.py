"""A specimen as an HL7 v2.5.1 ORU^R01 message, built and validated with hl7apy.

MSH; PID with the specimen id (PID-3); OBR for the panel (OBR-25 P or F); an NTE with the
research-use statement; one OBX per value: blast share (LOINC 26446-5, NM, %), cells
classified (NM, {cells}), the count (NM, {cells}) and share (NM, %) of each class under local
codes. OBX-11 is P while the specimen is open, F once complete; OBX-18 carries the model
versions (EI: name:version ^ kind ^ sha256 ^ L).
"""

from __future__ import annotations

from datetime import UTC, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from daemon.domain.specimens import Specimen
from daemon.lis.fhir import display, verification_note
from daemon.settings import LisSettings

LOCAL_SYSTEM = "L"  # HL7 table 0396: local code system


def escape(text: str) -> str:
    """ER7 escaping of a free-text value (the default delimiters)."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, code)
    return out.replace("\r", " ").replace("\n", " ")


def ts(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y%m%d%H%M%S+0000")


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def oru_r01(
    specimen: Specimen, lis: LisSettings, control_id: str | None = None, now: float | None = None
) -> Message:
    flag = "F" if specimen.result_status == "final" else "P"
    created = now if now is not None else (specimen.completed_at or specimen.last_frame_at)
    message = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = escape(lis.sending_application)
    msh.msh_4 = escape(lis.sending_facility)
    msh.msh_5 = escape(lis.receiving_application)
    msh.msh_6 = escape(lis.receiving_facility)
    msh.msh_7 = ts(created)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id or specimen.control_id or f"P{int(created * 1000)}"[:20]
    msh.msh_11 = "P"
    msh.msh_12 = "2.5.1"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_1 = "1"
    patient.pid.pid_3 = f"{specimen.specimen_id}^^^LEUKOSCOPE^SID"
    patient.pid.pid_5 = f"{specimen.specimen_id}^SPECIMEN"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = f"{specimen.specimen_id}^LEUKOSCOPE"
    obr.obr_4 = "WBC-ALL^White-cell ALL subtype panel (research use)^" + LOCAL_SYSTEM
    obr.obr_7 = ts(specimen.first_frame_at)
    obr.obr_8 = ts(specimen.last_frame_at)
    obr.obr_22 = ts(created)
    obr.obr_25 = flag
    if specimen.verified_by:  # OBR-32 principal result interpreter: the verifier (issue 13)
        obr.obr_32 = escape(specimen.verified_by)
    notes = [lis.statement, verification_note(specimen).strip()]
    if specimen.needs_review:
        notes.append(
            f"Not verified: {specimen.cells_needing_review} cell(s) and "
            f"{specimen.frames_needing_review} frame(s) need review; preliminary until verified."
        )
    if specimen.late_frames:
        notes.append(
            f"{specimen.late_frames} frame(s) arrived after completion and are not included."
        )
    for i, text in enumerate(notes, start=1):
        nte = order.add_segment("NTE")
        nte.nte_1 = str(i)
        nte.nte_3 = escape(text)
    equipment = [
        f"{escape(m.name)}:{escape(m.version)}^{m.kind}^{m.sha256}^L" for m in specimen.models
    ]
    values: list[tuple[str, float | int, str]] = []
    if specimen.blast_share_percent is not None:
        values.append(
            ("26446-5^Blasts/100 leukocytes in Blood^LN", specimen.blast_share_percent, "%")
        )
    values.append(("CELLS^White cells classified^L", specimen.cells_classified, "{cells}"))
    values.append(("UNIDENTIFIED^Cells not identified^L", specimen.unidentified_cells, "{cells}"))
    values.append(("REVIEW-CELLS^Cells flagged for review^L", specimen.cells_needing_review,
                   "{cells}"))
    values.append(("REVIEW-FRAMES^Frames flagged for review^L", specimen.frames_needing_review,
                   "{frames}"))
    for class_code, count in specimen.cells.items():
        name = escape(display(class_code))
        values.append((f"COUNT-{class_code.upper()}^{name} count^L", count, "{cells}"))
        if class_code in specimen.percent:
            values.append(
                (f"PCT-{class_code.upper()}^{name} share^L", specimen.percent[class_code], "%")
            )
    units = {"%": "%^percent^UCUM", "{cells}": "{cells}^cells^UCUM",
             "{frames}": "{frames}^frames^UCUM"}
    for i, (code, value, unit) in enumerate(values, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(i)
        obx.obx_2 = "NM"
        obx.obx_3 = code
        obx.obx_5 = _number(value)
        obx.obx_6 = units[unit]
        obx.obx_11 = flag
        obx.obx_14 = ts(specimen.last_frame_at)
        if specimen.verified_by:  # OBX-16 responsible observer
            obx.obx_16 = escape(specimen.verified_by)
        for instance in equipment:  # OBX-18 repeats: one per model
            obx.add_field("OBX_18").value = instance
    return message


def to_er7(message: Message) -> str:
    """The message in ER7 (segments separated by CR), after strict validation."""
    message.validate()
    return message.to_er7()


def parse(er7: str) -> Message:
    return parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)


def ack(message_er7: str, code: str = "AA", text: str = "") -> str:
    """An ACK for ``message_er7`` (used by tests' listeners and tools)."""
    incoming = parse(message_er7)
    reply = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    reply.msh.msh_3 = incoming.msh.msh_5.value
    reply.msh.msh_4 = incoming.msh.msh_6.value
    reply.msh.msh_5 = incoming.msh.msh_3.value
    reply.msh.msh_6 = incoming.msh.msh_4.value
    reply.msh.msh_7 = ts(datetime.now(UTC).timestamp())
    reply.msh.msh_9 = "ACK^R01^ACK"
    reply.msh.msh_10 = ("A" + incoming.msh.msh_10.value)[:20]
    reply.msh.msh_11 = "P"
    reply.msh.msh_12 = "2.5.1"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = incoming.msh.msh_10.value
    if text:
        reply.msa.msa_3 = escape(text)
    return reply.to_er7()


def read_ack(er7: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, MSA-3 text) of an ACK."""
    segments = [s for s in er7.replace("\n", "\r").split("\r") if s]
    for segment in segments:
        if segment.startswith("MSA"):
            fields = segment.split("|")
            fields += [""] * (4 - len(fields))
            return fields[1], fields[2], fields[3]
    raise ValueError("no MSA segment in the reply")

"""HL7 v2.5.1 for the LIS: ORU^R01 results out, OML^O33/ORM^O01 orders in, ACKs both ways.

**ORU^R01** (built and strictly validated with hl7apy)::

    MSH  MSH-11 from lis.processing_id (P/T/D)
    PID  from the order (identifiers, name, birth date, sex); absent for an unordered
         specimen: no patient is ever invented
    ORC  RE; ORC-2 placer order number, ORC-3 filler order number; ORC-5 IP or CM
    OBR  OBR-2/OBR-3 as ORC; OBR-4 the service as ordered (else the local panel code);
         OBR-7/8 first/last frame; OBR-25 P, or F once a reviewer verified the
         specimen (issue 13); OBR-32 the verifier (the signing API key's name)
    NTE  the research-use statement, who verified (or "Preliminary: not yet verified"),
         review and late-frame notes
    OBX  one per value, coded from ``daemon.domain.codes`` (the same codes as FHIR): the
         predominant class (CWE) and its share, the ALL-class share of identified lymphoid
         cells, identified/unidentified/needs-review counts, count and share per class;
         OBX-11 P or F; OBX-16 the verifier once verified; OBX-18 the model versions (EI: name:version ^ kind ^ sha256 ^ L)
    SPM  SPM-2 the specimen id (filler assigned, the accession), SPM-4 BLD, SPM-18 received

Every value from outside (config, order, model names) is ER7-escaped component by component.

**Orders** are read with a small ER7 reader (the sender's own delimiters, escapes decoded)
into ``daemon.domain.orders.Order``: PID-3/5/7/8, ORC-2/3 (else OBR-2/3), OBR-4, ORC-12 (else
OBR-16), and the specimen id from SPM-2 (filler-assigned, else placer-assigned part), else the
filler order number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from daemon.domain import codes
from daemon.domain.ids import NAME_RULE, valid_specimen_id
from daemon.domain.orders import Order, Patient, PatientIdentifier
from daemon.domain.specimens import Specimen
from daemon.lis.fhir import verification_note
from daemon.settings import LisSettings

SPECIMEN_TYPE = "BLD^Whole blood^HL70487"
HL7_SYSTEMS = {codes.LOCAL_SYSTEM_URI: codes.LOCAL_SYSTEM_HL7, "http://loinc.org": "LN"}
ORDER_TYPES = {("OML", "O33"): "hl7-oml", ("ORM", "O01"): "hl7-orm"}


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


def _cwe(code: codes.Code) -> str:
    return f"{escape(code.code)}^{escape(code.display)}^{codes.LOCAL_SYSTEM_HL7}"


def _hd(authority: str | None, sep: str) -> str:
    """An assigning authority as HD parts joined by ``sep`` (``^`` in EI, ``&`` in CX-4):
    a short name as the namespace (IS, 20 characters at most), an OID or URI (or a longer
    name) as the universal id with its type (ISO, URI, L)."""
    if not authority:
        return ""
    if len(authority) <= 20 and ":" not in authority:
        return escape(authority)
    if authority.startswith("urn:oid:"):
        return f"{sep}{escape(authority.removeprefix('urn:oid:'))}{sep}ISO"
    return f"{sep}{escape(authority)}{sep}{'URI' if ':' in authority else 'L'}"


def _ei(value: str, namespace: str | None) -> str:
    return escape(value) + (f"^{_hd(namespace, '^')}" if namespace else "")


UNITS = {"%": "%^percent^UCUM", "{cells}": "{cells}^cells^UCUM", "{frames}": "{frames}^frames^UCUM"}


def observations(specimen: Specimen) -> list[tuple[codes.Code, str, str]]:
    """(code, HL7 value type, ER7 value) of every OBX, in order."""
    out: list[tuple[codes.Code, str, str]] = []
    if specimen.predominant_class is not None:
        out.append((codes.PREDOMINANT_CLASS, "CWE",
                    _cwe(codes.class_value_code(specimen.predominant_class))))
        out.append((codes.PREDOMINANT_SHARE, "NM", _number(specimen.predominant_share_percent)))
    if specimen.blast_share_percent is not None:
        out.append((codes.ALL_SHARE, "NM", _number(specimen.blast_share_percent)))
    out.append((codes.IDENTIFIED_CELLS, "NM", str(specimen.cells_classified)))
    if specimen.identified_share_percent is not None:
        out.append((codes.IDENTIFIED_SHARE, "NM", _number(specimen.identified_share_percent)))
    out.append((codes.UNIDENTIFIED_CELLS, "NM", str(specimen.unidentified_cells)))
    out.append((codes.REVIEW_CELLS, "NM", str(specimen.cells_needing_review)))
    out.append((codes.REVIEW_FRAMES, "NM", str(specimen.frames_needing_review)))
    for class_code, count in specimen.cells.items():
        out.append((codes.count_code(class_code), "NM", str(count)))
        if class_code in specimen.percent:
            out.append((codes.share_code(class_code), "NM", _number(specimen.percent[class_code])))
    return out


def notes(specimen: Specimen, statement: str) -> list[str]:
    out = [statement, verification_note(specimen).strip()]
    if specimen.late_frames:
        out.append(f"{specimen.late_frames} frame(s) arrived after completion and are not "
                   "included.")
    if not specimen.ordered:
        out.append("Unordered: no order from the LIS names this specimen; no patient is given.")
    return out


def oru_r01(
    specimen: Specimen, lis: LisSettings, control_id: str | None = None, now: float | None = None
) -> Message:
    flag = "F" if specimen.result_status == "final" else "P"
    created = now if now is not None else (specimen.completed_at or specimen.last_frame_at)
    order = specimen.order
    message = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = escape(lis.sending_application)
    msh.msh_4 = escape(lis.sending_facility)
    msh.msh_5 = escape(lis.receiving_application)
    msh.msh_6 = escape(lis.receiving_facility)
    msh.msh_7 = ts(created)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = escape(control_id or specimen.control_id or f"P{int(created * 1000)}"[:20])
    msh.msh_11 = lis.processing_id
    msh.msh_12 = "2.5.1"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    if order is not None and order.patient is not None:
        patient = order.patient
        pid = result.add_group("ORU_R01_PATIENT").pid
        pid.pid_1 = "1"
        for ident in patient.identifiers:  # PID-3 repeats: every identifier the order gave
            pid.add_field("PID_3").value = (
                f"{escape(ident.value)}^^^{_hd(ident.authority, '&')}^{escape(ident.type or '')}"
            ).rstrip("^")
        if patient.family or patient.given:
            pid.pid_5 = f"{escape(patient.family or '')}^{escape(patient.given or '')}".rstrip("^")
        if patient.birth_date:
            pid.pid_7 = escape(patient.birth_date.replace("-", ""))
        if patient.sex:
            pid.pid_8 = escape(patient.sex)
    group = result.add_group("ORU_R01_ORDER_OBSERVATION")
    placer = _ei(order.placer_order_number, order.placer_authority) if order else ""
    filler = (_ei(order.filler_order_number, order.filler_authority) if order
              else _ei(specimen.specimen_id, lis.filler_authority))
    orc = group.add_segment("ORC")
    orc.orc_1 = "RE"
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    orc.orc_5 = "CM" if flag == "F" else "IP"
    obr = group.obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    if order and order.service_code:
        system = HL7_SYSTEMS.get(order.service_system or "", order.service_system or "")
        obr.obr_4 = "^".join(escape(x or "") for x in (
            order.service_code, order.service_text, system)).rstrip("^")
    else:
        obr.obr_4 = _cwe(codes.PANEL)
    obr.obr_7 = ts(specimen.first_frame_at)
    obr.obr_8 = ts(specimen.last_frame_at)
    obr.obr_22 = ts(created)
    obr.obr_25 = flag
    if specimen.verified_by:  # OBR-32 principal result interpreter: the verifier (issue 13)
        obr.obr_32 = escape(specimen.verified_by)
    for i, text in enumerate(notes(specimen, lis.statement), start=1):
        nte = group.add_segment("NTE")
        nte.nte_1 = str(i)
        nte.nte_3 = escape(text)
    equipment = [
        f"{escape(m.name)}:{escape(m.version)}^{escape(m.kind)}^{escape(m.sha256)}^L"
        for m in specimen.models
    ]
    for i, (code, value_type, value) in enumerate(observations(specimen), start=1):
        obx = group.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(i)
        obx.obx_2 = value_type
        obx.obx_3 = _cwe(code)
        obx.obx_5 = value
        if code.unit:
            obx.obx_6 = UNITS[code.unit]
        obx.obx_11 = flag
        obx.obx_14 = ts(specimen.last_frame_at)
        if specimen.verified_by:  # OBX-16 responsible observer
            obx.obx_16 = escape(specimen.verified_by)
        for instance in equipment:  # OBX-18 repeats: one per model
            obx.add_field("OBX_18").value = instance
    spm = group.add_group("ORU_R01_SPECIMEN").spm
    spm.spm_1 = "1"
    spm.spm_2 = f"^{escape(specimen.specimen_id)}&{escape(lis.filler_authority)}"
    spm.spm_4 = SPECIMEN_TYPE
    spm.spm_18 = ts(specimen.opened_at)
    return message


def to_er7(message: Message) -> str:
    """The message in ER7 (segments separated by CR), after strict validation."""
    message.validate()
    return message.to_er7()


def parse(er7: str) -> Message:
    return parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)


# --- reading ER7 as sent (orders, ACKs) ------------------------------------------------
class Er7:
    """Segments of one ER7 message, split with the sender's own delimiters."""

    def __init__(self, er7: str) -> None:
        text = er7.replace("\r\n", "\r").replace("\n", "\r")
        self.segments = [s for s in text.split("\r") if s.strip()]
        if not self.segments or not self.segments[0].startswith("MSH") or len(
                self.segments[0]) < 8:
            raise ValueError("not an HL7 v2 message: it does not start with MSH")
        msh = self.segments[0]
        self.field_sep = msh[3]
        enc = msh[4:8]
        self.comp, self.rep, self.esc, self.sub = enc[0], enc[1], enc[2], enc[3]

    def all(self, name: str) -> list[list[str]]:
        out = []
        for segment in self.segments:
            if segment[:3] == name:
                fields = segment.split(self.field_sep)
                if name == "MSH":  # MSH-1 is the separator itself
                    fields = [fields[0], self.field_sep, *fields[1:]]
                out.append(fields)
        return out

    def field(self, name: str, number: int, occurrence: int = 0) -> str:
        """The raw (still escaped) field ``name-number``, '' when absent."""
        found = self.all(name)
        if len(found) <= occurrence or len(found[occurrence]) <= number:
            return ""
        return found[occurrence][number]

    def unescape(self, value: str) -> str:
        e = self.esc
        for code, char in (("F", self.field_sep), ("S", self.comp), ("T", self.sub),
                           ("R", self.rep)):
            value = value.replace(f"{e}{code}{e}", char)
        return value.replace(f"{e}E{e}", e)

    def parts(self, raw: str, sep: str) -> list[str]:
        return raw.split(sep)

    def component(self, raw: str, index: int, sub: int = 1) -> str:
        """Component ``index`` (1-based), subcomponent ``sub``, unescaped ('' if absent)."""
        comps = raw.split(self.comp)
        if len(comps) < index:
            return ""
        subs = comps[index - 1].split(self.sub)
        return self.unescape(subs[sub - 1]) if len(subs) >= sub else ""

    def repetitions(self, raw: str) -> list[str]:
        return [r for r in raw.split(self.rep) if r]


class OrderError(ValueError):
    """An order message the daemon cannot accept: AR (not an order) or AE (content)."""

    def __init__(self, code: str, hl7_error: str, text: str) -> None:
        super().__init__(text)
        self.code = code  # AE or AR
        self.hl7_error = hl7_error  # HL7 table 0357


def message_type(er7: str) -> tuple[str, str]:
    reader = Er7(er7)
    raw = reader.field("MSH", 9)
    return reader.component(raw, 1), reader.component(raw, 2)


def read_order(er7: str, lis: LisSettings, now: float | None = None) -> Order:
    """The Order in an OML^O33 or ORM^O01 (first order of the message)."""
    try:
        msg = Er7(er7)
    except ValueError as exc:
        raise OrderError("AR", "100^Segment sequence error^HL70357", str(exc)) from exc
    kind = (msg.component(msg.field("MSH", 9), 1), msg.component(msg.field("MSH", 9), 2))
    source = ORDER_TYPES.get(kind)
    if source is None:
        raise OrderError("AR", "200^Unsupported message type^HL70357",
                         f"unsupported message type {'^'.join(kind)}: send OML^O33 or ORM^O01")
    control = msg.field("ORC", 1)
    if control and msg.component(control, 1) not in ("NW", "SC", "XO", "RP"):
        raise OrderError("AE", "207^Application internal error^HL70357",
                         f"order control {msg.component(control, 1)!r} is not supported "
                         "(NW, SC, XO, RP are)")
    placer_raw = msg.field("ORC", 2) or msg.field("OBR", 2)
    placer = msg.component(placer_raw, 1)
    if not placer:
        raise OrderError("AE", "101^Required field missing^HL70357",
                         "no placer order number (ORC-2 or OBR-2)")
    filler_raw = msg.field("ORC", 3) or msg.field("OBR", 3)
    spm2 = msg.field("SPM", 2)
    specimen_id = (msg.component(spm2, 2, 1) or msg.component(spm2, 1, 1)
                   or msg.component(filler_raw, 1))
    if not specimen_id:
        raise OrderError("AE", "101^Required field missing^HL70357",
                         "no specimen id (SPM-2, or the filler order number ORC-3/OBR-3)")
    if not valid_specimen_id(specimen_id):
        raise OrderError("AE", "102^Data type error^HL70357",
                         f"specimen id {specimen_id!r} must be {NAME_RULE}")
    patient = None
    pid3 = msg.field("PID", 3)
    identifiers = [
        PatientIdentifier(value=msg.component(rep, 1), authority=msg.component(rep, 4) or None,
                          type=msg.component(rep, 5) or None)
        for rep in msg.repetitions(pid3) if msg.component(rep, 1)
    ]
    if identifiers:
        name = (msg.repetitions(msg.field("PID", 5)) or [""])[0]
        patient = Patient(
            identifiers=identifiers,
            family=msg.component(name, 1) or None,
            given=msg.component(name, 2) or None,
            birth_date=msg.component(msg.field("PID", 7), 1)[:8] or None,
            sex=msg.component(msg.field("PID", 8), 1) or None,
        )
    elif msg.all("PID"):
        raise OrderError("AE", "101^Required field missing^HL70357",
                         "PID without a patient identifier (PID-3)")
    service = msg.field("OBR", 4)
    return Order(
        placer_order_number=placer,
        placer_authority=msg.component(placer_raw, 2) or None,
        filler_order_number=msg.component(filler_raw, 1) or specimen_id,
        filler_authority=(msg.component(filler_raw, 2) or None) if msg.component(filler_raw, 1)
        else lis.filler_authority,
        specimen_id=specimen_id,
        patient=patient,
        service_code=msg.component(service, 1) or None,
        service_text=msg.component(service, 2) or None,
        service_system=msg.component(service, 3) or None,
        ordering_provider=msg.unescape(msg.field("ORC", 12) or msg.field("OBR", 16)) or None,
        source=source,
        message_control_id=msg.unescape(msg.field("MSH", 10)) or None,
        service_request_id=None,
        received_at=time.time() if now is None else now,
    )


@dataclass
class AckError:
    hl7_error: str  # ERR-3, e.g. "101^Required field missing^HL70357"
    text: str


def ack(message_er7: str, code: str = "AA", text: str = "", error: AckError | None = None,
        processing_id: str | None = None) -> str:
    """An original-mode ACK for ``message_er7`` (any message type), strictly validated."""
    incoming = Er7(message_er7)
    control = incoming.unescape(incoming.field("MSH", 10))
    trigger = incoming.component(incoming.field("MSH", 9), 2) or "R01"
    reply = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    for mine, theirs in ((3, 5), (4, 6), (5, 3), (6, 4)):
        value = incoming.component(incoming.field("MSH", theirs), 1)
        if value:
            setattr(reply.msh, f"msh_{mine}", escape(value))
    reply.msh.msh_7 = ts(datetime.now(UTC).timestamp())
    reply.msh.msh_9 = f"ACK^{escape(trigger)}^ACK"
    reply.msh.msh_10 = escape(("A" + control)[:20])
    their_pid = incoming.component(incoming.field("MSH", 11), 1)
    reply.msh.msh_11 = processing_id or (their_pid if their_pid in ("P", "T", "D") else "P")
    reply.msh.msh_12 = "2.5.1"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = escape(control) or "UNKNOWN"
    if text:
        reply.msa.msa_3 = escape(text[:80])
    if error is not None:
        err = reply.add_segment("ERR")
        err.err_3 = error.hl7_error
        err.err_4 = "E"
        err.err_8 = escape(error.text[:250])
    reply.validate()
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

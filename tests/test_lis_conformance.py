"""Conformance against a real peer: an MLLP LIS simulator that sends orders to the daemon's
order listener, reads the ACKs, receives the ORU^R01 results, and checks every segment with
hl7apy's strict validation; FHIR orders and reports validated with fhir.resources' R4B
models (the FHIR version the README names)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment

from daemon import telemetry
from daemon.api.app import create_app
from daemon.api.routes.orders import SERVICE_REQUEST_EXAMPLE
from daemon.lis.hl7 import parse, read_ack
from daemon.lis.listener import OrderListener
from daemon.lis.mllp import END_BLOCK, START_BLOCK, Outbox, frame
from daemon.store.orders import OrderStore
from daemon.store.results import ResultStore
from daemon.store.specimens import SpecimenStore
from tests.conftest import (
    free_port,
    serve_http,
    start_daemon,
    synthetic_jpeg,
    wait_for,
    write_frame,
)
from tests.test_lis import Listener
from tests.test_specimens import cell, result


def oml_o33(control: str, placer: str, accession: str, mrn: str = "MRN-1001",
            name: str = "O'Neil^Ann \\T\\ Jo") -> str:
    """An OML^O33 as an LIS sends it (validated strictly below before it is sent)."""
    return "\r".join([
        f"MSH|^~\\&|LIS|HOSP|LEUKOSCOPE|LAB|20260101120000||OML^O33^OML_O33|{control}|T|2.5.1",
        f"PID|1||{mrn}^^^HOSP^MR~AB123^^^NATION^NI||{name}||19800102|F",
        f"SPM|1|SP-{accession}&HOSP^{accession}&LAB||BLD^Whole blood^HL70487",
        f"ORC|NW|{placer}^HOSP||||||||||1234^Doc^Jane",
        f"OBR|1|{placer}^HOSP||wbc-all-subtype-panel^ALL differential^99LKS",
    ])


def orm_o01(control: str, placer: str, filler: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|OLDLIS|HOSP|LEUKOSCOPE|LAB|20260101120000||ORM^O01^ORM_O01|{control}|P|2.5.1",
        "PID|1||MRN-2002^^^HOSP^MR||Roe^Rick",
        f"ORC|NW|{placer}^HOSP|{filler}^LAB",
        f"OBR|1|{placer}^HOSP|{filler}^LAB|wbc-all-subtype-panel^ALL differential^99LKS",
    ])


def send(port: int, message: str) -> str:
    """The simulator's side: one MLLP frame out, one ACK frame back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame(message))
        buffer = b""
        while END_BLOCK not in buffer:
            chunk = sock.recv(65536)
            assert chunk, "the listener closed without an ACK"
            buffer += chunk
    return buffer[buffer.index(START_BLOCK) + 1 : buffer.index(END_BLOCK)].decode()


def strictly_valid(er7: str, whole: bool = True) -> None:
    """The whole message and every segment alone, with hl7apy's strict validation."""
    if whole:
        assert parse(er7).validate()
    for segment in filter(None, er7.split("\r")):
        parsed = parse_segment(segment, version="2.5.1",
                               validation_level=VALIDATION_LEVEL.STRICT)
        assert parsed.validate(), segment[:3]


def segments(er7: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in er7.split("\r") if s.startswith(name)]


@pytest.fixture
def order_listener(make_settings, redis_client):
    settings = make_settings(lis={"listen": {"host": "127.0.0.1", "port": 0}})
    listener = OrderListener(settings, redis_client)
    listener.start()
    yield listener
    listener.stop()


def test_orders_over_mllp_are_acknowledged_and_linked(order_listener, redis_client) -> None:
    message = oml_o33("C1", "PL-1", "ACC-1")
    strictly_valid(message)  # the simulator sends a conformant OML^O33
    reply = send(order_listener.port, message)
    strictly_valid(reply)
    assert read_ack(reply)[:2] == ("AA", "C1")
    assert segments(reply, "MSH")[0][8] == "ACK^O33^ACK"
    order = OrderStore(redis_client).for_specimen("ACC-1")
    assert order is not None and order.placer_order_number == "PL-1"
    assert order.placer_authority == "HOSP" and order.source == "hl7-oml"
    assert [i.value for i in order.patient.identifiers] == ["MRN-1001", "AB123"]
    assert order.patient.given == "Ann & Jo"  # escapes decoded

    legacy = orm_o01("C2", "PL-2", "ACC-2")
    # hl7apy models ORM^O01's OBR/RQD/RQ1/RXO/ODS/ODT choice as a sequence (all required),
    # so the ORM is checked segment by segment only.
    strictly_valid(legacy, whole=False)
    assert read_ack(send(order_listener.port, legacy))[0] == "AA"
    assert OrderStore(redis_client).for_specimen("ACC-2").filler_order_number == "ACC-2"

    # Refusals say why, in MSA-3 and ERR, and are themselves valid ACKs.
    no_placer = message.replace("ORC|NW|PL-1^HOSP", "ORC|NW|").replace("OBR|1|PL-1^HOSP",
                                                                        "OBR|1|")
    reply = send(order_listener.port, no_placer.replace("|C1|", "|C3|"))
    strictly_valid(reply)
    code, control, text = read_ack(reply)
    assert (code, control) == ("AE", "C3") and "placer order number" in text
    assert segments(reply, "ERR")[0][3].startswith("101^")
    conflict = oml_o33("C4", "PL-OTHER", "ACC-1")
    assert read_ack(send(order_listener.port, conflict))[0] == "AE"
    result_msg = message.replace("OML^O33^OML_O33", "ORU^R01^ORU_R01").replace("|C1|", "|C5|")
    reply = send(order_listener.port, result_msg)
    assert read_ack(reply)[0] == "AR" and segments(reply, "ERR")[0][3].startswith("200^")
    bad_id = oml_o33("C6", "PL-6", "bad..id")
    assert read_ack(send(order_listener.port, bad_id))[0] == "AE"

    # Counted by source and outcome (leukoscope_orders_received_total); the ORU^R01 is no order.
    def received(source: str, outcome: str) -> float | None:
        return telemetry.LOCAL.get_sample_value(
            "leukoscope_orders_received_total", {"source": source, "outcome": outcome})

    assert received("hl7-oml", "accepted") == 1 and received("hl7-orm", "accepted") == 1
    assert received("hl7-oml", "refused") == 3  # no placer, conflict, bad specimen id
    assert received("hl7-orm", "refused") == 0 and received("fhir", "accepted") == 0


def test_unordered_specimens_are_held_visible_and_released_by_their_order(
    make_settings, redis_client: redis.Redis
) -> None:
    lis = Listener()
    try:
        settings = make_settings(lis={"mllp": {"host": "127.0.0.1", "port": lis.port}})
        ResultStore(redis_client).store(result("u1", specimen="U-1", cells=[cell("pre_b", 0.9)]))
        assert SpecimenStore(redis_client, mllp_enabled=True).complete("U-1", "api") == "completed"
        outbox = Outbox(redis_client, settings)
        assert [a.outcome for a in outbox.deliver_due()] == ["held"]
        assert outbox.deliver_due(now=time.time() + 10**6) == [] and lis.received == []
        with serve_http(create_app(settings, redis_client)) as api:
            page = api.get("/specimens?ordered=false").json()
            assert [s["specimen_id"] for s in page["items"]] == ["U-1"]
            assert page["items"][0]["delivery"]["state"] == "unordered"
            assert api.get("/status").json()["lis"]["unordered"] == ["U-1"]
            assert 'leukoscope_lis_outbox_messages{state="unordered"} 1.0' in api.get(
                "/metrics").text
            body = dict(SERVICE_REQUEST_EXAMPLE)
            body["contained"] = [SERVICE_REQUEST_EXAMPLE["contained"][0],
                                 {"resourceType": "Specimen", "id": "s",
                                  "accessionIdentifier": {"value": "U-1"}}]
            response = api.post("/fhir/ServiceRequest", json=body)
            assert response.status_code == 201, response.text
            assert response.json()["specimen_has_results"] is True
            assert response.headers["location"] == "/orders/PL-1001"
            assert api.get("/orders/PL-1001").json()["specimen_id"] == "U-1"
            assert api.get("/specimens?ordered=false").json()["items"] == []
            report = DiagnosticReport.model_validate(api.get("/specimens/U-1/fhir").json())
            assert report.basedOn[0].reference == "ServiceRequest/sr-1001"
            assert report.subject.reference == "#patient"
            patient = next(r for r in report.contained if r.__resource_type__ == "Patient")
            assert patient.identifier[0].value == "MRN-77" and patient.gender == "female"
            assert api.post("/fhir/ServiceRequest", json={"resourceType": "Patient"}
                            ).status_code == 422
        assert [a.outcome for a in outbox.deliver_due()] == ["delivered"]
        strictly_valid(lis.received[0])
        pid = segments(lis.received[0], "PID")[0]
        assert pid[3] == "MRN-77^^^&1.2.840.99999.2&ISO^MR" and pid[5] == "Doe^Jane"
        assert segments(lis.received[0], "ORC")[0][2] == "PL-1001^^1.2.840.99999.1^ISO"
    finally:
        lis.close()


def test_open_filter_applies_before_the_limit(make_settings, redis_client) -> None:
    store, specimens = ResultStore(redis_client), SpecimenStore(redis_client)
    for i in range(8):
        store.store(result(f"o{i}", specimen=f"O-{i}", cells=[cell("benign", 0.9)]))
        if i < 6:
            specimens.complete(f"O-{i}", "api")
    with serve_http(create_app(make_settings(), redis_client)) as api:
        page = api.get("/specimens?status=open&limit=1").json()
        assert [s["specimen_id"] for s in page["items"]] == ["O-6"]
        page = api.get(f"/specimens?status=open&limit=1&after={page['next']}").json()
        assert [s["specimen_id"] for s in page["items"]] == ["O-7"]
        last = api.get(f"/specimens?status=open&limit=1&after={page['next']}").json()
        assert last["items"] == [] and last["next"] == page["next"]


def test_a_lis_simulator_orders_and_files_the_result_end_to_end(
    tmp_path: Path, tiny_models
) -> None:
    """From a fresh start: order in over MLLP, frames in, ORU^R01 out to the simulator."""
    lis = Listener()
    order_port = free_port()
    daemon = start_daemon(
        tmp_path / "d", tiny_models,
        lis={"mllp": {"host": "127.0.0.1", "port": lis.port, "retry_initial_seconds": 0.5},
             "listen": {"host": "127.0.0.1", "port": order_port}, "processing_id": "T"},
    )
    try:
        def ordered() -> bool:
            try:
                return read_ack(send(order_port, oml_o33("ORD1", "PL-77", "ACC-77")))[0] == "AA"
            except OSError:
                return False  # the listener child is still starting

        wait_for(ordered, 30, "the order listener to accept the order")
        for i in range(2):
            write_frame(daemon.inbox / "ACC-77", f"f{i}.jpg", synthetic_jpeg(800 + i, 2))
        (daemon.inbox / "ACC-77" / ".complete").write_bytes(b"")
        wait_for(lambda: lis.received, 60, "the ORU^R01 for ACC-77")
        oru = lis.received[0]
        strictly_valid(oru)
        msh = segments(oru, "MSH")[0]
        assert msh[8] == "ORU^R01^ORU_R01" and msh[10] == "T"  # MSH-11 from config
        pid = segments(oru, "PID")[0]
        assert pid[3] == "MRN-1001^^^HOSP^MR~AB123^^^NATION^NI"
        assert pid[5] == "O'Neil^Ann \\T\\ Jo" and pid[7] == "19800102" and pid[8] == "F"
        orc, obr = segments(oru, "ORC")[0], segments(oru, "OBR")[0]
        assert orc[1] == "RE" and orc[2] == "PL-77^HOSP" and orc[3] == "ACC-77^LEUKOSCOPE"
        assert obr[2] == "PL-77^HOSP" and obr[3] == "ACC-77^LEUKOSCOPE"
        assert obr[4].startswith("wbc-all-subtype-panel^")
        assert segments(oru, "SPM")[0][2] == "^ACC-77&LEUKOSCOPE"
        codes = [f[3].split("^")[0] for f in segments(oru, "OBX")]
        assert "all-lymphoid-share" in codes and "cells-unidentified" in codes
        assert not any(c.startswith("26446-5") for c in codes)
        with httpx.Client(base_url=daemon.api_url, timeout=10) as api:
            report = DiagnosticReport.model_validate(api.get("/specimens/ACC-77/fhir").json())
            assert report.basedOn[0].identifier.value == "PL-77"
            patient = next(r for r in report.contained if r.__resource_type__ == "Patient")
            assert patient.identifier[0].value == "MRN-1001"
            spec = api.get("/specimens/ACC-77").json()
            assert spec["ordered"] and spec["order"]["placer_order_number"] == "PL-77"
            # Completion sends a preliminary result; only sign-off at the review station
            # (issue 13) makes it final, as a new message filed against the same order.
            assert obr[25] == "P" and orc[5] == "IP" and report.status == "preliminary"
            verified = api.post("/specimens/ACC-77/verify")
            assert verified.status_code == 200 and verified.json()["outcome"] == "verified"

            def finals() -> list[str]:
                return [m for m in list(lis.received) if segments(m, "OBR")[0][25] == "F"]

            wait_for(finals, 60, "the final ORU^R01 for ACC-77")
            final = finals()[0]
            strictly_valid(final)
            assert segments(final, "MSH")[0][10] == "T"
            assert segments(final, "MSH")[0][9] != msh[9]  # its own control id (MSH-10)
            assert segments(final, "PID")[0][3] == pid[3]  # still the order's patient
            orc, obr = segments(final, "ORC")[0], segments(final, "OBR")[0]
            assert orc[2] == "PL-77^HOSP" and orc[5] == "CM"
            assert obr[25] == "F" and obr[32] == "anonymous"  # OBR-32: the verifier
            assert all(f[11] == "F" and f[16] == "anonymous" for f in segments(final, "OBX"))
            report = DiagnosticReport.model_validate(api.get("/specimens/ACC-77/fhir").json())
            assert report.status == "final" and report.basedOn[0].identifier.value == "PL-77"
            assert report.resultsInterpreter[0].reference == "#verifier"
    finally:
        daemon.stop()
        lis.close()

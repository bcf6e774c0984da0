"""A LIS client as a new user would be: `leukoscope run` with API keys, frames and a
`.complete` marker in the inbox, cursor polling of completed specimens across a restart,
MLLP push to a real listener; and the API process alone over HTTPS and without keys."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from daemon.api.auth import hash_key
from daemon.lis.hl7 import parse
from tests.conftest import REPO, free_port, start_daemon, synthetic_jpeg, wait_for, write_frame
from tests.test_lis import Listener

READ_KEY = "lis-read-key-for-tests"
INGEST_KEY = "rig-ingest-key-for-tests"
AUTH = {
    "keys": [
        {"name": "lis", "role": "read", "sha256": hash_key(READ_KEY)},
        {"name": "rig", "role": "ingest", "sha256": hash_key(INGEST_KEY)},
    ]
}


def call(url: str, key: str | None = READ_KEY, method: str = "GET", context=None):
    request = urllib.request.Request(url, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            body = response.read().decode()
            return response.status, body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(url: str, key: str | None = READ_KEY, context=None):
    code, body = call(url, key, context=context)
    return code, json.loads(body)


def poll_completed(api: str, cursor: str | None) -> tuple[list[str], str]:
    seen: list[str] = []
    while True:
        query = "?status=complete&limit=1" + (f"&after={cursor}" if cursor else "")
        code, page = get_json(f"{api}/specimens{query}")
        assert code == 200, page
        seen += [s["specimen_id"] for s in page["items"]]
        if page["next"] == cursor or not page["items"]:
            return seen, page["next"]
        cursor = page["next"]


def test_lis_polls_completed_specimens_once_across_restarts_and_gets_mllp_push(
    tmp_path: Path, tiny_models
) -> None:
    listener = Listener()
    overrides = {
        "auth": AUTH,
        "lis": {"mllp": {"host": "127.0.0.1", "port": listener.port, "retry_initial_seconds": 0.5},
                "hold_unordered": False},
        "specimens": {"complete_grace_seconds": 30},
    }
    daemon = start_daemon(tmp_path / "d", tiny_models, **overrides)
    try:
        api = daemon.api_url
        assert call(f"{api}/specimens", key=None)[0] == 401
        for i in range(4):
            write_frame(daemon.inbox / "SPEC-A", f"f{i}.jpg", synthetic_jpeg(500 + i, 2))
        (daemon.inbox / "SPEC-A" / ".complete").write_bytes(b"")
        for i in range(2):
            write_frame(daemon.inbox / "SPEC-B", f"f{i}.jpg", synthetic_jpeg(600 + i, 1))
        seen, cursor = [], None

        def completed() -> bool:
            nonlocal seen, cursor
            more, cursor = poll_completed(api, cursor)
            seen += more
            return bool(seen)

        wait_for(completed, 60, "SPEC-A to complete by its marker")
        assert seen == ["SPEC-A"]
        assert not (daemon.inbox / "SPEC-A" / ".complete").exists()
        code, spec = get_json(f"{api}/specimens/SPEC-A")
        assert spec["status"] == "complete" and spec["completed_by"] == "marker"
        assert spec["frames_done"] == 4 and spec["cells_classified"] == 8
        # preliminary until a reviewer verifies it (issue 13)
        assert spec["late_frames"] == 0 and spec["result_status"] == "preliminary"
        code, text = call(f"{api}/specimens/SPEC-A/fhir")
        report = DiagnosticReport.model_validate_json(text)
        assert report.status == "preliminary"
        code, text = call(f"{api}/specimens/SPEC-A/hl7")
        assert code == 200 and parse(text).validate()
        wait_for(lambda: listener.received, 30, "the MLLP push of SPEC-A")
        pushed = parse(listener.received[0])
        assert pushed.msh.msh_10.value == spec["control_id"]
        wait_for(
            lambda: get_json(f"{api}/specimens/SPEC-A")[1]["delivery"]["state"] == "delivered",
            10,
            "delivery recorded",
        )
        # A frame after completion: stored and flagged on the specimen, not folded in.
        write_frame(daemon.inbox / "SPEC-A", "late.jpg", synthetic_jpeg(700, 1))
        wait_for(
            lambda: get_json(f"{api}/specimens/SPEC-A")[1]["late_frames"] == 1, 60, "late frame"
        )
        assert get_json(f"{api}/specimens/SPEC-A")[1]["cells_classified"] == 8
        # The rig completes SPEC-B over the API with its ingest key (read may not).
        wait_for(
            lambda: get_json(f"{api}/specimens/SPEC-B")[1].get("frames_done") == 2, 60, "SPEC-B"
        )
        assert call(f"{api}/specimens/SPEC-B/complete", method="POST")[0] == 403
        assert call(f"{api}/specimens/SPEC-B/complete", INGEST_KEY, "POST")[0] == 200
        assert daemon.stop() == 0
        # Restart: the LIS keeps its cursor and sees SPEC-B once, SPEC-A never again.
        daemon = start_daemon(tmp_path / "d", tiny_models, **overrides)
        api = daemon.api_url
        more, cursor = poll_completed(api, cursor)
        assert more == ["SPEC-B"]
        assert poll_completed(api, cursor)[0] == []
        assert poll_completed(api, None)[0] == ["SPEC-A", "SPEC-B"]
        wait_for(lambda: len(listener.received) == 2, 30, "the MLLP push of SPEC-B")
        assert parse(listener.received[1]).msh.msh_10.value != spec["control_id"]
    finally:
        daemon.stop()
        listener.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def start_api(root: Path, redis_url: str, **config) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    data = {"data_dir": str(root / "var"), "redis": {"url": redis_url}, **config}
    data.setdefault("api", {})["port"] = port
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    log = root / "api.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSCOPE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "api", "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return process, log, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=15)


def test_api_serves_https_with_the_configured_certificate(tmp_path: Path, redis_url: str) -> None:
    certfile, keyfile = self_signed(tmp_path)
    process, log, port = start_api(
        tmp_path,
        redis_url,
        auth=AUTH,
        api={"tls": {"certfile": str(certfile), "keyfile": str(keyfile)}},
    )
    try:
        context = ssl.create_default_context(cafile=str(certfile))

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return call(f"https://127.0.0.1:{port}/healthz", None, context=context)[0] == 200
            except OSError:
                return False

        wait_for(up, 30, "the HTTPS API")
        code, page = get_json(f"https://127.0.0.1:{port}/specimens", context=context)
        assert code == 200 and page["items"] == []
        assert get_json(f"https://127.0.0.1:{port}/specimens", None, context=context)[0] == 401
        try:  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            raise AssertionError("plain HTTP answered")
        except (urllib.error.URLError, ConnectionError):
            pass
    finally:
        stop(process)


def test_without_keys_the_api_binds_to_loopback_only(tmp_path: Path, redis_url: str) -> None:
    process, log, port = start_api(tmp_path, redis_url, api={"host": "0.0.0.0"})
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return call(f"http://127.0.0.1:{port}/healthz", None)[0] == 200
            except OSError:
                return False

        wait_for(up, 30, "the API")
        text = log.read_text()
        assert "NO API KEYS CONFIGURED" in text
        listening = [json.loads(line) for line in text.splitlines() if '"api listening"' in line]
        assert listening and listening[-1]["host"] == "127.0.0.1"
        assert get_json(f"http://127.0.0.1:{port}/specimens", None)[0] == 200
    finally:
        stop(process)

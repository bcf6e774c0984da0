"""Slow clients cannot hold the API (issue 16): real sockets that send part of a request head
or body are answered 408 and closed by the server's own deadlines, while /healthz answers;
connections beyond api.max_connections get 503. Nothing here asserts a duration: each slow
socket must see the server close it, and the counts must say why."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator

import httpx
import uvicorn

from daemon.api.app import create_app
from daemon.api.server import server_config
from tests.conftest import free_port, wait_for


@contextlib.contextmanager
def serve_guarded(app, settings) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", port,
                                          app.state.http_stats))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the API server")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (EOF). A server that never
    closes makes recv time out: the test fails with socket.timeout."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_partial_heads_and_bodies_are_closed_and_healthz_answers(make_settings) -> None:
    settings = make_settings(api={"header_timeout_seconds": 1.0, "body_timeout_seconds": 1.0,
                                  "max_connections": 400})
    app = create_app(settings)
    with serve_guarded(app, settings) as port:
        partial_bodies, partial_heads = [], []
        for i in range(60):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /frames?specimen_id=S1&name=f%d.jpg HTTP/1.1\r\n"
                         b"Host: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n"
                         b"\r\n" % i + b"\xff\xd8" * 50)
            partial_bodies.append(sock)
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # head never ends
            partial_heads.append(sock)
        # Meanwhile an ordinary client is served.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
        for sock in partial_bodies:
            with sock:
                answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"request body not received in time" in answer
        for sock in partial_heads:
            with sock:
                answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            assert client.get("/healthz").status_code == 200
            metrics = client.get("/metrics").text
    for phase, count in (("head", 60), ("body", 60)):
        found = re.search(rf'^leukoscope_http_requests_timed_out_total{{phase="{phase}"}} (\S+)$',
                          metrics, re.M)
        assert found and float(found.group(1)) == count, (phase, found)


def test_a_dripping_client_is_closed_too(make_settings) -> None:
    """More bytes do not reset the deadline: one byte at a time never completes a head."""
    settings = make_settings(api={"header_timeout_seconds": 1.0})
    app = create_app(settings)
    with serve_guarded(app, settings) as port, socket.create_connection(
            ("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: a\r\n" * 200
        closed = False
        for byte in head:  # until the server gives up on us
            try:
                sock.sendall(bytes([byte]))
                ready = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                threading.Event().wait(0.02)
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = True
            assert ready == b"H"
            break
        assert closed, "the server read the whole dripped head without closing"
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_connections_over_the_cap_get_503(make_settings) -> None:
    settings = make_settings(api={"max_connections": 5, "header_timeout_seconds": 30.0})
    app = create_app(settings)
    with serve_guarded(app, settings) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for sock in held:  # heads begun, not finished: open connections
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: app.state.http_stats.connections is not None
                 and len(app.state.http_stats.connections) >= 5, 10, "5 open connections")
        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(extra).startswith(b"HTTP/1.1 503 ")
        for sock in held:
            sock.close()
        wait_for(lambda: len(app.state.http_stats.connections) == 0, 10, "connections closed")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            assert client.get("/healthz").status_code == 200
            metrics = client.get("/metrics").text
    assert re.search(r"^leukoscope_http_requests_refused_busy_total (\S+)$", metrics, re.M
                     ).group(1) == "1.0"

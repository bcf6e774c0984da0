"""The HTTP server: uvicorn with bounds on slow clients.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) and caps connections
(``limit_concurrency``), but it waits for ever for a request head or body that never
completes: 2,000 connections sending a few bytes each held the server and slowed
``/healthz`` to 4 s (issue 16). :class:`GuardedH11Protocol` is uvicorn's own h11 protocol
with two deadlines, read from h11's view of the client (``their_state``):

- *head*: from the connection (or the end of the previous response) until the request line
  and headers are complete: ``api.header_timeout_seconds``;
- *body*: from the headers until the whole body has arrived: ``api.body_timeout_seconds``.

A deadline is not reset by further bytes, so a client dripping one byte at a time is closed
too. The client gets ``408 Request Timeout`` (when no response has started) and the
connection is closed; the count is ``leukoscope_http_requests_timed_out_total{phase}``.
Requests refused by the connection cap are counted as
``leukoscope_http_requests_refused_busy_total``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.settings import Settings

log = logging.getLogger(__name__)

PHASES = ("head", "body")


class HttpStats(Collector):
    """Process-local counts of the server's bounds at work (event-loop thread only), exposed
    on /metrics by this API process."""

    def __init__(self) -> None:
        self.timed_out = dict.fromkeys(PHASES, 0)
        self.refused_busy = 0
        self.connections: set | None = None  # uvicorn's set of open connections, once serving
        self.max_connections: int | None = None

    def collect(self) -> Iterator:
        timed_out = CounterMetricFamily(
            "leukoscope_http_requests_timed_out_total",
            "Requests closed with 408 because their head (api.header_timeout_seconds) or body "
            "(api.body_timeout_seconds) did not arrive in time, by phase (this API process).",
            labels=["phase"])
        for phase in PHASES:
            timed_out.add_metric([phase], self.timed_out[phase])
        yield timed_out
        busy = CounterMetricFamily(
            "leukoscope_http_requests_refused_busy_total",
            "Requests answered 503 because api.max_connections connections were open "
            "(this API process).")
        busy.add_metric([], self.refused_busy)
        yield busy
        if self.connections is not None:
            open_now = GaugeMetricFamily(
                "leukoscope_http_connections",
                "Open HTTP connections of this API process (api.max_connections bounds them).")
            open_now.add_metric([], len(self.connections))
            yield open_now


def _timeout_response(phase: str) -> bytes:
    body = json.dumps({"detail": f"request {phase} not received in time"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
            + body)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines (see the module docstring)."""

    head_timeout: float = 10.0
    body_timeout: float = 120.0
    stats: HttpStats = HttpStats()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stats.connections = self.connections
        self._watch()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        # uvicorn answers 503 when a new request finds limit_concurrency connections open;
        # it only logs that, so count it here (same test, on the same set).
        if (self.cycle is not cycle and self.limit_concurrency is not None
                and len(self.connections) >= self.limit_concurrency):
            self.stats.refused_busy += 1
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()  # the next request's head is due now (keep-alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _watch(self) -> None:
        """Arm the deadline of the phase h11 says the client is in; keep it while the phase
        lasts (more bytes do not reset it)."""
        if self.transport is None or self.transport.is_closing():
            return self._cancel()
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return None
        self._cancel()
        if phase is not None:
            self._phase = phase
            timeout = self.head_timeout if phase == "head" else self.body_timeout
            self._deadline = self.loop.call_later(timeout, self._expired, phase)
        return None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.stats.timed_out[phase] += 1
        log.warning("slow client closed", extra={"phase": phase, "client": self.client})
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_timeout_response(phase))
        # the app reading the body (if any) sees http.disconnect once the connection is lost
        self.transport.close()


def server_config(app: Any, settings: Settings, host: str, port: int,
                  stats: HttpStats | None = None, **extra: Any) -> uvicorn.Config:
    """uvicorn's Config for the API with every bound from ``settings.api``."""
    api = settings.api
    stats = stats if stats is not None else HttpStats()
    stats.max_connections = api.max_connections
    protocol = type("ApiH11Protocol", (GuardedH11Protocol,), {
        "head_timeout": api.header_timeout_seconds,
        "body_timeout": api.body_timeout_seconds,
        "stats": stats,
    })
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, http=protocol,
        timeout_keep_alive=int(max(1, round(api.keep_alive_seconds))),
        limit_concurrency=api.max_connections,
        h11_max_incomplete_event_size=api.max_header_bytes,
        **extra,
    )

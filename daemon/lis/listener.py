"""The MLLP order listener: OML^O33 and ORM^O01 from the LIS, answered with an ACK each.

One thread per connection (a LIS usually keeps one open); each MLLP frame
(``0x0B message 0x1C 0x0D``) is one message. The order is stored and linked to its specimen
(``daemon.store.orders``) *before* the ACK is written, so an ``AA`` means it is in Redis.
``AE`` (with ERR-3 from HL7 table 0357 and the reason in MSA-3/ERR-8) when the order cannot
be taken (no placer order number, no or an invalid specimen id, a conflicting order, an order
control other than NW/SC/XO/RP); ``AR`` for a message that is not an order, or when Redis is
unavailable (the LIS should resend). Configured by ``lis.listen``; ``leukoscope run`` starts
it as the supervised child ``leukoscope lis``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading

import redis

from daemon import telemetry
from daemon.lis.hl7 import ORDER_TYPES, AckError, OrderError, ack, message_type, read_order
from daemon.lis.mllp import END_BLOCK, START_BLOCK, frame
from daemon.settings import Settings
from daemon.store.orders import OrderConflict, OrderStore

log = logging.getLogger(__name__)


def _count(message: str, outcome: str) -> None:
    """leukoscope_orders_received_total for an order message (OML^O33, ORM^O01); another
    message type or unreadable bytes are no order and are not counted."""
    try:
        source = ORDER_TYPES.get(message_type(message))
    except ValueError:
        return
    if source is not None:
        telemetry.count("leukoscope_orders_received_total", {"source": source,
                                                               "outcome": outcome})


def handle_message(message: str, settings: Settings, orders: OrderStore) -> str:
    """The ACK (ER7) for one incoming message; stores the order it carries."""
    try:
        order = read_order(message, settings.lis)
        has_frames = orders.save(order)
    except OrderError as exc:
        log.warning("order refused", extra={"ack": exc.code, "error": str(exc)})
        _count(message, "refused")
        try:
            return ack(message, exc.code, str(exc), AckError(exc.hl7_error, str(exc)))
        except ValueError:  # not even an MSH to answer to
            raise
    except OrderConflict as exc:
        log.warning("order refused", extra={"ack": "AE", "error": str(exc)})
        _count(message, "refused")
        return ack(message, "AE", str(exc),
                   AckError("207^Application internal error^HL70357", str(exc)))
    except redis.RedisError as exc:
        log.error("order not stored: redis unavailable", extra={"error": str(exc)})
        return ack(message, "AR", "temporarily unavailable; resend",
                   AckError("207^Application internal error^HL70357", "redis unavailable"))
    _count(message, "accepted")
    text = "order accepted" + ("; specimen already has results" if has_frames else "")
    return ack(message, "AA", text)


class _Handler(socketserver.BaseRequestHandler):
    server: OrderListener

    def handle(self) -> None:
        sock: socket.socket = self.request
        limit = self.server.settings.lis.listen.max_message_bytes  # type: ignore[union-attr]
        sock.settimeout(self.server.settings.lis.listen.idle_timeout_seconds)  # type: ignore
        buffer = b""
        while not self.server.stopping:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                start = buffer.find(START_BLOCK)
                end = buffer.find(END_BLOCK, start + 1) if start != -1 else -1
                if start == -1 or end == -1:
                    break
                message = buffer[start + 1 : end].decode("utf-8", "replace")
                buffer = buffer[end + len(END_BLOCK):]
                try:
                    reply = handle_message(message, self.server.settings, self.server.orders)
                except ValueError as exc:  # no MSH: nothing to acknowledge
                    log.warning("unreadable MLLP message dropped", extra={"error": str(exc)})
                    continue
                try:
                    sock.sendall(frame(reply))
                except OSError:
                    return
            if len(buffer) > limit:
                log.warning("MLLP frame over lis.listen.max_message_bytes; closing",
                            extra={"client": self.client_address[0]})
                return


class OrderListener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        assert settings.lis.listen is not None, "lis.listen is not configured"
        self.settings = settings
        self.orders = OrderStore(client)
        self.stopping = False
        listen = settings.lis.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.address_family = family
        super().__init__((listen.host, listen.port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="mllp-orders", daemon=True)
        thread.start()
        log.info("MLLP order listener", extra={"host": self.server_address[0], "port": self.port})
        return thread

    def stop(self) -> None:
        self.stopping = True
        self.shutdown()
        self.server_close()


def run_listener(settings: Settings) -> int:
    """``leukoscope lis``: serve orders until SIGTERM/SIGINT."""
    from daemon.shutdown import on_stop_signals
    from daemon.store.connection import connect

    if settings.lis.listen is None:
        log.error("lis.listen is not configured: no order listener to run")
        return 2
    listener = OrderListener(settings, connect(settings))
    stop = threading.Event()
    on_stop_signals(stop.set, "order listener")
    listener.start()
    stop.wait()
    listener.stop()
    return 0

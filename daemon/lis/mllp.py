"""MLLP push of completed specimens' ORU^R01 to the LIS, from an outbox kept in Redis.

Completing a specimen puts it in the outbox (``lks:outbox``, a sorted set scored by the next
attempt time) in the same script that completes it, so nothing is lost across restarts of the
daemon or of Redis. The sender opens a connection per message, writes the MLLP frame
(``0x0B message 0x1C 0x0D``) and reads one ACK: ``AA`` whose MSA-2 is the message's control
id means delivered; ``AE``/``AR``, an ACK for another message, no ACK within
``ack_timeout_seconds``, or a connection closed or refused, mean retry with exponential
backoff (``retry_initial_seconds`` doubling up to ``retry_max_seconds``). A message that
cannot be built, is answered with a code in ``park_on``, or failed ``max_attempts`` times is
parked (``store/outbox.py``): out of the way of other specimens' messages until an operator
retries it. Only the housekeeping lease holder sends (``deliver_due``'s ``still_leader``
is checked before every message), so two API replicas never push the same one. The control id
(MSH-10) is unique per specimen message and kept across retries, so the LIS can drop a
duplicate; an ACK arriving for a message already delivered changes nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from daemon import telemetry
from daemon.lis.hl7 import oru_r01, read_ack, to_er7
from daemon.settings import Settings
from daemon.store import outbox
from daemon.store.orders import hold_unordered
from daemon.store.specimens import SpecimenStore

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
PARKED_LISTED = 20  # parked messages listed in /status (all are counted)
END_BLOCK = b"\x1c\x0d"


class MllpError(Exception):
    def __init__(self, outcome: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome  # timeout | error | rejected
        self.code = code  # the ACK code (AE, AR, CE, CR) of a rejection


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


def read_frame(sock: socket.socket, deadline: float) -> str:
    """Read one MLLP frame; raises MllpError on timeout or a closed connection."""
    buffer = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MllpError("timeout", "no ACK before the timeout")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise MllpError("timeout", "no ACK before the timeout") from exc
        if not chunk:
            raise MllpError("error", "connection closed before a complete ACK")
        buffer += chunk
        start = buffer.find(START_BLOCK)
        end = buffer.find(END_BLOCK, start + 1)
        if start != -1 and end != -1:
            return buffer[start + 1 : end].decode("utf-8", "replace")


def exchange(host: str, port: int, message: str, connect_timeout: float, ack_timeout: float) -> str:
    """Send one message and return the ACK's ER7."""
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        raise MllpError("error", f"cannot connect to {host}:{port}: {exc}") from exc
    with sock:
        try:
            sock.sendall(frame(message))
        except OSError as exc:
            raise MllpError("error", f"send failed: {exc}") from exc
        return read_frame(sock, time.monotonic() + ack_timeout)


@dataclass
class Attempt:
    specimen_id: str
    outcome: str  # delivered | rejected | timeout | error
    detail: str = ""


class Outbox:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.specimens = SpecimenStore(client, settings.lis.statement, mllp_enabled=True)

    def pending(self) -> int:
        return outbox.pending(self.client)

    def deliver_due(self, now: float | None = None, limit: int = 20,
                    still_leader: Callable[[], bool] | None = None) -> list[Attempt]:
        """Attempt the messages due at ``now``. ``still_leader`` is asked before each one:
        once it says no (the housekeeping lease was lost), the rest is left to the new
        holder, so no message is pushed by two processes."""
        mllp = self.settings.lis.mllp
        if mllp is None:
            return []
        now = time.time() if now is None else now
        done = []
        for specimen_id in outbox.due(self.client, now, limit):
            if still_leader is not None and not still_leader():
                log.warning("housekeeping lease lost; leaving the outbox to its new holder")
                break
            try:
                done.append(self.attempt(specimen_id))
            except redis.RedisError:
                raise  # Redis away: the whole step waits (housekeeping's Outage)
            except Exception as exc:  # this specimen's own fault: park it, go on
                log.exception("LIS message failed unexpectedly; parked",
                              extra={"specimen_id": specimen_id})
                done.append(self._park(specimen_id, "error", f"error: {exc!r}"[:500]))
        return done

    def attempt(self, specimen_id: str) -> Attempt:
        mllp = self.settings.lis.mllp
        assert mllp is not None
        specimen = self.specimens.get(specimen_id)
        if specimen is None or specimen.control_id is None:
            outbox.drop(self.client, specimen_id)
            return Attempt(specimen_id, "error", "specimen gone")
        control_id = specimen.control_id
        if not specimen.ordered and self.settings.lis.hold_unordered:
            hold_unordered(self.client, specimen_id)  # released when its order arrives
            log.info("unordered specimen held until an order names it",
                     extra={"specimen_id": specimen_id})
            return Attempt(specimen_id, "held", "unordered")
        try:
            er7 = to_er7(oru_r01(specimen, self.settings.lis, control_id))
        except Exception as exc:  # no retry builds it: park it, never block the others
            log.exception("ORU^R01 could not be built; message parked",
                          extra={"specimen_id": specimen_id})
            outbox.count_attempt(self.client, specimen_id)
            return self._park(specimen_id, "unbuildable", f"cannot build ORU^R01: {exc}")
        try:
            reply = exchange(
                mllp.host, mllp.port, er7, mllp.connect_timeout_seconds, mllp.ack_timeout_seconds
            )
            try:
                code, acked_id, text = read_ack(reply)
            except ValueError as exc:
                raise MllpError("error", f"unreadable ACK: {exc}") from exc
            if acked_id != control_id:
                raise MllpError("error", f"ACK for message {acked_id!r}, not {control_id!r}")
            if code not in ("AA", "CA"):
                raise MllpError("rejected", f"{code}: {text}".rstrip(": "), code)
        except MllpError as exc:
            attempts = outbox.count_attempt(self.client, specimen_id)
            self._count(exc.outcome)
            if exc.code is not None and exc.code in mllp.park_on:
                return self._park(specimen_id, exc.outcome,
                                  f"{exc.outcome}: {exc} (lis.mllp.park_on)")
            if mllp.max_attempts is not None and attempts >= mllp.max_attempts:
                return self._park(specimen_id, exc.outcome, f"{exc.outcome}: {exc} (after "
                                  f"{attempts} attempts, lis.mllp.max_attempts)")
            delay = min(mllp.retry_max_seconds, mllp.retry_initial_seconds * 2 ** (attempts - 1))
            outbox.schedule_retry(self.client, specimen_id, f"{exc.outcome}: {exc}",
                                  time.time() + delay)
            log.warning(
                "LIS delivery failed; will retry",
                extra={
                    "specimen_id": specimen_id,
                    "control_id": control_id,
                    "outcome": exc.outcome,
                    "error": str(exc),
                    "attempts": attempts,
                    "retry_in_seconds": round(delay, 3),
                },
            )
            return Attempt(specimen_id, exc.outcome, str(exc))
        outbox.mark_delivered(self.client, specimen_id, time.time())
        self._count("delivered")
        log.info(
            "specimen delivered to the LIS",
            extra={"specimen_id": specimen_id, "control_id": control_id},
        )
        return Attempt(specimen_id, "delivered")

    def _park(self, specimen_id: str, outcome: str, reason: str) -> Attempt:
        outbox.park(self.client, specimen_id, reason, time.time())
        self._count("parked")
        log.error("LIS message parked: an operator must retry it (leukoscope outbox retry)",
                  extra={"specimen_id": specimen_id, "outcome": outcome, "reason": reason})
        return Attempt(specimen_id, "parked", reason)

    def _count(self, outcome: str) -> None:
        telemetry.count("leukoscope_lis_messages_total", {"outcome": outcome})


def outbox_status(client: redis.Redis, settings: Settings) -> dict | None:
    """For /status and metrics: the MLLP target and what waits in the outbox."""
    mllp = settings.lis.mllp
    if mllp is None:
        return None
    members = outbox.entries(client)
    dead = outbox.parked(client, limit=PARKED_LISTED)
    held = [e.specimen_id for e in members if e.next_at == float("inf")]
    retrying = [(e.specimen_id, e.last_error) for e in members if e.attempts > 0]
    return {
        "target": f"{mllp.host}:{mllp.port}",
        "outbox_pending": len(members),
        "outbox_retrying": len(retrying),
        "retrying": [{"specimen_id": s, "last_error": e} for s, e in retrying[:20]],
        "outbox_unordered": len(held),
        "unordered": held[:20],
        # dead letters: out of the outbox until an operator retries them
        "outbox_parked": outbox.parked_count(client),
        "parked": [{"specimen_id": e.specimen_id, "parked_at": e.parked_at,
                    "attempts": e.attempts, "reason": e.reason} for e in dead],
    }

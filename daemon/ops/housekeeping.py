"""Background upkeep run by the API process: specimen lifecycle, MLLP outbox, retention.

Several API processes may run; a Redis lease (``lks:housekeeper``, a redis-py ``Lock``) lets
one do the work at a time. Every step is idempotent (completion and delivery are keyed by
specimen), so a lease lost mid-step costs at most a repeated check.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis
from redis.exceptions import LockError

from daemon.lis.mllp import Outbox
from daemon.settings import Settings
from daemon.store.connection import Outage
from daemon.store.keys import HOUSEKEEPER_LEASE_KEY, LOG_KEY, RESULT_KEY, STORED_AT_KEY
from daemon.store.specimens import SpecimenStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0
RETENTION_EVERY_SECONDS = 600.0


def trim_results(client: redis.Redis, older_than: float, batch: int = 500) -> int:
    """Delete frames' results (keys and log entries) stored before ``older_than`` (Unix s).

    Specimens, reports and the audit trail are separate keys and stay.
    """
    cutoff_ms = int(older_than * 1000)
    removed = 0
    while True:
        entries = client.xrange(LOG_KEY, min="-", max=f"{cutoff_ms}-0", count=batch)
        entries = [(i, f) for i, f in entries if int(i.split(b"-")[0]) < cutoff_ms]
        if not entries:
            return removed
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in entries:
            pipe.delete(RESULT_KEY.format(fields[b"frame_id"].decode()))
            pipe.hdel(STORED_AT_KEY, fields[b"frame_id"].decode())
            pipe.xdel(LOG_KEY, entry_id)
        pipe.execute()
        removed += len(entries)


class Housekeeper:
    def __init__(self, settings: Settings, client: redis.Redis, interval: float = 0.5) -> None:
        self.settings = settings
        self.client = client
        self.interval = interval
        self.token = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        # The lease: redis-py's Lock (SET NX PX to take it, a token-checked script to renew).
        self.lease = client.lock(
            HOUSEKEEPER_LEASE_KEY, timeout=LEASE_SECONDS, blocking=False, thread_local=False
        )
        self.specimens = SpecimenStore(client, mllp_enabled=settings.lis.mllp is not None)
        self.outbox = Outbox(client, settings)
        self.stopping = threading.Event()
        self._next_retention = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def leader(self) -> bool:
        """Renew our lease, or take it if free; False while another process holds it."""
        if self.lease.local.token is not None:
            try:
                self.lease.reacquire()  # back to a full LEASE_SECONDS, only if still ours
                return True
            except LockError:
                self.lease.local.token = None  # expired and maybe taken: try afresh
        return self.lease.acquire(blocking=False, token=self.token)

    def step(self) -> None:
        if not self.leader():
            return
        spec = self.settings.specimens
        self.specimens.tick(spec.idle_complete_seconds, spec.complete_grace_seconds)
        self.outbox.deliver_due()
        days = self.settings.results.retention_days
        if days is not None and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_EVERY_SECONDS
            removed = trim_results(self.client, time.time() - days * 86400)
            if removed:
                log.info("results past retention trimmed", extra={"removed": removed})

    def run(self) -> None:
        outage = Outage("housekeeping")
        while not self.stopping.is_set():
            wait = self.interval
            try:
                self.step()
                outage.ok()
            except redis.RedisError as exc:
                wait = max(wait, outage.failed(exc))
            except Exception:  # never let upkeep die silently
                log.exception("housekeeping step failed")
            self.stopping.wait(wait)

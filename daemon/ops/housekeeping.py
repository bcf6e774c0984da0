"""Background upkeep run by the API process: specimen lifecycle, MLLP outbox, retention.

Several API processes may run; a Redis lease (``lks:housekeeper``, a redis-py ``Lock``) lets
one do the work at a time. The lease outlives one MLLP delivery (connect + ACK timeouts) and
a thread renews it every third of its time while its holder lives, so a slow LIS never hands
the outbox to a second API replica mid-delivery; a stopping process releases it. Every step is idempotent (completion and
delivery are keyed by specimen), so a lease lost mid-step costs at most a repeated check, and
each part of a step runs on its own: one that fails (logged) never stops the others.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
from pathlib import Path

import redis
from redis.exceptions import LockError

from daemon import telemetry
from daemon.lis.mllp import Outbox
from daemon.ops import disk_bounds
from daemon.settings import Settings
from daemon.store import audit, frames
from daemon.store.connection import Outage, housekeeper_lease
from daemon.store.frames import FrameStore
from daemon.store.orders import forget_unmatched
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore, trim_results
from daemon.store.specimens import SpecimenStore, forget_completed

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0
RETENTION_EVERY_SECONDS = 600.0
DISK_BOUNDS_EVERY_SECONDS = 600.0  # walks the archive: not more often
JANITOR_EVERY_SECONDS = 60.0
#: an in-flight record whose result is this old is an orphan: the capture or API process
#: that made it would have archived the original and forgotten it within seconds
INFLIGHT_GRACE_SECONDS = 600.0
AUDIT_BATCH = 1000


def archive_audit(entries: list[audit.AuditEntry], folder: Path) -> list[Path]:
    """Append ``entries`` to ``folder/audit-<UTC day>.jsonl`` (one file per day of the
    entries: rotated by date), fsynced before returning. At least once: a crash between this
    and the removal from Redis writes an entry twice (same ``cursor``), never loses it."""
    folder.mkdir(parents=True, exist_ok=True)
    by_day: dict[str, list[str]] = {}
    for entry in entries:
        day = datetime.datetime.fromtimestamp(entry.time, datetime.UTC).strftime("%Y-%m-%d")
        by_day.setdefault(day, []).append(entry.model_dump_json(exclude_none=True))
    written = []
    for day, lines in sorted(by_day.items()):
        path = folder / f"audit-{day}.jsonl"
        with open(path, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        written.append(path)
    return written


def trim_audit(client: redis.Redis, folder: Path | None, retention_days: float | None,
               max_entries: int | None, now: float | None = None) -> int:
    """Bound the audit stream by age and length; each entry goes to ``folder`` (when given)
    before it is removed from Redis. Returns how many left Redis."""
    now = time.time() if now is None else now
    removed = 0
    while True:
        batch: list[audit.AuditEntry] = []
        if retention_days is not None:
            batch = audit.oldest(client, AUDIT_BATCH, before=now - retention_days * 86400)
        if not batch and max_entries is not None:
            excess = audit.length(client) - max_entries
            if excess > 0:
                batch = audit.oldest(client, min(excess, AUDIT_BATCH))
        if not batch:
            return removed
        if folder is not None:
            archive_audit(batch, folder)
        removed += audit.remove(client, [e.cursor for e in batch])


def sweep_inflight(client: redis.Redis, older_than: float) -> int:
    """Forget in-flight records of frames whose result was stored before ``older_than``,
    whoever made them (a pushed frame whose API died, a rig whose capture is gone). Safe:
    a file still in an inbox is offered again and the queue answers 'stored'."""
    queue, results = FrameQueue(client), ResultStore(client)
    forgotten = 0
    for record in queue.inflight():
        result = results.get(record.frame_id)
        if result is not None and result.completed_at < older_than:
            queue.forget(record.frame_id)
            forgotten += 1
    return forgotten


def forget_specimens(client: redis.Redis, older_than: float) -> int:
    """Forget the complete specimens past their retention (store/specimens.py), each one
    audited as ``specimen.forgotten`` and counted, then the orders as old whose specimen
    never came (``order.forgotten``); returns how many specimens went."""
    done = forget_completed(client, older_than)
    for specimen_id in done.specimen_ids:
        audit.record(client, "housekeeping", "system", "specimen.forgotten",
                     specimen_id=specimen_id, detail="specimens.retention_days")
        telemetry.count("leukoscope_specimens_forgotten_total")
    orders = forget_unmatched(client, older_than)
    for placer in orders:
        audit.record(client, "housekeeping", "system", "order.forgotten",
                     detail=f"placer {placer}: no specimen within specimens.retention_days")
    if done.specimen_ids or done.owed or orders:
        log.info("specimens past retention forgotten", extra={
            "forgotten": len(done.specimen_ids), "kept_owed_to_lis": done.owed,
            "orders_without_specimen_forgotten": len(orders)})
    return len(done.specimen_ids)


class Housekeeper:
    def __init__(self, settings: Settings, client: redis.Redis, interval: float = 0.5,
                 lease_seconds: float | None = None) -> None:
        self.settings = settings
        self.client = client
        self.interval = interval
        self.token = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        # The lease: redis-py's Lock (SET NX PX to take it, a token-checked script to renew).
        mllp = settings.lis.mllp
        delivery = 0.0 if mllp is None else mllp.connect_timeout_seconds + mllp.ack_timeout_seconds
        # renewed every third of its time by renew(), so one slow delivery never outlasts it
        # (``lease_seconds``: tests make it shorter than one delivery to prove the renewal)
        self.lease_seconds = lease_seconds or max(LEASE_SECONDS, delivery + 5.0)
        self.lease = housekeeper_lease(client, self.lease_seconds)
        self.specimens = SpecimenStore(client, mllp_enabled=settings.lis.mllp is not None)
        self.outbox = Outbox(client, settings)
        self.stopping = threading.Event()
        self._next_retention = 0.0
        self._next_specimen_retention = 0.0
        # exported at 0 from the start (an unlabelled counter exists only once created), so
        # rate() has data before the first specimen is forgotten
        telemetry.metric("leukoscope_specimens_forgotten_total")
        self._next_janitor = 0.0
        self._next_disk = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)
        self._thread.start()
        threading.Thread(target=self.renew, name="housekeeping-lease", daemon=True).start()

    def renew(self) -> None:
        """Keep the lease while this process holds it, also during a long step."""
        while not self.stopping.wait(self.lease_seconds / 3):
            if self.lease.local.token is None:
                continue
            try:
                self.lease.reacquire()
            except LockError:
                self.lease.local.token = None
            except redis.RedisError:
                pass  # the step's own Outage handling logs it

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease.local.token is not None:  # hand the upkeep over at once
            try:
                self.lease.release()
            except (LockError, redis.RedisError):
                pass

    def leader(self) -> bool:
        """Renew our lease, or take it if free; False while another process holds it."""
        if self.lease.local.token is not None:
            try:
                self.lease.reacquire()  # back to a full LEASE_SECONDS, only if still ours
                return True
            except LockError:
                self.lease.local.token = None  # expired and maybe taken: try afresh
        return self.lease.acquire(blocking=False, token=self.token)

    def holds_lease(self) -> bool:
        """Is the lease still ours (checked in Redis, token and all)? Asked before each MLLP
        message: a holder whose lease expired (a stall longer than it) stops sending."""
        try:
            return self.lease.local.token is not None and self.lease.owned()
        except redis.RedisError:
            return False

    def step(self) -> None:
        if not self.leader():
            return
        spec = self.settings.specimens
        self._part("specimen lifecycle", lambda: self.specimens.tick(
            spec.idle_complete_seconds, spec.complete_grace_seconds))
        self._part("LIS outbox", lambda: self.outbox.deliver_due(still_leader=self.holds_lease))
        self._part("retention", self._retention)
        self._part("disk bounds", self._disk_bounds)

    def _part(self, what: str, work) -> None:
        try:
            work()
        except redis.RedisError:
            raise
        except Exception:  # one part's failure must not stop the others
            log.exception("housekeeping part failed", extra={"part": what})

    def _retention(self) -> None:
        days = self.settings.results.retention_days
        if days is not None and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_EVERY_SECONDS
            removed = trim_results(self.client, time.time() - days * 86400)
            if removed:
                log.info("results past retention trimmed", extra={"removed": removed})
        days = self.settings.specimens.retention_days
        if days is not None and time.monotonic() >= self._next_specimen_retention:
            self._next_specimen_retention = time.monotonic() + RETENTION_EVERY_SECONDS
            forget_specimens(self.client, time.time() - days * 86400)
        if time.monotonic() >= self._next_janitor:
            self._next_janitor = time.monotonic() + JANITOR_EVERY_SECONDS
            trail = self.settings.audit
            moved = trim_audit(self.client, self.settings.audit_dir if trail.archive else None,
                               trail.retention_days, trail.max_entries)
            if moved:
                log.info("audit entries moved out of redis", extra={
                    "removed": moved, "archive": str(self.settings.audit_dir)})
            forgotten = sweep_inflight(self.client, time.time() - INFLIGHT_GRACE_SECONDS)
            if forgotten:
                log.warning("orphaned in-flight records forgotten", extra={"count": forgotten})
            swept = frames.sweep(self.client, FrameStore(self.settings.frames_dir),
                                 self.settings.queue.frame_store_orphan_seconds)
            if swept:
                log.warning("orphaned frames deleted from the frame store",
                            extra={"count": swept, "directory": str(self.settings.frames_dir)})

    def _disk_bounds(self) -> None:
        """Keep the archive, the quarantine and the audit files within their configured bounds."""
        if time.monotonic() < self._next_disk:
            return
        self._next_disk = time.monotonic() + DISK_BOUNDS_EVERY_SECONDS
        archive, trail = self.settings.archive, self.settings.audit
        if archive.retention_days is not None or archive.max_bytes is not None:
            # specimens with a frame in flight keep every original: a pushed frame's copy is
            # archived before its result is stored
            busy = {record.specimen_id for record in FrameQueue(self.client).inflight()}
            pruned = disk_bounds.prune_archive(self.settings.archive_dir, archive.retention_days,
                                               archive.max_bytes, busy)
            if pruned.files:
                log.info("archived originals deleted to stay within bounds", extra={
                    "files": pruned.files, "bytes": pruned.bytes})
        quarantine = self.settings.quarantine
        pruned = disk_bounds.prune_quarantine(self.settings.quarantine_dir,
                                              quarantine.retention_days, quarantine.max_bytes)
        if pruned.files:
            log.info("quarantined files deleted to stay within bounds", extra={
                "files": pruned.files, "bytes": pruned.bytes})
        pruned = disk_bounds.prune_audit_files(self.settings.audit_dir, trail.files_retention_days,
                                               trail.files_max_bytes)
        if pruned.files:
            log.info("audit files deleted to stay within bounds", extra={
                "files": pruned.files, "bytes": pruned.bytes})

    def run(self) -> None:
        Outage("housekeeping").run(self.stopping, self._tick)

    def _tick(self) -> float:
        try:
            self.step()
        except redis.RedisError:
            raise  # an outage: Outage.run waits it out
        except Exception:  # never let upkeep die silently
            log.exception("housekeeping step failed")
        return self.interval

"""The installation's state read from Redis: for /status, /readyz and the live gauges."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import redis
from pydantic import BaseModel, Field

from daemon import __version__
from daemon.domain.results import ModelRef
from daemon.lis.mllp import outbox_status
from daemon.ops.metrics import gauge
from daemon.settings import Settings
from daemon.store import audit, heartbeats, keys
from daemon.store.connection import (
    ZSET_COMPACT_ENTRIES,
    CompactZsets,
    compact_zsets_warning,
    ensure_compact_zsets,
    ping,
    used_memory_bytes,
)
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore

log = logging.getLogger(__name__)


class WorkerStatus(BaseModel):
    id: str
    host: str
    pid: int | None = None
    provider: str
    last_heartbeat: float
    heartbeat_age_seconds: float
    alive: bool
    frames_done: int
    models: dict[str, ModelRef] = {}
    gpus: list[dict] = []


class CaptureStatus(BaseModel):
    id: str
    host: str | None = None
    state: str
    directory: str | None = None
    frames_queued: int = 0
    frames_rejected: int = 0
    last_heartbeat: float
    heartbeat_age_seconds: float
    alive: bool


class Backlog(BaseModel):
    length: int
    pending: int
    max_backlog: int


class ZsetCompaction(BaseModel):
    """The server's compact-zset setting (``connection.ensure_compact_zsets``)."""

    setting: str | None = Field(description="the name the server knows it by; null when it "
                                "refused CONFIG")
    entries: int | None = Field(description="zset members kept compact (a specimen's frame "
                                "index); null when the server refused CONFIG")
    wanted: int = ZSET_COMPACT_ENTRIES
    ok: bool = Field(description="false: set it by hand, a frame costs ~130 bytes, not ~60")
    refused: str | None = None


ZSET_CHECK_SECONDS = 60.0  # checked (and raised again, after a Redis restart) this often


class CompactZsetCheck:
    """Applies ``ensure_compact_zsets`` at start-up and again at most every
    ZSET_CHECK_SECONDS (a restarted Redis of your own loses a CONFIG SET); warns once per
    process when the server keeps fewer entries compact and will not be told."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._state: CompactZsets | None = None
        self._checked_at = 0.0
        self._warned = False

    def state(self) -> CompactZsets:
        """The server's setting (raised first when low); ``redis.RedisError`` when down."""
        with self._lock:
            if self._state is None or time.monotonic() - self._checked_at > ZSET_CHECK_SECONDS:
                self._state = ensure_compact_zsets(self.client)
                self._checked_at = time.monotonic()
                if not self._state.ok and not self._warned:
                    self._warned = True
                    log.warning(compact_zsets_warning(self._state), extra={
                        "refused": self._state.refused, "entries": self._state.entries})
            return self._state

    def report(self) -> ZsetCompaction:
        state = self.state()
        return ZsetCompaction(setting=state.setting, entries=state.entries, ok=state.ok,
                              refused=state.refused)


DATA_DIR_PARTS = ("archive", "quarantine", "redis", "audit", "frames")  # frames: the frame store
DISK_SCAN_SECONDS = 60.0  # the data dir is walked at most this often (an archive is large)


class Storage(BaseModel):
    """What the installation holds, to size and alert on (issue 16)."""

    redis_used_memory_bytes: int
    redis_memory_budget_bytes: int
    audit_entries: int
    data_dir: str
    data_dir_bytes: dict[str, int]  # archive, quarantine, redis, audit, frames, other
    data_dir_scanned_at: float
    # parts with a configured byte bound (archive.max_bytes, audit.files_max_bytes): the
    # housekeeping leader deletes the oldest files above it (daemon/ops/disk_bounds.py)
    data_dir_limit_bytes: dict[str, int] = Field(default_factory=dict)
    filesystem_free_bytes: int
    filesystem_total_bytes: int
    redis_zset_compaction: ZsetCompaction | None = None


def _tree_bytes(folder: Path) -> int:
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class DiskUsage:
    """Bytes under data_dir by part, walked at most every DISK_SCAN_SECONDS (cached)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int]] | None = None

    def parts(self) -> tuple[float, dict[str, int]]:
        with self._lock:
            if self._cached is None or time.time() - self._cached[0] > DISK_SCAN_SECONDS:
                parts = {part: _tree_bytes(self.data_dir / part) for part in DATA_DIR_PARTS}
                parts["other"] = max(0, _tree_bytes(self.data_dir) - sum(parts.values()))
                self._cached = (time.time(), parts)
            return self._cached


class StatusReport(BaseModel):
    version: str
    uptime_seconds: float
    redis: str
    results_stored: int
    unassigned_frames: int = Field(
        default=0, description="stored results of frames with no specimen (straight in the "
        "inbox, misplaced): never reported; listed at GET /specimens/unassigned")
    backlog: Backlog
    captures: list[CaptureStatus]
    workers: list[WorkerStatus]
    models: list[ModelRef]
    lis: dict | None = None  # MLLP push: target and outbox (daemon.lis.mllp.outbox_status)
    storage: Storage | None = None


class Readiness(BaseModel):
    ready: bool
    reasons: list[str]


class StatusReader:
    def __init__(self, client: redis.Redis, settings: Settings, started_at: float) -> None:
        self.client = client
        self.settings = settings
        self.started_at = started_at
        self.queue = FrameQueue(client)
        self.results = ResultStore(client)
        self.disk = DiskUsage(settings.data_dir)
        self.zsets = CompactZsetCheck(client)

    def storage(self) -> Storage:
        scanned_at, parts = self.disk.parts()
        try:
            usage = shutil.disk_usage(self.settings.data_dir)
            free, total = usage.free, usage.total
        except OSError:
            free = total = 0
        return Storage(
            redis_used_memory_bytes=used_memory_bytes(self.client),
            redis_memory_budget_bytes=self.settings.redis.memory_budget_bytes,
            audit_entries=audit.length(self.client),
            data_dir=str(self.settings.data_dir),
            data_dir_bytes=parts,
            data_dir_scanned_at=scanned_at,
            data_dir_limit_bytes={part: limit for part, limit in (
                ("archive", self.settings.archive.max_bytes),
                ("quarantine", self.settings.quarantine.max_bytes),
                ("audit", self.settings.audit.files_max_bytes)) if limit is not None},
            filesystem_free_bytes=free,
            filesystem_total_bytes=total,
            redis_zset_compaction=self.zsets.report(),
        )

    def report(self) -> StatusReport:
        stale = self.settings.workers.stale_after_seconds
        # A dead worker stays listed (alive: false) for a while so ops see it, then goes.
        heartbeats.prune(
            self.client, keys.WORKERS_KEY, self.settings.workers.forget_after_seconds
        )
        workers = [
            WorkerStatus.model_validate(w)
            for w in heartbeats.members(self.client, keys.WORKERS_KEY, stale)
        ]
        captures = [
            CaptureStatus.model_validate(c)
            for c in heartbeats.members(self.client, keys.CAPTURES_KEY, stale)
        ]
        models: dict[str, ModelRef] = {}
        for worker in workers:
            if worker.alive:
                for ref in worker.models.values():
                    models[ref.sha256] = ref
        return StatusReport(
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 3),
            redis="up",
            results_stored=self.results.count(),
            unassigned_frames=self.results.unassigned_count(),
            backlog=Backlog(
                length=self.queue.backlog(),
                pending=self.queue.pending(),
                max_backlog=self.settings.queue.max_backlog,
            ),
            captures=captures,
            workers=workers,
            models=list(models.values()),
            lis=outbox_status(self.client, self.settings),
            storage=self.storage(),
        )

    def readiness(self, scope: str = "process") -> Readiness:
        """Can this API process serve (``process``: Redis answers, the app has started)? A
        load balancer or Kubernetes must not take the only API out of its Service because
        workers lag: that is ``/status`` and the alerts. ``installation`` adds the checks
        /readyz made before: a live worker, the backlog within ``queue.ready_max_backlog``."""
        try:
            ping(self.client)  # also fails while Redis loads its AOF (BusyLoadingError)
        except redis.RedisError as exc:
            return Readiness(ready=False, reasons=[f"redis unreachable: {exc}"])
        if scope == "process":
            return Readiness(ready=True, reasons=[])
        report = self.report()
        reasons = []
        if not any(w.alive for w in report.workers):
            reasons.append(
                "no worker has sent a heartbeat in the last "
                f"{self.settings.workers.stale_after_seconds:g} s (models not loaded?)"
            )
        bound = self.settings.queue.ready_max_backlog
        if report.backlog.length > bound:
            reasons.append(
                f"backlog of {report.backlog.length} frames is over queue.ready_max_backlog "
                f"({bound})"
            )
        return Readiness(ready=not reasons, reasons=reasons)

    def live_gauges(self):
        """Gauge families computed at scrape time."""
        report = self.report()
        if report.lis is not None:
            yield gauge(
                "leukoscope_lis_outbox_messages",
                "Specimen messages waiting for the LIS's ACK, by state.",
                ["state"],
                [
                    (["waiting"], report.lis["outbox_pending"] - report.lis["outbox_retrying"]
                     - report.lis.get("outbox_unordered", 0)),
                    (["retrying"], report.lis["outbox_retrying"]),
                    (["unordered"], report.lis.get("outbox_unordered", 0)),
                    # dead letters: not in the outbox any more, waiting for an operator
                    (["parked"], report.lis.get("outbox_parked", 0)),
                ],
            )
        yield gauge(
            "leukoscope_queue_backlog_frames",
            "Frames queued and not yet stored.",
            samples=[([], report.backlog.length)],
        )
        yield gauge(
            "leukoscope_queue_pending_frames",
            "Frames held by a worker, not yet acked.",
            samples=[([], report.backlog.pending)],
        )
        yield gauge(
            "leukoscope_workers_up",
            "Workers with a fresh heartbeat.",
            samples=[([], sum(w.alive for w in report.workers))],
        )
        yield gauge(
            "leukoscope_worker_heartbeat_age_seconds",
            "Seconds since a worker's beat.",
            ["worker"],
            [([w.id], w.heartbeat_age_seconds) for w in report.workers],
        )
        yield gauge(
            "leukoscope_capture_up",
            "1 while the capture of a rig sends heartbeats.",
            ["rig"],
            [([c.id], float(c.alive)) for c in report.captures],
        )
        yield gauge(
            "leukoscope_model_info",
            "Models the live workers run.",
            ["kind", "name", "version", "sha256"],
            [
                (list(labels), 1.0)
                for labels in sorted(
                    {
                        (kind, ref.name, ref.version, ref.sha256)
                        for w in report.workers
                        if w.alive
                        for kind, ref in w.models.items()
                    }
                )
            ],
        )
        gpus = [(w.id, g) for w in report.workers if w.alive for g in w.gpus]
        if gpus:
            yield gauge(
                "leukoscope_gpu_utilization_ratio",
                "GPU busy share (NVML), per worker.",
                ["worker", "gpu"],
                [([wid, str(g["index"])], g["utilization_ratio"]) for wid, g in gpus],
            )
            yield gauge(
                "leukoscope_gpu_memory_used_bytes",
                "GPU memory in use (NVML), per worker.",
                ["worker", "gpu"],
                [([wid, str(g["index"])], g["memory_used_bytes"]) for wid, g in gpus],
            )
        if report.storage is not None:
            store = report.storage
            for name, help_text, value in (
                ("leukoscope_redis_memory_used_bytes",
                 "Memory Redis uses (INFO memory used_memory).", store.redis_used_memory_bytes),
                ("leukoscope_redis_memory_budget_bytes",
                 "Redis memory the installation is sized for (redis.memory_budget_bytes).",
                 store.redis_memory_budget_bytes),
                ("leukoscope_audit_entries", "Audit entries held in Redis.", store.audit_entries),
                ("leukoscope_data_dir_filesystem_free_bytes",
                 "Free bytes on data_dir's filesystem.", store.filesystem_free_bytes),
                ("leukoscope_data_dir_filesystem_size_bytes", "Size of data_dir's filesystem.",
                 store.filesystem_total_bytes),
                ("leukoscope_intake_min_free_bytes",
                 "Intake stops below this many free bytes on data_dir's filesystem "
                 "(queue.min_free_bytes; 0: no floor).", self.settings.queue.min_free_bytes or 0),
            ):
                yield gauge(name, help_text, samples=[([], value)])
            if store.redis_zset_compaction is not None:
                yield gauge("leukoscope_redis_zset_compact",
                            "1 when Redis keeps a specimen's frame index compact (zset-max-"
                            f"listpack-entries >= {ZSET_COMPACT_ENTRIES}); 0: set it by hand.",
                            samples=[([], float(store.redis_zset_compaction.ok))])
            yield gauge("leukoscope_data_dir_bytes",
                        "Disk bytes under data_dir, by part (walked at most once a minute).",
                        ["part"], [([part], n) for part, n in sorted(store.data_dir_bytes.items())])
            if store.data_dir_limit_bytes:
                yield gauge("leukoscope_data_dir_limit_bytes",
                            "Configured byte bound of a part of data_dir (archive.max_bytes, "
                            "audit.files_max_bytes); the oldest files above it are deleted.",
                            ["part"], [([part], n) for part, n in
                                       sorted(store.data_dir_limit_bytes.items())])
        yield gauge(
            "leukoscope_build_info", "leukoscope version.", ["version"], [([__version__], 1.0)]
        )

"""The installation's state read from Redis: for /status, /readyz and the live gauges."""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel

from daemon import __version__
from daemon.domain.results import ModelRef
from daemon.lis.mllp import outbox_status
from daemon.ops.metrics import gauge
from daemon.settings import Settings
from daemon.store import heartbeats, keys
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore


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


class StatusReport(BaseModel):
    version: str
    uptime_seconds: float
    redis: str
    results_stored: int
    backlog: Backlog
    captures: list[CaptureStatus]
    workers: list[WorkerStatus]
    models: list[ModelRef]
    lis: dict | None = None  # MLLP push: target and outbox (daemon.lis.mllp.outbox_status)


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
            backlog=Backlog(
                length=self.queue.backlog(),
                pending=self.queue.pending(),
                max_backlog=self.settings.queue.max_backlog,
            ),
            captures=captures,
            workers=workers,
            models=list(models.values()),
            lis=outbox_status(self.client, self.settings),
        )

    def readiness(self) -> Readiness:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return Readiness(ready=False, reasons=[f"redis unreachable: {exc}"])
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
        yield gauge(
            "leukoscope_build_info", "leukoscope version.", ["version"], [([__version__], 1.0)]
        )

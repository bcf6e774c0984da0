"""Process-local metrics: ``prometheus_client`` objects in the process that observes them.

What lives here measures what one process did or saw (a worker's stage timings and batch
sizes, a live source's frames and reconnects, the LIS pushes of the housekeeping leader, an
API process's orders and refused requests, the supervisor's restarts). None of it needs
exactly-once: a frame analysed twice after a crash *was* analysed twice. The per-frame and
per-cell counts that must be exactly once across hosts and restarts stay in Redis, counted
in the script that stores the result (``daemon.store.counters``).

Several processes on one host share one exposition through ``prometheus_client``'s
multiprocess mode: ``leukoscope run`` points ``PROMETHEUS_MULTIPROC_DIR`` at
``<data_dir>/metrics`` (emptied at start) for itself and its children, each process writes
its values to its own files there, the API's ``/metrics`` merges them
(``MultiProcessCollector``), and the supervisor calls ``mark_process_dead`` for a child that
exited, so its live gauges disappear while its counts stay. Those counts are folded into one
file per kind (``counter_exited.db``, ``histogram_exited.db``) and the child's own files
deleted: prometheus_client keeps a file per process that ever lived and every scrape reads
them all, so a child restarting every 30 s (the supervisor's longest backoff) would add two
files 2,880 times a day and slow each scrape without end (prometheus/client_python#275). A scrape
and a fold exclude each other by a lock file in the folder, so no scrape sees a count twice
or not at all. A worker, capture or LIS
listener started alone (another host) serves its own metrics on ``metrics.port``
(:func:`serve`). Metrics are created on first use, so a process that switches to
multiprocess mode (the supervisor) can do so before its first observation.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, multiprocess, start_http_server, values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROLES = ("capture", "worker", "api", "lis", "supervisor")


@dataclass(frozen=True)
class LocalMetric:
    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    # Label values known in advance: each combination is exported at 0 before the first
    # event, so rate()/increase() have data (a restarts panel shows 0, not "no data").
    known: dict[str, tuple[str, ...]] = field(default_factory=dict)


CATALOGUE: dict[str, LocalMetric] = {
    m.name: m
    for m in (
        LocalMetric(
            "leukoscope_stage_seconds", "histogram",
            "Time per frame in each worker stage (queue_wait, decode, rescale, segment, crop, "
            "classify, store).", ("stage",), STAGE_BUCKETS),
        LocalMetric("leukoscope_batch_frames", "histogram", "Frames per worker batch.", (),
                    BATCH_BUCKETS),
        LocalMetric("leukoscope_batch_cells", "histogram", "Cell crops per worker batch.", (),
                    BATCH_BUCKETS),
        LocalMetric("leukoscope_rig_history_errors_total", "counter",
                    "Reads (before a batch) and appends (after it) of the rigs' shared "
                    "red-cell history that Redis refused; the worker rescaled with its own.",
                    ("op",), known={"op": ("read", "append")}),
        LocalMetric("leukoscope_stream_frames_seen_total", "counter",
                    "Frames read from a live source (capture.source: opencv).", ("rig",)),
        LocalMetric("leukoscope_stream_frames_gated_total", "counter",
                    "Live frames dropped by field gating (moving, settling, already captured).",
                    ("rig",)),
        LocalMetric("leukoscope_stream_frames_captured_total", "counter",
                    "Live frames let through by field gating (then quality-checked and queued).",
                    ("rig",)),
        LocalMetric("leukoscope_camera_reconnects_total", "counter",
                    "Live source reconnects, by reason (open_failed, read_failures, stalled, "
                    "ended).", ("rig", "reason")),
        LocalMetric("leukoscope_inbox_folders_removed_total", "counter",
                    "Inbox folders removed by capture after staying empty for "
                    "capture.empty_folder_seconds."),
        LocalMetric("leukoscope_worker_restarts_total", "counter",
                    "Child processes restarted by the supervisor.", ("role",),
                    known={"role": ("capture", "worker", "api", "lis", "redis")}),
        LocalMetric("leukoscope_lis_messages_total", "counter",
                    "ORU^R01 messages pushed to the LIS over MLLP, by outcome (delivered, "
                    "rejected, timeout, error; parked: a message moved to the dead letters).",
                    ("outcome",),
                    known={"outcome": ("delivered", "rejected", "timeout", "error", "parked")}),
        LocalMetric("leukoscope_auth_failures_total", "counter",
                    "API requests refused (401, 403), by reason (missing, malformed, "
                    "unknown_key, session: an expired or invalid review-station cookie, "
                    "ui_login: an unknown key at POST /ui/login; 403: role, a key whose role "
                    "does not allow the route, csrf: a missing or wrong CSRF token).",
                    ("reason",),
                    known={"reason": ("missing", "malformed", "unknown_key", "session",
                                      "ui_login", "role", "csrf")}),
        LocalMetric("leukoscope_audit_refusals_dropped_total", "counter",
                    "Refused requests (401, 403) not written to the audit trail because their "
                    "client or the process was over its audit budget "
                    "(audit.refused_*_per_minute), by reason.", ("reason",),
                    known={"reason": ("missing", "malformed", "unknown_key", "session",
                                      "ui_login", "role", "csrf")}),
        LocalMetric("leukoscope_archive_originals_deleted_total", "counter",
                    "Archived originals deleted by the housekeeping leader to keep the archive "
                    "within archive.retention_days (reason age) or archive.max_bytes (size).",
                    ("reason",), known={"reason": ("age", "size")}),
        LocalMetric("leukoscope_quarantine_files_deleted_total", "counter",
                    "Quarantined files (each with its reason note) deleted by the housekeeping "
                    "leader to keep the quarantine within quarantine.retention_days (reason "
                    "age) or quarantine.max_bytes (size).",
                    ("reason",), known={"reason": ("age", "size")}),
        LocalMetric("leukoscope_specimens_forgotten_total", "counter",
                    "Complete specimens deleted from Redis by the housekeeping leader past "
                    "specimens.retention_days (each with its review, late frames and order; "
                    "one whose LIS message is still owed is kept)."),
        LocalMetric("leukoscope_audit_files_deleted_total", "counter",
                    "Daily audit files (audit-<day>.jsonl) deleted by the housekeeping leader "
                    "to keep them within audit.files_retention_days (reason age) or "
                    "audit.files_max_bytes (size).", ("reason",),
                    known={"reason": ("age", "size")}),
        LocalMetric("leukoscope_orders_received_total", "counter",
                    "Orders from the LIS, by source (hl7-oml, hl7-orm, fhir) and outcome "
                    "(accepted, refused).", ("source", "outcome"),
                    known={"source": ("hl7-oml", "hl7-orm", "fhir"),
                           "outcome": ("accepted", "refused")}),
        LocalMetric("leukoscope_processes", "gauge",
                    "leukoscope processes alive, by role (per scraped process or host; a "
                    "child that exited is removed by its supervisor).", ("role",)),
    )
}

# The registry of this process's own metrics (not prometheus_client's global one, so a
# library's default collectors never mix in).
LOCAL = CollectorRegistry(auto_describe=True)
_created: dict[str, Any] = {}


def multiprocess_dir() -> Path | None:
    """The shared metrics folder when this process is in multiprocess mode."""
    path = os.environ.get(ENV)
    return Path(path) if path else None


def use_multiprocess_dir(path: Path) -> None:
    """Start multiprocess mode in ``path``, emptied first (the supervisor, before it starts
    its children, which inherit the environment and so the mode)."""
    if _created:
        raise RuntimeError("multiprocess mode must start before the first metric is used")
    path = path.resolve()  # the children may resolve a relative one elsewhere
    shutil.rmtree(path, ignore_errors=True)  # values of a previous run are not this run's
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    # prometheus_client picks its value class when imported; this process imported it before
    # it knew the folder, so pick again (metrics look the class up when they are created).
    values.ValueClass = values.get_value_class()


def metric(name: str) -> Any:
    """The ``prometheus_client`` object of a catalogued metric, created on first use."""
    found = _created.get(name)
    if found is not None:
        return found
    spec = CATALOGUE[name]
    kwargs: dict[str, Any] = {"labelnames": spec.labels, "registry": LOCAL}
    if spec.kind == "counter":
        made: Any = Counter(spec.name, spec.help, **kwargs)
    elif spec.kind == "histogram":
        made = Histogram(spec.name, spec.help, buckets=spec.buckets, **kwargs)
    else:
        made = Gauge(spec.name, spec.help, multiprocess_mode="livesum", **kwargs)
    if spec.known and set(spec.known) == set(spec.labels):
        for combination in itertools.product(*(spec.known[label] for label in spec.labels)):
            made.labels(*combination)
    _created[name] = made
    return made


def count(name: str, labels: dict[str, str] | None = None, amount: float = 1.0) -> None:
    """Add ``amount`` to a counter."""
    counter = metric(name)
    (counter.labels(**labels) if labels else counter).inc(amount)


def observe(name: str, value: float, labels: dict[str, str] | None = None) -> None:
    """One observation of a histogram."""
    histogram = metric(name)
    (histogram.labels(**labels) if labels else histogram).observe(value)


def announce(role: str) -> None:
    """This process is alive in ``role`` (``leukoscope_processes``); also creates the
    counters with known label values, so every process exports them from its start."""
    metric("leukoscope_processes").labels(role=role).set(1)
    for name, spec in CATALOGUE.items():
        if spec.known:
            metric(name)


#: Kinds whose values add up across processes, so a dead process's can be folded into one
#: file. Gauges are all ``livesum``: ``mark_process_dead`` deletes a dead process's.
FOLDED_KINDS = ("counter", "histogram")
FOLDED_NAME = "exited"  # counter_exited.db: parsed by MultiProcessCollector like a pid's
LOCK_NAME = ".lock"  # not *.db: never read as metrics


def process_exited(pid: int) -> None:
    """Bookkeeping for a child that exited: its live gauges leave the exposition, its counts
    and observations stay (they happened), folded into the ``*_exited.db`` files."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, str(path))
        try:
            fold_exited(path, pid)
        except Exception:  # bookkeeping of metrics must never stop the supervisor
            log.exception("metric files of an exited process not folded; they stay as they are",
                          extra={"child_pid": pid, "directory": str(path)})


def fold_exited(path: Path, pid: int) -> None:
    """Add the values of the exited process ``pid``'s counter and histogram files (raw
    mmap values: counts, bucket counts, sums) into ``<kind>_exited.db`` and delete its files.
    Called by the one process that started ``pid`` (its supervisor), after it exited."""
    for kind in FOLDED_KINDS:
        dead = path / f"{kind}_{pid}.db"
        if not dead.exists():
            continue
        folded = path / f"{kind}_{FOLDED_NAME}.db"
        totals: dict[str, float] = {}
        for source in (folded, dead):
            if source.exists():
                for key, value, _stamp, _pos in MmapedDict.read_all_values_from_file(str(source)):
                    totals[key] = totals.get(key, 0.0) + value
        building = path / f".{kind}_{FOLDED_NAME}.building"  # not *.db: no scrape reads it
        building.unlink(missing_ok=True)
        out = MmapedDict(str(building))
        try:
            for key, value in totals.items():
                out.write_value(key, value, 0.0)
        finally:
            out.close()
        with _folder_lock(path, fcntl.LOCK_EX):  # a scrape sees both files or the fold
            os.replace(building, folded)
            dead.unlink()


@contextlib.contextmanager
def _folder_lock(path: Path, how: int) -> Iterator[None]:
    with open(path / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, how)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Merged(multiprocess.MultiProcessCollector):
    """prometheus_client's collector of a multiprocess folder, reading under a shared lock
    so a fold (:func:`fold_exited`) never lands between two of its file reads."""

    def collect(self) -> list[Metric]:
        with _folder_lock(Path(self._path), fcntl.LOCK_SH):
            return list(super().collect())


def reset() -> None:
    """Forget this process's metrics (tests run many apps in one process; each starts at 0)."""
    for made in _created.values():
        LOCAL.unregister(made)
    _created.clear()


class _Local(Collector):
    def collect(self):
        return LOCAL.collect()


def collector() -> Collector:
    """What to add to an exposition for the process-local metrics: every process of this
    multiprocess folder merged, or this process's own."""
    path = multiprocess_dir()
    if path is not None:
        return _Merged(None, str(path))
    return _Local()


def serve(port: int, host: str) -> None:
    """Serve the process-local metrics on ``host:port`` (a process started alone on a host
    where no API renders them), from a background thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector())
    start_http_server(port, addr=host, registry=registry)

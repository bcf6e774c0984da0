"""Counters and histograms kept in Redis, so they are right across processes, hosts and restarts.

Counters and histograms are fields of one Redis hash (``keys.METRICS_KEY``), incremented by
whichever process observes the event (histograms are stored per bucket interval, made
cumulative at scrape time). This module is the catalogue and the field encoding; the API's
collector (``daemon.ops.metrics``) turns the hash into Prometheus families. The result
counters are incremented in the same Redis script that stores the result
(``scripts/store_result.lua``), so a reprocessed frame is never counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import redis

from daemon.store.keys import METRICS_KEY

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


CATALOGUE: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef(
            "leukoscope_frames_captured_total",
            "counter",
            "Frames taken by capture and queued (or rejected at capture).",
            ("rig",),
        ),
        MetricDef(
            "leukoscope_frames_processed_total",
            "counter",
            "Frames with a stored result, by outcome (done, rejected, failed).",
            ("rig", "outcome"),
        ),
        MetricDef(
            "leukoscope_frames_rejected_total",
            "counter",
            "Frames refused, by reason (bounded set of reason codes).",
            ("rig", "reason"),
        ),
        MetricDef(
            "leukoscope_cells_classified_total",
            "counter",
            "Cells classified, by rig and predicted class.",
            ("rig", "class"),
        ),
        MetricDef(
            "leukoscope_frame_latency_seconds",
            "histogram",
            "Time from capture to stored result, by rig.",
            ("rig",),
            LATENCY_BUCKETS,
        ),
        MetricDef(
            "leukoscope_stage_seconds",
            "histogram",
            "Time per frame in each worker stage (queue_wait, decode, segment, crop, "
            "classify, store).",
            ("stage",),
            STAGE_BUCKETS,
        ),
        MetricDef(
            "leukoscope_batch_frames", "histogram", "Frames per worker batch.", (), BATCH_BUCKETS
        ),
        MetricDef(
            "leukoscope_batch_cells", "histogram", "Cell crops per worker batch.", (), BATCH_BUCKETS
        ),
        MetricDef(
            "leukoscope_stream_frames_seen_total",
            "counter",
            "Frames read from a live source (capture.source: opencv).",
            ("rig",),
        ),
        MetricDef(
            "leukoscope_stream_frames_gated_total",
            "counter",
            "Live frames dropped by field gating (moving, settling, already captured).",
            ("rig",),
        ),
        MetricDef(
            "leukoscope_stream_frames_captured_total",
            "counter",
            "Live frames let through by field gating (then quality-checked and queued).",
            ("rig",),
        ),
        MetricDef(
            "leukoscope_camera_reconnects_total",
            "counter",
            "Live source reconnects, by reason (open_failed, read_failures, stalled, ended).",
            ("rig", "reason"),
        ),
        MetricDef(
            "leukoscope_worker_restarts_total",
            "counter",
            "Child processes restarted by the supervisor.",
            ("role",),
        ),
        MetricDef(
            "leukoscope_lis_messages_total",
            "counter",
            "ORU^R01 messages pushed to the LIS over MLLP, by outcome (delivered, rejected, "
            "timeout, error).",
            ("outcome",),
        ),
    )
}

Increment = tuple[str, float]

@lru_cache(maxsize=4096)
def _field_cached(name: str, labels: tuple[tuple[str, str], ...], part: str) -> str:
    return json.dumps([name, dict(labels), part], sort_keys=True, separators=(",", ":"))


def _field(name: str, labels: dict[str, str], part: str = "") -> str:
    # Field names repeat endlessly on the per-frame path: build each one once.
    return _field_cached(name, tuple(sorted(labels.items())), part)


def counter(name: str, labels: dict[str, str] | None = None, amount: float = 1) -> list[Increment]:
    assert CATALOGUE[name].kind == "counter", name
    return [(_field(name, labels or {}), amount)]


def histogram(name: str, value: float, labels: dict[str, str] | None = None) -> list[Increment]:
    """Increments recording one observation: its own bucket, count and sum.

    Buckets are stored per interval (the smallest ``le`` that holds the value) and made
    cumulative at scrape time, so an observation writes 3 fields instead of one per bucket.
    """
    metric = CATALOGUE[name]
    assert metric.kind == "histogram", name
    labels = labels or {}
    bucket = next((le for le in metric.buckets if value <= le), "+Inf")
    return [
        (_field(name, labels, f"le={bucket}"), 1.0),
        (_field(name, labels, "count"), 1.0),
        (_field(name, labels, "sum"), float(value)),
    ]


def merge(increments: Iterable[Increment]) -> list[Increment]:
    """Sum increments of the same field (a worker batch sends each field once)."""
    total: dict[str, float] = {}
    for field_name, amount in increments:
        total[field_name] = total.get(field_name, 0.0) + amount
    return list(total.items())


def flatten(increments: Iterable[Increment]) -> list[str | float]:
    """[field, amount, field, amount, ...] for a Redis script's ARGV."""
    flat: list[str | float] = []
    for field_name, amount in increments:
        flat.extend((field_name, amount))
    return flat


def record(client: redis.Redis, increments: Iterable[Increment]) -> None:
    """Apply increments outside a result store (capture counters, restarts)."""
    pipe = client.pipeline(transaction=False)
    for field_name, amount in increments:
        pipe.hincrbyfloat(METRICS_KEY, field_name, amount)
    pipe.execute()

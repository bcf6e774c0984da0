"""The counts that must be exactly once across hosts and restarts, kept in Redis.

A frame can be processed twice (a worker dies between storing and acknowledging; another
worker, maybe on another host, claims it). Only a count made in the same Redis script as the
write it counts is then right, so these are fields of one Redis hash (``keys.METRICS_KEY``):
the per-frame and per-cell counters and histograms incremented by the store script
(``scripts/store_result.lua``, only when the result is new) and ``frames_captured`` by the
enqueue script (only for a frame never queued or stored before). They are also what the
specimen totals and the LIS reports must agree with. Histograms are stored per bucket
interval, made cumulative at scrape time. This module is the catalogue and the field
encoding; the API's collector (``daemon.ops.metrics``) turns the hash into Prometheus
families. Everything else (stage timings, batch sizes, live-source, LIS, auth and restart
counters) is process-local, in ``daemon.telemetry``.

Rig label values are capped (``RigLabels``): the first ``MAX_RIGS`` rigs seen are admitted to
a Redis set shared by every process (``keys.RIGS_KEY``); the samples of any later rig (a
pushed frame may name any rig) are folded into ``rig="other"`` at scrape time, in the hash
too, so neither Prometheus nor Redis grows with the number of rig ids. To start over, delete
``METRICS_KEY`` and ``RIGS_KEY`` together and restart the API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import get_args

import redis

from daemon.domain.results import ScaleSource
from daemon.store import scripts
from daemon.store.keys import METRICS_KEY, RIGS_KEY

MAX_RIGS = 32
OTHER = "other"  # label value of any rig beyond the cap, and of an unknown reason code

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Drift measures. Means come from rate(_sum)/rate(_count) and are exact; buckets are for
# quantiles and heatmaps, so they are dense where rigs work.
# µm per pixel: 0.025 (100x oil, small camera pixels) to 3.2 (low power) in steps of 2^(1/3).
SCALE_BUCKETS = tuple(round(0.025 * 2 ** (k / 3), 4) for k in range(22))
# Enlargement applied to reach the models' scale (frame µm/px over the models' µm/px);
# daemon/scale.py bounds it to 1/16..4. Steps of 2^(1/4).
FACTOR_BUCKETS = tuple(round(2 ** (k / 4), 4) for k in range(-16, 9))
# Background grey level 0-255: brightfield backgrounds sit around 180-250.
BRIGHTNESS_BUCKETS = (100.0, 125.0, 150.0, 160.0, 170.0, 180.0, 190.0, 200.0, 210.0, 220.0,
                      230.0, 240.0, 250.0, 255.0)
# Background hue angle (CIELAB, degrees): 30-degree sectors, for the distribution only (an
# angle has no arithmetic mean; the mean colour comes from the a*/b* histogram).
HUE_BUCKETS = tuple(float(d) for d in range(30, 361, 30))
# Stain hue (YIQ chroma angle of the stained pixels after the gain, degrees, 0-360): the
# training fields lie around 155 (p10-p90 145-166); 2.5-degree steps where rigs work, so a rig
# 8 degrees off its usual shows in the mean (exact: rate(_sum)/rate(_count)) and quantiles.
STAIN_HUE_BUCKETS = tuple(float(d) for d in (90, 110, 120, 130, 135, 140)) + tuple(
    142.5 + 2.5 * k for k in range(15)) + (185.0, 195.0, 210.0, 240.0, 360.0)
# Background CIELAB a* (green-red) and b* (blue-yellow) in 8-bit encoding (value + 128, as
# OpenCV stores them; 128: neutral): observations must not be negative, or rate() of _sum
# breaks (and prometheus_client drops _sum for negative buckets).
AB_OFFSET = 128.0
AB_BUCKETS = tuple(AB_OFFSET + d for d in (-30.0, -20.0, -15.0, -10.0, -8.0, -6.0, -4.0, -2.0,
                                           0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0))
# Calibrated probability of the called class (1/5 at worst with five outputs).
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
SCALE_SOURCES: tuple[str, ...] = get_args(ScaleSource)  # configured, file, estimated, assumed


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
            "Cells classified, by rig and called class (the four classes or unidentified).",
            ("rig", "class"),
        ),
        MetricDef(
            "leukoscope_cell_confidence",
            "histogram",
            "Calibrated probability of each cell's called class, by rig.",
            ("rig",),
            CONFIDENCE_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frames_review_total",
            "counter",
            "Analysed frames whose result needs review (each frame once, whatever its reasons).",
            ("rig",),
        ),
        MetricDef(
            "leukoscope_frame_review_reasons_total",
            "counter",
            "Review reasons of analysed frames, by reason (a frame may give several).",
            ("rig", "reason"),
        ),
        MetricDef(
            "leukoscope_frames_scale_source_total",
            "counter",
            "Analysed frames by where their scale came from (configured, file, estimated, "
            "assumed).",
            ("rig", "source"),
        ),
        MetricDef(
            "leukoscope_frame_scale_um_per_pixel",
            "histogram",
            "Pixel size of analysed frames as captured (micrometres), by rig and scale source; "
            "frames of unknown scale are not observed.",
            ("rig", "source"),
            SCALE_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_scale_factor",
            "histogram",
            "Enlargement applied to bring a frame to the models' scale (frame um/px over the "
            "models' um/px; 1: as captured), by rig; frames of assumed scale are not observed.",
            ("rig",),
            FACTOR_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_background_brightness",
            "histogram",
            "Background grey level (0-255) of analysed frames before normalisation, by rig.",
            ("rig",),
            BRIGHTNESS_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_background_hue_degrees",
            "histogram",
            "Background hue angle in CIELAB (degrees, 0-360) of analysed frames, by rig "
            "(distribution only: average the chromaticity histogram for the mean colour).",
            ("rig",),
            HUE_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_stain_hue_degrees",
            "histogram",
            "Stain hue of analysed frames (YIQ chroma angle of the stained pixels after the "
            "background gain, degrees 0-360; the models' reference is the segmenter manifest's "
            "acquisition.stain_hue_deg), by rig, before any stain calibration turns the frame.",
            ("rig",),
            STAIN_HUE_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_background_chromaticity",
            "histogram",
            "Background colour of analysed frames: CIELAB a* (axis=a, green-red) and b* "
            "(axis=b, blue-yellow) in 8-bit encoding (value + 128; 128: neutral), by rig.",
            ("rig", "axis"),
            AB_BUCKETS,
        ),
        MetricDef(
            "leukoscope_frame_latency_seconds",
            "histogram",
            "Time from capture to stored result, by rig.",
            ("rig",),
            LATENCY_BUCKETS,
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
    A value that is not finite is not observed (it would poison the sum for good).
    """
    metric = CATALOGUE[name]
    assert metric.kind == "histogram", name
    if not math.isfinite(value):
        return []
    labels = labels or {}
    bucket = next((le for le in metric.buckets if value <= le), "+Inf")
    return [
        (_field(name, labels, f"le={bucket}"), 1.0),
        (_field(name, labels, "count"), 1.0),
        (_field(name, labels, "sum"), float(value)),
    ]


def chromaticity(hue_deg: float, chroma: float) -> tuple[float, float]:
    """8-bit CIELAB (a* + 128, b* + 128) of a colour given as hue angle (degrees) and chroma."""
    angle = math.radians(hue_deg)
    return (round(AB_OFFSET + chroma * math.cos(angle), 3),
            round(AB_OFFSET + chroma * math.sin(angle), 3))


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


class RigLabels:
    """Capped rig label values: the first ``cap`` rig ids seen are admitted (``RIGS_KEY``,
    shared by every process) and keep their own label; any other rig is ``other``.

    The admitted set is cached in the process and only grows, so a rig already admitted,
    or any rig once the set is full, costs no Redis round trip. ``""`` (no rig) and
    ``other`` are always label values and never take a place.
    """

    EXEMPT = frozenset(("", OTHER))

    def __init__(self, client: redis.Redis, cap: int = MAX_RIGS) -> None:
        self.client = client
        self.cap = cap
        self._admitted: set[str] = set()
        self._full = False
        self._admit = client.register_script(scripts.ADMIT_RIGS)

    def labels(self, rigs: Iterable[str]) -> dict[str, str]:
        """Label value of each rig id in ``rigs`` (admitting new ones while there is room)."""
        seen = set(rigs)
        new = sorted(seen - self._admitted - self.EXEMPT)
        if new and not self._full:
            members = self._admit(keys=[RIGS_KEY], args=[self.cap, *new])
            self._admitted = {m.decode() if isinstance(m, bytes) else m for m in members}
            self._full = len(self._admitted) >= self.cap
        return {r: r if r in self._admitted or r in self.EXEMPT else OTHER for r in seen}

    def label(self, rig: str) -> str:
        return self.labels((rig,))[rig]


class CounterHash:
    """The metrics hash read back, with rigs beyond the cap folded into ``other`` (there and
    in Redis: the fold moves each value atomically, so a racing increment is never lost)."""

    def __init__(self, client: redis.Redis, max_rigs: int = MAX_RIGS) -> None:
        self.client = client
        self.rigs = RigLabels(client, max_rigs)
        self._fold = client.register_script(scripts.FOLD_FIELDS)

    def read(self) -> list[tuple[str, dict[str, str], str, float]]:
        """(name, labels, part, value) of every catalogued field, rigs capped."""
        fields = []
        for key, value in self.client.hgetall(METRICS_KEY).items():
            name, labels, part = json.loads(key)
            if name in CATALOGUE:
                fields.append((key, name, labels, part, float(value)))
        labels_of = self.rigs.labels(f[2]["rig"] for f in fields if "rig" in f[2])
        moves: list[str | bytes] = []
        out = []
        for key, name, labels, part, value in fields:
            rig = labels.get("rig")
            if rig is not None and labels_of[rig] != rig:
                labels = {**labels, "rig": labels_of[rig]}
                moves.extend((key, _field(name, labels, part)))
            out.append((name, labels, part, value))
        if moves:
            self._fold(keys=[METRICS_KEY], args=moves)
        return out

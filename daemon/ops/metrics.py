"""Prometheus exposition: the Redis-kept counters (``daemon.store.counters``) plus live gauges.

The API registers one :class:`RedisCollector`; at each scrape it reads the metrics hash and
yields every catalogued family, then the gauges ``live`` computes from /status.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.results import FRAME_REVIEW_REASONS
from daemon.imaging.frames import REJECT_REASONS
from daemon.store.counters import CATALOGUE, MAX_RIGS, SCALE_SOURCES, CounterHash

# Label values known in advance, per counter: those counters start at 0 for each value, so
# rate()/increase() return data before the first event (a dashboard panel of restarts shows
# 0, not "no data"). Rig ids are not known in advance: they are the rigs seen in any sample.
KNOWN_LABEL_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "leukoscope_frames_captured_total": {},
    "leukoscope_frames_processed_total": {"outcome": ("done", "rejected", "failed")},
    "leukoscope_frames_rejected_total": {"reason": REJECT_REASONS},
    "leukoscope_cells_classified_total": {"class": CELL_OUTCOMES},
    "leukoscope_frames_review_total": {},
    "leukoscope_frame_review_reasons_total": {"reason": FRAME_REVIEW_REASONS},
    "leukoscope_frames_scale_source_total": {"source": SCALE_SOURCES},
    "leukoscope_worker_restarts_total": {"role": ("capture", "worker", "api", "lis", "redis")},
    "leukoscope_auth_failures_total": {"reason": ("missing", "malformed", "unknown_key",
                                                           "session", "ui_login", "role",
                                                           "csrf")},
    "leukoscope_audit_refusals_dropped_total": {"reason": ("missing", "malformed", "unknown_key",
                                                           "session", "ui_login", "role",
                                                           "csrf")},
    "leukoscope_orders_received_total": {"source": ("hl7-oml", "hl7-orm", "fhir"),
                                         "outcome": ("accepted", "refused")},
    "leukoscope_lis_messages_total": {"outcome": ("delivered", "rejected", "timeout", "error",
                                                 "parked")},
}


class RedisCollector(Collector):
    """Families from the Redis hash, plus gauges produced by ``live`` at scrape time.

    Samples of rigs beyond the cap (``store.counters.RigLabels``) are exposed as
    ``rig="other"`` (and folded onto the ``other`` fields of the hash, so it stays bounded).
    """

    def __init__(
        self,
        client: redis.Redis,
        live: Callable[[], Iterable] | None = None,
        max_rigs: int = MAX_RIGS,
    ) -> None:
        self.client = client
        self.live = live
        self.hash = CounterHash(client, max_rigs)

    def collect(self) -> Iterator:
        counters: dict[str, dict[tuple, float]] = {}
        hists: dict[str, dict[tuple, dict[str, float]]] = {}
        rigs: set[str] = set()
        for name, labels, part, value in self.hash.read():
            label_key = tuple(labels.get(label, "") for label in CATALOGUE[name].labels)
            if "rig" in labels:
                rigs.add(labels["rig"])
            if CATALOGUE[name].kind == "counter":
                series = counters.setdefault(name, {})
                series[label_key] = series.get(label_key, 0.0) + value
            else:
                parts = hists.setdefault(name, {}).setdefault(label_key, {})
                parts[part] = parts.get(part, 0.0) + value
        for name, metric in CATALOGUE.items():
            if metric.kind == "counter":
                family = CounterMetricFamily(name, metric.help, labels=metric.labels)
                known = {**KNOWN_LABEL_VALUES.get(name, {}), "rig": tuple(sorted(rigs))}
                if name in KNOWN_LABEL_VALUES and all(label in known for label in metric.labels):
                    values = [known[label] for label in metric.labels]
                    for combination in itertools.product(*values):
                        counters.setdefault(name, {}).setdefault(combination, 0.0)
                for label_values, value in sorted(counters.get(name, {}).items()):
                    family.add_metric(list(label_values), value)
            else:
                family = HistogramMetricFamily(name, metric.help, labels=metric.labels)
                for label_values, parts in sorted(hists.get(name, {}).items()):
                    running = 0.0
                    buckets = []
                    for le in [*metric.buckets, "+Inf"]:
                        running += parts.get(f"le={le}", 0.0)
                        buckets.append((str(le) if le == "+Inf" else repr(float(le)), running))
                    family.add_metric(list(label_values), buckets, parts.get("sum", 0.0))
            yield family
        if self.live is not None:
            yield from self.live()


def gauge(
    name: str,
    help_text: str,
    labels: Iterable[str] = (),
    samples: Iterable[tuple[list[str], float]] = (),
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(label_values, value)
    return family

"""The Grafana dashboard: import-ready JSON, every panel queried, PromQL valid and catalogued."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from test_prometheus_rules import KNOWN, metric_names

try:
    from tests.deploy.dashboard import DASHBOARD, dashboard_expressions, iter_panels
except ImportError:  # tests/deploy is on sys.path (rootdir-relative import mode)
    from dashboard import DASHBOARD, dashboard_expressions, iter_panels


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_import_ready_with_a_prometheus_datasource_input() -> None:
    dashboard = load()
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"] and dashboard.get("id") is None
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${DS_PROMETHEUS}"


def test_every_panel_has_targets_and_unique_ids() -> None:
    ids = []
    for panel in iter_panels(load()):
        ids.append(panel["id"])
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_rig_variable_and_per_rig_panels() -> None:
    dashboard = load()
    rig = {v["name"]: v for v in dashboard["templating"]["list"]}["rig"]
    assert rig["type"] == "query" and rig["includeAll"] and rig["allValue"] == ".*"
    assert "rig" in rig["definition"]
    per_rig = [t["expr"] for p in iter_panels(dashboard) for t in p.get("targets", [])
               if 'rig=~"$rig"' in t["expr"]]
    assert len(per_rig) >= 4, per_rig


def test_required_views_are_present() -> None:
    exprs = "\n".join(dashboard_expressions())
    for needle in (
        "rate(leukoscope_frames_processed_total",                      # throughput
        "histogram_quantile(0.5, sum by (le) (rate(leukoscope_frame_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(leukoscope_frame_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(leukoscope_frame_latency_seconds_bucket",
        "leukoscope_queue_backlog_frames",
        "leukoscope_queue_pending_frames",
        "leukoscope_workers_up",
        "sum by (reason) (rate(leukoscope_frames_rejected_total",      # rejections by reason
        "sum by (class) (rate(leukoscope_cells_classified_total",      # class mix
    ):
        assert needle in exprs, needle


def test_drift_row_shows_every_drift_measure_per_rig() -> None:
    """Issue 11: scale, background brightness and hue, unidentified share, mean confidence,
    class mix and frames needing review by reason, each per rig."""
    panels = list(iter_panels(load()))
    row = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Drift per rig")
    following = next((i for i, p in enumerate(panels[row + 1:], row + 1) if p["type"] == "row"),
                     len(panels))
    exprs = [t["expr"] for p in panels[row + 1:following] for t in p["targets"]]
    for metric in ("leukoscope_frame_scale_um_per_pixel", "leukoscope_frame_scale_factor",
                   "leukoscope_frame_background_brightness",
                   "leukoscope_frame_background_chromaticity", 'class="unidentified"',
                   "leukoscope_cell_confidence", "sum by (rig, class)",
                   "sum by (reason) (rate(leukoscope_frame_review_reasons_total"):
        assert any(metric in e for e in exprs), metric
    assert all('rig=~"$rig"' in e for e in exprs), exprs


def test_expressions_are_substituted_and_catalogued() -> None:
    exprs = dashboard_expressions(DASHBOARD)
    assert len(exprs) >= 15
    for expr in exprs:
        assert "$" not in expr and "[[" not in expr, expr
        unknown = metric_names(expr) - KNOWN
        assert not unknown, f"{expr}: unknown metrics {unknown}"


def test_expressions_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no offline 'check expr': wrap each one as a recording rule and check."""
    rules = [{"record": f"dashboard:expr_{i}", "expr": e}
             for i, e in enumerate(dashboard_expressions())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

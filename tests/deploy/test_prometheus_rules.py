"""Prometheus config, recording and alert rules: promtool check/test plus catalogue checks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon import telemetry
from daemon.store.counters import CATALOGUE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
RULE_FILES = [PROM / "rules" / "recording.yml", PROM / "rules" / "alerts.yml"]

# The daemon's metric catalogue: the Redis-kept counts (daemon/store/counters.py), the
# process-local metrics (daemon/telemetry.py) and the live gauges of daemon/ops/status.py.
EVERY = [*CATALOGUE.values(), *telemetry.CATALOGUE.values()]
COUNTERS = {m.name for m in EVERY if m.kind == "counter"}
HISTOGRAMS = {m.name for m in EVERY if m.kind == "histogram"}
GAUGES = {m.name for m in EVERY if m.kind == "gauge"} | {
    "leukoscope_queue_backlog_frames", "leukoscope_queue_pending_frames",
    "leukoscope_workers_up", "leukoscope_worker_heartbeat_age_seconds",
    "leukoscope_capture_up", "leukoscope_model_info", "leukoscope_build_info",
    "leukoscope_lis_outbox_messages", "leukoscope_gpu_utilization_ratio",
    "leukoscope_gpu_memory_used_bytes",
    # storage (issue 16)
    "leukoscope_redis_memory_used_bytes", "leukoscope_redis_memory_budget_bytes",
    "leukoscope_audit_entries", "leukoscope_data_dir_bytes", "leukoscope_data_dir_limit_bytes",
    "leukoscope_data_dir_filesystem_free_bytes", "leukoscope_data_dir_filesystem_size_bytes",
    "leukoscope_redis_zset_compact", "leukoscope_intake_min_free_bytes",
}
KNOWN = COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

REQUIRED_ALERTS = {
    "LeukoscopeBacklogGrowing", "LeukoscopeNoFramesProcessed", "LeukoscopeWorkerDown",
    "LeukoscopeNoWorkersUp", "LeukoscopeLatencyP99High", "LeukoscopeRejectionRateHigh",
    "LeukoscopeLisDeliveryFailing",
    # Drift watch per rig (issue 11): leaving the rig's own baseline, or the validated range.
    "LeukoscopeRigScaleDrift", "LeukoscopeRigBrightnessDrift",
    "LeukoscopeRigBackgroundColourDrift", "LeukoscopeRigUnidentifiedDrift",
    "LeukoscopeRigConfidenceDrift", "LeukoscopeRigScaleAssumed", "LeukoscopeRigScaleOutOfRange",
    "LeukoscopeRigBackgroundDark", "LeukoscopeRigUnidentifiedHigh", "LeukoscopeRigConfidenceLow",
}


def run(cmd: list[str], cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bleukoscope_[a-z0-9_]+", expr))


def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(promtool: str) -> None:
    for config in (PROM / "prometheus.yml", DEPLOY / "compose" / "prometheus.yml"):
        result = run([promtool, "check", "config", str(config)], cwd=config.parent)
        assert result.returncode == 0, f"{config}:\n{result.stdout}{result.stderr}"


def test_promtool_unit_tests(promtool: str) -> None:
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests, "no promtool unit tests in deploy/prometheus/tests"
    result = run([promtool, "test", "rules", *(str(t.relative_to(PROM)) for t in tests)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in rules(PROM / "rules" / "alerts.yml")}
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert not alerts - firing, f"alerts without a firing test: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"alerts without a not-firing test: {sorted(alerts - quiet)}"


def test_alerts_cover_the_issue_and_carry_a_runbook() -> None:
    alerts = rules(PROM / "rules" / "alerts.yml")
    names = {rule["alert"] for rule in alerts}
    assert REQUIRED_ALERTS <= names, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"
    for rule in alerts:
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert len(annotations.get(key, "").strip()) > 10, f"{rule['alert']}: no {key}"
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]


def test_recording_rules_cover_throughput_latency_and_rejections() -> None:
    recorded = {rule["record"] for rule in rules(PROM / "rules" / "recording.yml")}
    for name in (
        ":leukoscope_frames_processed:rate5m",
        "rig:leukoscope_frames_captured:rate5m",
        ":leukoscope_frame_latency_seconds:p50_5m",
        ":leukoscope_frame_latency_seconds:p95_5m",
        ":leukoscope_frame_latency_seconds:p99_5m",
        "rig:leukoscope_frames_rejected:ratio_rate5m",
        "rig:leukoscope_cells_unidentified:ratio_rate5m",
        "rig_class:leukoscope_cells_classified:ratio_rate5m",
        "rig:leukoscope_cell_confidence:mean5m",
    ):
        assert name in recorded, name
    for name in recorded:
        assert re.fullmatch(r"[a-z_]*:leukoscope_[a-z0-9_]+:[a-z0-9_]+", name), name


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_use_only_catalogued_metrics(path: Path) -> None:
    for rule in rules(path):
        unknown = metric_names(rule["expr"]) - KNOWN
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_drift_alerts_are_per_rig_and_skip_the_overflow_label() -> None:
    """Baseline alerts compare a rig with itself, so never the mix of rigs beyond the cap."""
    drift = [r for r in rules(PROM / "rules" / "alerts.yml") if r["alert"].startswith("LeukoscopeRig")]
    assert drift
    for rule in drift:
        assert "by (rig)" in rule["expr"] and "{{ $labels.rig }}" in rule["annotations"]["summary"]
        if "offset" in rule["expr"]:
            assert 'rig!="other"' in rule["expr"], rule["alert"]

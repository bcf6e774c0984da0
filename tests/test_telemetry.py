"""Process-local metrics (daemon.telemetry): several processes in one /metrics through
prometheus_client's multiprocess mode, a dead process's live gauge removed and its counts
folded into one file, the /metrics scopes, and metrics.port for a process alone on its
host. Real processes, real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon import telemetry
from daemon.api.app import create_app
from daemon.store.results import ResultStore
from tests.conftest import REPO, free_port, serve_http, settings_dict, wait_for
from tests.test_drift_metrics import drifting_frame

# One "worker": multiprocess mode from its environment, as `leukoscope run` starts it.
WORKER = """
import sys
from daemon import telemetry
telemetry.announce("worker")
for ms in sys.argv[1:]:
    telemetry.observe("leukoscope_stage_seconds", float(ms) / 1000, {"stage": "segment"})
telemetry.observe("leukoscope_batch_frames", len(sys.argv) - 1)
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_worker_processes_appear_in_one_scrape_and_a_dead_ones_gauge_goes(
    tmp_path: Path, make_settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    pids = []
    for millis in ((5, 40), (300,)):
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, *map(str, millis)], cwd=REPO,
            env={"PATH": "/usr/bin:/bin", telemetry.ENV: str(folder)})
        assert process.wait(timeout=60) == 0
        pids.append(process.pid)
    monkeypatch.setenv(telemetry.ENV, str(folder))  # this API renders that folder
    with serve_http(create_app(make_settings(), redis_client)) as api:
        seen = samples(api.get("/metrics").text)
        segment = (("stage", "segment"),)
        # Both processes' observations, merged: 3 frames, 0.345 s, one in each bucket range.
        assert seen[("leukoscope_stage_seconds_count", segment)] == 3
        assert seen[("leukoscope_stage_seconds_sum", segment)] == pytest.approx(0.345)
        assert seen[("leukoscope_stage_seconds_bucket", (("le", "0.005"), *segment))] == 1
        assert seen[("leukoscope_stage_seconds_bucket", (("le", "0.05"), *segment))] == 2
        assert seen[("leukoscope_batch_frames_count", ())] == 2
        assert seen[("leukoscope_processes", (("role", "worker"),))] == 2
        # Counters with known labels are exported at 0 by every process from its start.
        assert seen[("leukoscope_worker_restarts_total", (("role", "worker"),))] == 0

        before = seen
        telemetry.process_exited(pids[0])  # what the supervisor does when a child exits
        seen = samples(api.get("/metrics").text)
        assert seen[("leukoscope_processes", (("role", "worker"),))] == 1
        # What the dead process observed stays: it happened.
        assert seen[("leukoscope_stage_seconds_count", segment)] == 3
        # ... folded into one file per kind, its own files gone (a crash-looping child must
        # not add files, and scrape time, without end); the second fold adds to the first
        telemetry.process_exited(pids[1])
        names = sorted(path.name for path in folder.glob("*.db"))
        assert names == ["counter_exited.db", "histogram_exited.db"]
        seen = samples(api.get("/metrics").text)
        assert ("leukoscope_processes", (("role", "worker"),)) not in seen
        assert {key: value for key, value in seen.items() if key[0] != "leukoscope_processes"} \
            == pytest.approx({key: value for key, value in before.items()
                              if key[0] != "leukoscope_processes"})


def test_a_corrupt_file_of_an_exited_process_is_left_as_it_is_and_nothing_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(telemetry.ENV, str(tmp_path))
    corrupt = tmp_path / "counter_4242.db"
    corrupt.write_bytes((1 << 20).to_bytes(4, "little") + b"\0" * 60)  # claims 1 MiB used
    telemetry.process_exited(4242)  # the supervisor goes on
    assert corrupt.exists() and not (tmp_path / "counter_exited.db").exists()
    assert "not folded" in caplog.text


def test_metrics_scopes_split_shared_redis_counts_from_process_measures(
    make_settings, redis_client: redis.Redis
) -> None:
    ResultStore(redis_client).store(drifting_frame("s1"))
    telemetry.observe("leukoscope_stage_seconds", 0.01, {"stage": "store"})
    telemetry.count("leukoscope_auth_failures_total", {"reason": "missing"})
    with serve_http(create_app(make_settings(), redis_client)) as api:
        names = {}
        for scope in ("all", "shared", "process"):
            text = api.get(f"/metrics?scope={scope}").text
            names[scope] = {f.name for f in text_string_to_metric_families(text)}
        assert api.get("/metrics?scope=other").status_code == 422
    shared = {"leukoscope_frames_processed", "leukoscope_frame_latency_seconds",
              "leukoscope_queue_backlog_frames"}
    local = {"leukoscope_stage_seconds", "leukoscope_auth_failures"}
    assert shared <= names["shared"] and not local & names["shared"]
    assert local <= names["process"] and not shared & names["process"]
    assert names["all"] == names["shared"] | names["process"]
    # Default (no scope): everything, as one replica has always served it.
    assert names["all"] >= shared | local


def test_metrics_port_serves_a_lone_process(tmp_path: Path) -> None:
    port = free_port()
    telemetry.observe("leukoscope_batch_cells", 12)
    telemetry.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        seen = samples(response.read().decode())
    assert seen[("leukoscope_batch_cells_sum", ())] == 12
    assert not any(name.startswith("leukoscope_frames_processed") for name, _ in seen)


def test_a_lone_process_serves_its_metrics_on_metrics_port(
    tmp_path: Path, tiny_models: tuple[Path, Path], redis_url: str
) -> None:
    """`leukoscope lis` started alone (another host): its own /metrics on metrics.port."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings_dict(
        tmp_path, tiny_models, redis={"url": redis_url},
        lis={"listen": {"host": "127.0.0.1", "port": 0}}, metrics={"port": port})))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LEUKOSCOPE_") and k != telemetry.ENV}
    process = subprocess.Popen([sys.executable, "-m", "daemon", "lis", "--config", str(config)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                assert process.poll() is None, "leukoscope lis exited"
                return None

        seen = samples(str(wait_for(scrape, 30, "the lis process's metrics port")))
        assert seen[("leukoscope_processes", (("role", "lis"),))] == 1
        accepted = (("outcome", "accepted"), ("source", "hl7-oml"))
        assert seen[("leukoscope_orders_received_total", accepted)] == 0
        # Process-local only: the Redis-kept counts are the API's.
        assert not any(name.startswith("leukoscope_frames_") for name, _ in seen)
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0

"""The whole product path: files in a watched folder -> `leukoscope run` -> results over HTTP."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import (
    Daemon,
    http_json,
    queue_drained,
    start_daemon,
    synthetic_jpeg,
    wait_for,
    write_frame,
)


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def metrics_text(daemon: Daemon) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{daemon.api_url}/metrics", timeout=5) as response:
        return response.read().decode()


def archived(daemon: Daemon) -> list[Path]:
    return sorted(p for p in (daemon.data_dir / "archive").rglob("*") if p.is_file())


@pytest.fixture
def daemon(tmp_path: Path, tiny_models: tuple[Path, Path]):
    d = start_daemon(tmp_path / "d", tiny_models, workers={"count": 2})
    yield d
    d.stop()


def test_frames_in_results_out_files_archived_metrics_counted(daemon: Daemon) -> None:
    n = 12
    for i in range(n):
        write_frame(daemon.inbox / "SPEC-001", f"field-{i:03d}.jpg", synthetic_jpeg(i, 1 + i % 3))
    write_frame(daemon.inbox, "loose.png", synthetic_jpeg(99))  # straight in the inbox
    wait_for(lambda: len(daemon.results()) == n + 1, 60, "all results")
    results = daemon.results()
    assert len({r["frame_id"] for r in results}) == n + 1
    by_source = {Path(r["source"]).name: r for r in results}
    assert by_source["loose.png"]["specimen_id"] == "unassigned"
    for i in range(n):
        r = by_source[f"field-{i:03d}.jpg"]
        assert r["status"] == "done" and r["specimen_id"] == "SPEC-001"
        assert len(r["cells"]) == 1 + i % 3
        assert r["models"]["segmenter"]["version"] == "0.0.1-test"
        assert r["completed_at"] >= r["captured_at"]
        code, one = http_json(f"{daemon.api_url}/frames/{r['frame_id']}")
        # archived_path may appear between the two reads (capture moves files meanwhile)
        assert code == 200 and {**one, "archived_path": None} == {**r, "archived_path": None}
    wait_for(lambda: len(archived(daemon)) == n + 1, 30, "originals archived")
    wait_for(lambda: all(r["archived_path"] for r in daemon.results()), 30, "archived paths")
    for r in daemon.results():  # source is where it was captured; archived_path where it is
        assert Path(r["archived_path"]).is_file() and not Path(r["source"]).exists()
        assert Path(r["archived_path"]).name == Path(r["source"]).name
        assert "archive" in Path(r["archived_path"]).parts
    assert not any(p.is_file() for p in daemon.inbox.rglob("*"))
    text = metrics_text(daemon)
    assert (
        metric_value(text, 'leukoscope_frames_processed_total{outcome="done",rig="rig-1"}') == n + 1
    )
    assert metric_value(text, 'leukoscope_frames_captured_total{rig="rig-1"}') == n + 1
    cells = sum(
        metric_value(text, f'leukoscope_cells_classified_total{{class="{c}",rig="rig-1"}}')
        for c in ("benign", "early_pre_b", "pre_b", "pro_b")
    )
    assert cells == sum(len(r["cells"]) for r in results)
    assert metric_value(text, "leukoscope_frame_latency_seconds_count{rig=\"rig-1\"}") == n + 1
    assert metric_value(text, "leukoscope_workers_up") == 2
    _, status = http_json(f"{daemon.api_url}/status")
    assert len(status["workers"]) == 2 and status["results_stored"] == n + 1
    assert status["captures"][0]["state"] == "watching"


def test_bad_files_are_quarantined_and_the_daemon_keeps_running(daemon: Daemon) -> None:
    good = synthetic_jpeg(5)
    bad = {
        "empty.jpg": b"",
        "text.jpg": b"just some text",
        "cut.jpg": good[: len(good) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300) + b"IEND\xaeB`\x82",
    }
    for name, data in bad.items():
        write_frame(daemon.inbox / "S2", name, data)
    write_frame(daemon.inbox / "S2", "good.jpg", good)
    wait_for(lambda: len(daemon.results()) == 5, 60, "five results")
    results = {Path(r["source"]).name: r for r in daemon.results()}
    assert results["good.jpg"]["status"] == "done"
    reasons = {name: results[name]["reason"] for name in bad}
    assert reasons == {
        "empty.jpg": "empty_file",
        "text.jpg": "not_an_image",
        "cut.jpg": "truncated",
        "corrupt.png": "undecodable",
    }
    quarantine = daemon.data_dir / "quarantine"
    wait_for(lambda: len(list(quarantine.rglob("*.reason.txt"))) == 4, 30, "reason files")
    for name in bad:
        assert list(quarantine.rglob(name)), name
    assert daemon.process.poll() is None
    text = metrics_text(daemon)
    assert (
        metric_value(text, 'leukoscope_frames_rejected_total{reason="truncated",rig="rig-1"}') == 1
    )


def test_sigkilled_worker_loses_no_frame(daemon: Daemon) -> None:
    n = 30
    for i in range(n):
        write_frame(daemon.inbox / "S3", f"f{i:03d}.jpg", synthetic_jpeg(1000 + i, 3))
    wait_for(lambda: len(daemon.results()) >= 3, 60, "processing to start")
    _, status = http_json(f"{daemon.api_url}/status")
    victim = status["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(daemon.results()) >= n, 90, "every frame after the kill")
    wait_for(lambda: queue_drained(daemon.api_url), 60, "the queue drained")
    results = daemon.results()
    assert len(results) == n and len({r["frame_id"] for r in results}) == n
    assert all(r["status"] == "done" for r in results)
    # The supervisor counts the restart when its loop sees the child gone: wait for it (the
    # surviving worker may have finished every frame first).
    restarts = 'leukoscope_worker_restarts_total{role="worker"}'
    wait_for(lambda: metric_value(metrics_text(daemon), restarts) >= 1, 30, "the restart counted")
    text = metrics_text(daemon)
    # Process-local metrics of every child, through the supervisor's multiprocess folder:
    # the killed worker's observations stay, its live gauge left with it (two workers alive, as configured).
    assert metric_value(text, 'leukoscope_stage_seconds_count{stage="segment"}') >= n
    wait_for(lambda: metric_value(metrics_text(daemon), 'leukoscope_processes{role="worker"}')
             == 2, 30, "the dead worker's gauge to go and its successor's to come")


def test_sigterm_stops_within_ten_seconds_and_restart_does_not_requeue(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    first = start_daemon(tmp_path / "d", tiny_models)
    for i in range(5):
        write_frame(first.inbox / "S4", f"f{i}.jpg", synthetic_jpeg(2000 + i))
    wait_for(lambda: len(first.results()) == 5, 60, "results")
    segment = 'leukoscope_stage_seconds_count{stage="segment"}'
    done = 'leukoscope_frames_processed_total{outcome="done",rig="rig-1"}'
    wait_for(lambda: metric_value(metrics_text(first), segment) == 5, 10, "5 segmented")
    started = time.monotonic()
    assert first.stop() == 0
    assert time.monotonic() - started < 10
    # A frame arrives while the daemon is down; the old ones are archived already.
    write_frame(first.inbox / "S4", "late.jpg", synthetic_jpeg(3000))
    second = start_daemon(tmp_path / "d", tiny_models)
    try:
        wait_for(lambda: len(second.results()) == 6, 60, "the late frame")
        wait_for(lambda: queue_drained(second.api_url), 60, "the queue drained")
        results = second.results()
        assert len(results) == 6 and len({r["frame_id"] for r in results}) == 6
        # Exactly-once counts live in Redis and survive the restart; the process-local ones
        # start again from this run's folder (emptied at start): only the late frame.
        text = metrics_text(second)
        assert metric_value(text, done) == 6
        assert metric_value(text, segment) == 1
    finally:
        second.stop()


def test_api_input_errors(running_daemon: Daemon) -> None:
    base = running_daemon.api_url
    assert http_json(f"{base}/results?after=garbage")[0] == 400
    assert http_json(f"{base}/results?limit=0")[0] == 422
    assert http_json(f"{base}/results?limit=100000")[0] == 422
    code, body = http_json(f"{base}/frames/nope")
    assert code == 404 and "nope" in body["detail"]
    assert http_json(f"{base}/frames/bad%20id")[0] == 400
    assert http_json(f"{base}/healthz") == (200, {"status": "ok"})
    code, ready = http_json(f"{base}/readyz")
    assert code == 200 and ready["ready"]
    code, schema = http_json(f"{base}/openapi.json")
    assert "FrameResult" in schema["components"]["schemas"]


def test_frame_store_and_worker_qc_through_the_whole_daemon(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """Issue 15 end to end: capture moves bytes (into the frame store above the inline bound),
    the worker decodes once, rejects a blank field by quality control, the archiver
    quarantines that original with its reason, and no stored frame is left behind."""
    import numpy as np

    from daemon.imaging.synthetic import encode

    d = start_daemon(tmp_path / "d", tiny_models, queue={"inline_max_bytes": 1000})
    try:
        files = {f"field-{i}.jpg": synthetic_jpeg(200 + i) for i in range(4)}
        files["blank.jpg"] = encode(np.full((160, 160, 3), 215, np.uint8))
        for name, data in files.items():
            write_frame(d.inbox / "SPEC-FS", name, data)
        wait_for(lambda: len(d.results()) == len(files), 60, "all results")
        by_name = {Path(r["source"]).name: r for r in d.results()}
        for i in range(4):
            assert by_name[f"field-{i}.jpg"]["status"] == "done"
        blank = by_name["blank.jpg"]
        assert (blank["status"], blank["reason"]) == ("rejected", "empty_field")
        assert blank["quality"]["stained_fraction"] < 0.005
        quarantine = d.data_dir / "quarantine" / "SPEC-FS"
        wait_for((quarantine / "blank.jpg.reason.txt").exists, 30, "blank quarantined")
        assert (quarantine / "blank.jpg").read_bytes() == files["blank.jpg"]
        assert "reason: empty_field" in (quarantine / "blank.jpg.reason.txt").read_text()
        wait_for(lambda: len(archived(d)) == 4, 30, "originals archived")
        frames_dir = d.data_dir / "frames"
        assert frames_dir.is_dir()  # they went through it ...
        wait_for(lambda: not any(frames_dir.iterdir()), 10, "frame store emptied")  # ... and left
        text = metrics_text(d)
        assert metric_value(
            text, 'leukoscope_frames_rejected_total{reason="empty_field",rig="rig-1"}') == 1
    finally:
        d.stop()


def test_a_push_to_leukoscope_run_is_decoded_by_a_child_of_the_api(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """Through the real entry point (`python -m daemon run`, the API as `-m daemon api`): a
    pushed frame is decoded by a spawned child of the API process under
    api.decode_memory_bytes, analysed, and the child ends with the daemon (no orphan)."""
    import urllib.request

    import psutil

    limit = 1024 * 1024 * 1024
    d = start_daemon(tmp_path / "d", tiny_models, api={"decode_memory_bytes": limit})
    try:
        request = urllib.request.Request(
            f"{d.api_url}/frames?specimen_id=S-push&name=p.jpg", data=synthetic_jpeg(7),
            method="POST", headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
        (api,) = [p for p in psutil.Process(d.process.pid).children()
                  if "api" in p.cmdline()]
        # The decoder's limit: its start-up size plus api.decode_memory_bytes.
        decoders = [c for c in api.children()
                    if limit < c.rlimit(psutil.RLIMIT_AS)[0] < limit + 2**31]
        assert len(decoders) == 1, api.children()
        wait_for(lambda: any(r["source"].startswith("upload:S-push") and r["status"] == "done"
                             for r in d.results()), 60, "the pushed frame's result")
    finally:
        assert d.stop() == 0
    wait_for(lambda: not decoders[0].is_running() or decoders[0].status() == "zombie", 10,
             "the decoding child to end with the daemon")

"""The command line as a person uses it: classify files, status as a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from daemon.imaging.synthetic import encode, smear_field
from tests.conftest import REPO, Daemon, synthetic_jpeg


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_classify_walks_folders_and_prints_json_lines(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    import numpy as np

    rng = np.random.default_rng(5)
    folder = tmp_path / "SPEC-9"
    folder.mkdir()
    counts = {}
    for i, n in enumerate((1, 2, 3)):
        image, _ = smear_field(rng, white_cells=n)
        (folder / f"f{i}.png").write_bytes(encode(image, ".png"))
        counts[f"f{i}.png"] = n
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": {"segmenter": str(tiny_models[0]), "classifier": str(tiny_models[1])},
                "workers": {"device": "cpu"},
            }
        )
    )
    done = run_cli("classify", str(tmp_path), "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_name = {Path(r["source"]).name: r for r in lines}
    assert set(by_name) == {"f0.png", "f1.png", "f2.png", "broken.jpg"}
    for name, n in counts.items():
        assert by_name[name]["status"] == "done" and len(by_name[name]["cells"]) == n
        assert by_name[name]["specimen_id"] == "SPEC-9"
        assert by_name[name]["models"]["classifier"]["name"] == "tiny-classifier"
    assert by_name["broken.jpg"]["status"] == "rejected"
    assert by_name["broken.jpg"]["reason"] == "truncated"
    missing = run_cli("classify", str(tmp_path / "nope"), "--config", str(config))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_status_prints_tables(running_daemon: Daemon) -> None:
    out = run_cli("status", "--url", running_daemon.api_url)
    assert out.returncode == 0, out.stderr
    assert "worker" in out.stdout and "CPUExecutionProvider" in out.stdout
    assert "tiny-classifier" in out.stdout and "watching" in out.stdout
    down = run_cli("status", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_qc_reports_measures_and_rejections(tmp_path: Path) -> None:
    from tests.capture.frames import blurred_rgb, good_rgb, overexposed_rgb

    for name, image in (("good", good_rgb(1)), ("blur", blurred_rgb(1)),
                        ("bright", overexposed_rgb(1))):
        (tmp_path / f"{name}.png").write_bytes(encode(image, ".png"))
    out = run_cli("qc", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = {Path(r["source"]).stem: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["good"]["ok"] and not rows["blur"]["ok"] and not rows["bright"]["ok"]
    assert rows["blur"]["reason"] == "out_of_focus" and rows["bright"]["reason"] == "overexposed"
    assert rows["blur"]["values"]["focus"] < rows["good"]["values"]["focus"]
    summary = run_cli("qc", str(tmp_path), "--summary")
    assert "3 frames measured, 2 would be rejected" in summary.stdout


def test_run_refuses_a_port_in_use(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "var"), "capture": {"directory": str(tmp_path / "in")},
            "api": {"port": port},
            "models": {"segmenter": str(tiny_models[0]), "classifier": str(tiny_models[1])},
        }))
        out = run_cli("run", "--config", str(config))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists()  # nothing was started


def test_bench_reports_both_paths(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    # A functional check of the benchmark's plumbing, not a speed assertion.
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"segmenter": str(tiny_models[0]), "classifier": str(tiny_models[1])},
        "workers": {"device": "cpu"}, "logging": {"level": "WARNING"},
    }))
    out = run_cli("bench", "--config", str(config), "--frames", "12", "--rounds", "1", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["frames"] == 12 and report["rounds"] == 1 and len(report["ratios"]) == 1
    assert report["bare_fps"] > 0 and report["daemon_fps"] > 0
    assert report["p99_ms"] >= report["p50_ms"] > 0
    # the queueing share of that latency, from each result's own timings
    assert report["queue_wait_p99_ms"] >= report["queue_wait_p50_ms"] >= 0
    assert report["queue_wait_p50_ms"] <= report["p50_ms"]
    # and where the rest of it went, stage by stage
    assert {"decode", "segment", "classify"} <= set(report["stage_p50_ms"])
    assert all(ms >= 0 for ms in report["stage_p50_ms"].values())
    # every frame offered is accounted for, and all were analysed
    assert report["offered"] == report["done"] == 12
    assert report["rejected"] == report["failed"] == report["missing"] == 0
    assert report["refused"] is None and report["ratio"] > 0 and report["machine"]


def test_bench_warmup_frames_are_analysed_first_and_not_counted(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"segmenter": str(tiny_models[0]), "classifier": str(tiny_models[1])},
        "workers": {"device": "cpu"}, "logging": {"level": "WARNING"},
    }))
    out = run_cli("bench", "--config", str(config), "--frames", "6", "--rounds", "1",
                  "--warmup", "5", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["warmup"] == 5 and report["warmup_analysed"] == 5
    # the 5 warm-up frames were analysed too, but only the 6 offered ones are counted
    assert report["offered"] == report["done"] == 6 and report["missing"] == 0
    assert report["refused"] is None and report["ratio"] > 0


def test_bench_refuses_a_ratio_when_a_frame_is_not_analysed(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    # One good frame and one that cannot be decoded (capture quarantines it): the frame is
    # counted as rejected and no daemon/bare ratio is printed; the exit status says so.
    images = tmp_path / "images"
    images.mkdir()
    (images / "a-good.jpg").write_bytes(synthetic_jpeg(1))
    (images / "b-broken.jpg").write_bytes(b"not an image at all")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"segmenter": str(tiny_models[0]), "classifier": str(tiny_models[1])},
        "workers": {"device": "cpu"}, "logging": {"level": "WARNING"},
    }))
    args = ("bench", "--config", str(config), "--images", str(images), "--frames", "2",
            "--rounds", "1", "--timeout", "60")
    out = run_cli(*args, "--json")
    assert out.returncode == 3, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["offered"] == 2 and report["done"] == 1 and report["rejected"] == 1
    assert report["failed"] == report["missing"] == 0
    assert report["ratio"] is None and report["ratios"] == []
    assert "refusing to report a daemon/bare ratio: 1 of 2 frames" in out.stderr
    assert "refusing" in report["refused"]

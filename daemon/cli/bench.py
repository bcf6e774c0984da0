"""``leukoscope bench``: bare models in a loop versus the whole daemon, on one machine.

(a) bare: the same ONNX models, provider and thread settings, in a tight loop in one process
    over pre-decoded frames (decoding excluded: the pure model ceiling).
(b) daemon: ``leukoscope run`` on a temporary data dir with embedded Redis; the frames are
    delivered into its watched folder by write-then-rename, and results are polled over HTTP.
    daemon frames/s = frames / (last result stored - first file delivered).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from daemon.cli.sandbox import clean_env, write_config
from daemon.imaging.frames import IMAGE_SUFFIXES, decode_rgb
from daemon.imaging.synthetic import encode, smear_field
from daemon.inference.analyzer import Analyzer
from daemon.settings import Settings


def bench_frames(count: int, images: str | None) -> list[bytes]:
    if images:
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no images under {images}")
        return [files[i % len(files)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(0)
    return [encode(smear_field(rng, white_cells=int(rng.integers(1, 4)))[0]) for _ in range(count)]


def bench_bare(settings: Settings, frames: list[bytes]) -> float:
    analyzer = Analyzer.from_settings(settings)
    analyzer.warm_up()
    images = [decode_rgb(data) for data in frames]
    batch = settings.workers.batch_frames
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        analyzer.analyze(images[start : start + batch])
    return len(images) / (time.perf_counter() - started)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def bench_daemon(
    settings: Settings, frames: list[bytes], timeout: float = 600
) -> tuple[float, list[float]]:
    """Returns (frames/s, capture-to-result latencies in seconds)."""
    with tempfile.TemporaryDirectory(prefix="leukoscope-bench-") as tmp:
        root = Path(tmp)
        config_file, port = write_config(settings, root, "WARNING")
        env = clean_env()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config_file)], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while _get(f"{base}/readyz")[0] != 200:
                if time.time() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the daemon did not become ready")
                time.sleep(0.2)
            inbox = root / "inbox" / "bench"
            inbox.mkdir(parents=True)
            first = time.time()
            for i, data in enumerate(frames):
                part = inbox / f"frame-{i:05d}.jpg.part"
                part.write_bytes(data)
                part.rename(inbox / f"frame-{i:05d}.jpg")
            results: list[dict] = []
            cursor = None
            deadline = time.time() + timeout
            while len(results) < len(frames):
                if time.time() > deadline:
                    raise RuntimeError(f"only {len(results)} of {len(frames)} results in time")
                query = "?limit=1000" + (f"&after={cursor}" if cursor else "")
                code, page = _get(f"{base}/results{query}")
                if code == 200:
                    results += page["items"]
                    cursor = page["next"]
                if len(results) < len(frames):
                    time.sleep(0.2)
            last = max(r["completed_at"] for r in results)
            latencies = [r["completed_at"] - r["captured_at"] for r in results]
            return len(frames) / (last - first), latencies
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()


def run_bench(
    settings: Settings,
    config_path: str | None,
    count: int,
    as_json: bool,
    images: str | None,
    rounds: int = 3,
) -> int:
    """Alternate bare and daemon runs: bare, daemon, bare, daemon, ..., bare.

    This machine's speed drifts between runs (shared hardware), so each daemon run is
    compared with the mean of the bare runs just before and after it, and the medians over
    the rounds are reported.
    """
    frames = bench_frames(count, images)
    bares = [bench_bare(settings, frames)]
    daemons: list[float] = []
    latencies: list[float] = []
    for _ in range(rounds):
        fps, round_latencies = bench_daemon(settings, frames)
        daemons.append(fps)
        latencies += round_latencies
        bares.append(bench_bare(settings, frames))
    ratios = [d / ((bares[i] + bares[i + 1]) / 2) for i, d in enumerate(daemons)]
    report = {
        "frames": count,
        "rounds": rounds,
        "workers": settings.workers.count,
        "bare_fps": round(float(np.median(bares)), 2),
        "daemon_fps": round(float(np.median(daemons)), 2),
        "ratio": round(float(np.median(ratios)), 3),
        "ratios": [round(r, 3) for r in ratios],
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"frames            {count} ({'synthetic' if not images else images}), {rounds} rounds"
        )
        print(f"bare models       {report['bare_fps']:.1f} frames/s (median)")
        print(
            f"through daemon    {report['daemon_fps']:.1f} frames/s (median, "
            f"{settings.workers.count} worker(s))"
        )
        print(
            f"ratio daemon/bare {report['ratio']:.3f} (median of "
            f"{', '.join(f'{r:.3f}' for r in report['ratios'])})"
        )
        print(
            f"latency p50 / p99 {report['p50_ms']:.0f} ms / {report['p99_ms']:.0f} ms "
            "(capture to stored result; all frames delivered at once)"
        )
    return 0

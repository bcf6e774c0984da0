"""``leukoscope bench``: bare models in a loop versus the whole daemon, on one machine.

(a) bare: the same ONNX models, provider and thread settings, in a tight loop in one process
    over pre-decoded frames: each frame is brought to the models' scale (red-cell ruler,
    resize, gain) and analysed, as a worker does; decoding is excluded.
(b) daemon: ``leukoscope run`` on a temporary data dir with embedded Redis; the frames are
    delivered into its watched folder by write-then-rename (all at once, or at ``--rate``
    frames/s: open loop), and results are polled over HTTP.
    daemon frames/s = frames / (last result stored - first file delivered).

Every frame offered is counted as done, rejected (quarantined by capture or refused by a
worker), failed or missing (no result in time). A ratio is only meaningful when the daemon
analysed every frame the bare loop did: otherwise none is reported and the exit status is 3.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from daemon.cli.sandbox import clean_env, write_config
from daemon.imaging.frames import (
    IMAGE_SUFFIXES,
    Decoded,
    FrameRejected,
    decode_reduced,
    decode_rgb,
)
from daemon.imaging.scale import Rescaler
from daemon.imaging.synthetic import encode, smear_field
from daemon.inference.analyzer import Analyzer
from daemon.settings import Settings

#: exit status when a frame offered was not analysed (no ratio is reported)
NOT_ALL_ANALYSED = 3
#: a 224x224 field at the models' scale holds about this many red cells (``smear_field``)
RED_CELLS_PER_FIELD = 25
STATUSES = ("done", "rejected", "failed", "missing")


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1280"`` -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1280") from None
    if not (32 <= width <= 20000 and 32 <= height <= 20000):
        raise SystemExit(f"--size {text!r}: each side from 32 to 20000 pixels")
    return height, width


def bench_frames(count: int, images: str | None, size: tuple[int, int] | None = None,
                 enlargement: float = 1.0, seed: int = 0) -> list[bytes]:
    """``count`` encoded frames: from ``images`` (cycled), else synthetic smear fields of
    ``size`` (H, W; default 224x224) whose cells are ``enlargement`` times the models' scale,
    with as many cells per area at the models' scale as a 224x224 field has."""
    if images:
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no images under {images}")
        return [files[i % len(files)].read_bytes() for i in range(count)]
    height, width = size or (224, 224)
    fields = height * width / (224 * 224 * enlargement**2)  # 224x224 fields at models' scale
    rng = np.random.default_rng(seed)  # another seed: other fields (made in parallel)
    frames = []
    for _ in range(count):
        white = max(1, round(int(rng.integers(1, 4)) * fields))
        red = max(1, round(RED_CELLS_PER_FIELD * fields))
        frames.append(encode(smear_field(rng, (height, width), white_cells=white,
                                         red_cells=red, enlargement=enlargement)[0]))
    return frames


def bench_bare(settings: Settings, frames: list[bytes], warmup: int = 0) -> float:
    analyzer = Analyzer.from_settings(settings)
    analyzer.warm_up()
    # Decoded beforehand (decoding is excluded), as the worker decodes them: reduced where the
    # rig's running estimate (this loop's one rig) plans it (workers.reduced_decode), so the
    # loop brings them to the models' scale exactly as the worker does.
    planner = Rescaler(analyzer.rescaler.model_scale)
    decoded: list[tuple[bytes, Decoded]] = []
    for data in frames:  # a frame that cannot be decoded is not analysed here either
        factor = (planner.planned_factor(None, "bench") if settings.workers.reduced_decode
                  else None)
        try:
            frame = decode_reduced(data, factor, settings.capture.max_frame_bytes,
                                   settings.capture.max_frame_pixels)
        except FrameRejected:
            continue
        planner.to_models(frame, None, "configured", "bench")
        decoded.append((data, frame))
    rescaler = analyzer.rescaler
    batch = settings.workers.batch_frames

    def prepare(data: bytes, frame: Decoded) -> np.ndarray:
        rescaled, scale = rescaler.to_models(frame, None, "configured", "bench")
        if rescaled is None:  # the worker decodes such a frame again in full, too
            rescaled = rescaler.apply(decode_rgb(data), scale.factor)
        return analyzer.balance(rescaled)[0]

    # untimed, as the daemon's warm-up frames: each input shape is met once before the clock
    for start in range(0, min(warmup, len(decoded)), batch):
        analyzer.analyze([prepare(*item) for item in decoded[start : start + batch]])
    started = time.perf_counter()
    for start in range(0, len(decoded), batch):
        analyzer.analyze([prepare(*item) for item in decoded[start : start + batch]])
    return len(decoded) / (time.perf_counter() - started)


def _shape(data: bytes) -> tuple[int, int]:
    try:
        return decode_rgb(data).shape[:2]
    except FrameRejected:
        return (0, 0)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(settings: Settings) -> str:
    """The CPU (and cores this process may use) and, for cuda, the card(s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu_name()}, {cores} core(s)"
    if settings.workers.device != "cpu":
        from daemon.inference.gpu import gpu_names

        text += "; GPU: " + (", ".join(gpu_names()) or "none found")
    return text


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def _offer(inbox: Path, name: str, data: bytes) -> None:
    part = inbox / f"{name}.jpg.part"
    part.write_bytes(data)
    part.rename(inbox / f"{name}.jpg")


def bench_daemon(
    settings: Settings, frames: list[bytes], timeout: float = 600, rate: float | None = None,
    warmup: list[bytes] | None = None,
) -> tuple[float, list[float], Counter, list[dict]]:
    """Returns (frames/s, capture-to-result latencies in seconds of the analysed frames,
    frames per outcome: done / rejected / failed / missing / warmup (warm-up frames with a
    result), their ``timings_ms``).

    ``warmup`` frames are offered first and waited for, uncounted: a worker on CUDA plans
    cuDNN's kernels for each input shape it meets first (seconds on the H100), a one-time
    cost per process that a burst of a few hundred frames would otherwise report as speed."""
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
            cursor = None
            seen = 0
            if warmup:
                for i, data in enumerate(warmup):
                    _offer(inbox, f"warmup-{i:05d}", data)
                deadline = time.time() + timeout
                while seen < len(warmup) and time.time() < deadline:
                    code, page = _get(f"{base}/results?limit=1000"
                                      + (f"&after={cursor}" if cursor else ""))
                    if code == 200:
                        seen += len(page["items"])
                        cursor = page["next"]
                    if seen < len(warmup):
                        time.sleep(0.2)
            first = time.time()
            for i, data in enumerate(frames):
                if rate:  # open loop: frame i is offered at first + i / rate, come what may
                    time.sleep(max(0.0, first + i / rate - time.time()))
                _offer(inbox, f"frame-{i:05d}", data)
            results: list[dict] = []
            deadline = time.time() + timeout
            while len(results) < len(frames) and time.time() < deadline:
                query = "?limit=1000" + (f"&after={cursor}" if cursor else "")
                code, page = _get(f"{base}/results{query}")
                if code == 200:  # a warm-up frame late past its wait is not counted
                    results += [r for r in page["items"]
                                if "warmup-" not in Path(r.get("source") or "").name]
                    cursor = page["next"]
                if len(results) < len(frames):
                    time.sleep(0.2)
            outcomes = Counter(r["status"] for r in results)
            outcomes["missing"] = max(0, len(frames) - len(results))
            outcomes["warmup"] = seen
            done = [r for r in results if r["status"] == "done"]
            last = max((r["completed_at"] for r in results), default=time.time())
            latencies = [r["completed_at"] - r["captured_at"] for r in done]
            timings = [r.get("timings_ms") or {} for r in done]
            return len(frames) / max(last - first, 1e-9), latencies, outcomes, timings
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
    size: str | None = None,
    enlargement: float = 1.0,
    device: str | None = None,
    rate: float | None = None,
    timeout: float = 600,
    warmup: int = 0,
) -> int:
    """Alternate bare and daemon runs: bare, daemon, bare, daemon, ..., bare.

    This machine's speed drifts between runs (shared hardware), so each daemon run is
    compared with the mean of the bare runs just before and after it, and the medians over
    the rounds are reported. With ``rate`` the daemon runs are open loop: the frames are
    offered at that rate, so its frames/s is the offered rate's and no ratio is given.
    """
    if device:
        settings.workers.device = device  # type: ignore[assignment]
    shape = parse_size(size) if size else None
    frames = bench_frames(count, images, shape, enlargement)
    height, width = shape or (224, 224)
    pixels = [(height, width)] * count
    if images:
        pixels = [_shape(f) for f in frames]
    megapixels = sum(h * w for h, w in pixels) / 1e6
    warm = [frames[i % len(frames)] for i in range(warmup)]  # offered under other names
    bares = [bench_bare(settings, frames, warmup)]
    daemons: list[float] = []
    latencies: list[float] = []
    outcomes: Counter = Counter()
    timings: list[dict[str, float]] = []
    for _ in range(rounds):
        fps, round_latencies, round_outcomes, round_timings = bench_daemon(
            settings, frames, timeout, rate, warm)
        daemons.append(fps)
        latencies += round_latencies
        timings += round_timings
        outcomes += round_outcomes
        bares.append(bench_bare(settings, frames, warmup))
    offered = count * rounds
    counts = {status: outcomes.get(status, 0) for status in STATUSES}
    refused = None
    if counts["done"] != offered:
        refused = (f"refusing to report a daemon/bare ratio: {offered - counts['done']} of "
                   f"{offered} frames offered were not analysed ("
                   + ", ".join(f"{counts[s]} {s}" for s in STATUSES[1:]) + ")")
    ratios = [d / ((bares[i] + bares[i + 1]) / 2) for i, d in enumerate(daemons)]
    mp_per_frame = megapixels / count
    waits = [t.get("queue_wait", 0.0) / 1000 for t in timings]
    stages = sorted({stage for t in timings for stage in t} - {"queue_wait"})
    source = images or f"synthetic {width}x{height}, cells x{enlargement:g}"
    report: dict = {
        "frames": count,
        "warmup": warmup,
        "warmup_analysed": outcomes.get("warmup", 0),
        "source": source,
        "rounds": rounds,
        "workers": settings.workers.count,
        "device": settings.workers.device,
        "machine": machine(settings),
        "offered": offered,
        **counts,
        "rate": rate,
        "bare_fps": round(float(np.median(bares)), 2),
        "bare_mpx_s": round(float(np.median(bares)) * mp_per_frame, 2),
        "daemon_fps": round(float(np.median(daemons)), 2),
        "daemon_mpx_s": round(float(np.median(daemons)) * mp_per_frame, 2),
        "ratio": None if refused or rate else round(float(np.median(ratios)), 3),
        "ratios": [] if refused or rate else [round(r, 3) for r in ratios],
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None,
        # capture to the worker taking the frame: the queueing share of the latency
        "queue_wait_p50_ms": round(float(np.percentile(waits, 50)) * 1000, 1) if waits else None,
        "queue_wait_p99_ms": round(float(np.percentile(waits, 99)) * 1000, 1) if waits else None,
        # where an analysed frame's time went, stage by stage (each result's timings_ms)
        "stage_p50_ms": {stage: round(float(np.median([t[stage] for t in timings if stage in t])),
                                      2) for stage in stages},
        "refused": refused,
    }
    if as_json:
        print(json.dumps(report))
    else:
        print(f"frames            {count} ({source}), {rounds} rounds"
              + (f", after {warmup} warm-up frames" if warmup else ""))
        print(f"machine           {report['machine']} (device {report['device']})")
        print(f"outcomes          {offered} offered: "
              + ", ".join(f"{counts[s]} {s}" for s in STATUSES))
        print(f"bare models       {report['bare_fps']:.2f} fields/s, "
              f"{report['bare_mpx_s']:.2f} Mpx/s (median; rescale + models, decode excluded)")
        print(f"through daemon    {report['daemon_fps']:.2f} fields/s, "
              f"{report['daemon_mpx_s']:.2f} Mpx/s (median, "
              f"{settings.workers.count} worker(s)"
              + (f", offered at {rate:g} frames/s)" if rate else ")"))
        if refused:
            pass
        elif rate:
            print("ratio daemon/bare none: open loop (throughput is the offered rate's)")
        else:
            print(f"ratio daemon/bare {report['ratio']:.3f} (median of "
                  f"{', '.join(f'{r:.3f}' for r in report['ratios'])})")
        if latencies:
            print(f"latency p50 / p99 {report['p50_ms']:.0f} ms / {report['p99_ms']:.0f} ms "
                  "(capture to stored result, analysed frames; "
                  + (f"offered at {rate:g} frames/s)" if rate else "all delivered at once)"))
            print(f"queue wait p50/p99 {report['queue_wait_p50_ms']:.0f} ms / "
                  f"{report['queue_wait_p99_ms']:.0f} ms (capture to a worker taking it)")
            print("stages p50        " + ", ".join(
                f"{stage} {ms:g} ms" for stage, ms in report["stage_p50_ms"].items()))
    if refused:
        print(refused, file=sys.stderr)
        return NOT_ALL_ANALYSED
    return 0

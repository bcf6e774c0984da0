"""``leukoscope reliability``: the issue-16 runs that are too heavy for the test suite.

Starts ``leukoscope run`` (embedded Redis, the configured models) in a temporary folder,
samples the resident memory (VmRSS) of every process of the tree and of Redis five times a
second, and runs:

* ``hostile``: beside ordinary fields, in one specimen folder, a 21-byte-header JPEG bomb
  (20000x20000), a PNG bomb (20000x20000, valid zlib), a sharp 8064x8064 JPEG, a TIFF of
  40 pages of 10000x10000, a JPEG with 2 KB of random bytes inside, a file name that is not
  UTF-8, and four 3840x2160 fields; every file must end with a result (good ones ``done``)
  and no process may be restarted.
* ``push-hostile``: the same kinds of hostile input pushed over ``POST /frames``, with ids
  ending in a line feed and ``um_per_pixel=inf`` (reliability_push.py).
* ``worker-kill`` and ``poison``: workers SIGKILLed while they hold frames, and a frame no
  worker survives (reliability_kill.py).
* ``redis-kill``: SIGKILL of the embedded Redis with frames in flight; seconds until
  ``/readyz`` answers 200 again (the supervisor restarts Redis), and every frame stored once.
* ``flood``: N synthetic fields at once; Redis memory and data_dir bytes before and after.
* ``queue-memory`` (not in the default run): N camera frames (synthetic 1920x1280 JPEGs,
  cells 3x the models' scale) queued with no worker, in a Redis of their own, through the
  same queue capture uses: Redis ``used_memory`` growth with the frame store (bytes above
  ``queue.inline_max_bytes`` on disk) and, for comparison, with every frame inline.
* ``audit-week``: a week of one ``/results`` poll a second (604,800 audit entries, written
  straight to Redis), then the housekeeping trim with the configured ``audit.*``: Redis
  bytes per entry and the bound.
* ``specimen-memory`` (not in the default run): Redis bytes a specimen keeps once its
  results are trimmed, and after ``specimens.retention_days`` (reliability_specimens.py).

Prints one JSON object (``--json``) or an indented one, with ``bounds`` (every role's peak
RSS against its limit, reliability_bounds.py) and ``failures``; exits 1 when a scenario's
check or a bound failed. Numbers in README's "Reliability" section come from this command.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from daemon.cli.reliability_bounds import bounds, failures
from daemon.cli.reliability_daemon import (
    Daemon,
    camera_jpeg,
    child_pids,
    deliver,
    get_json,
    pages_tiff,
    smear_jpeg,
)
from daemon.cli.reliability_kill import poison, worker_kill
from daemon.cli.reliability_push import push_hostile
from daemon.imaging.synthetic import jpeg_bomb, png_bomb
from daemon.settings import Settings
from daemon.store import audit
from daemon.store.connection import (
    embedded_pid,
    memory_by_key,
    socket_client,
    used_memory_bytes,
)

__all__ = ["Daemon", "child_pids", "reliability_report", "run_reliability"]


def hostile(daemon: Daemon, good_frames: int = 10, uhd: int = 4, tiff_pages: int = 40,
            tiff_side: int = 10000, sharp_side: int = 8064) -> dict:
    folder = daemon.root / "inbox" / "HOSTILE"
    rng = np.random.default_rng(16)
    good = {f"good-{i:02d}.jpg": smear_jpeg(1000 + i) for i in range(good_frames)}
    corrupt = bytearray(smear_jpeg(2000))
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 2048] = rng.integers(
        0, 256, 2048, dtype=np.uint8).tobytes()
    bad: dict[str | bytes, bytes] = {
        "bomb-20000.jpg": jpeg_bomb(20000, 20000),
        "bomb-20000.png": png_bomb(20000, 20000),
        f"sharp-{sharp_side}.jpg": camera_jpeg(3000, sharp_side, sharp_side),
        f"pages-{tiff_pages}x{tiff_side}.tif": pages_tiff(tiff_pages, tiff_side),
        "corrupt.jpg": bytes(corrupt),
    }
    fourk = {f"uhd-{i}.jpg": camera_jpeg(4000 + i, 3840, 2160) for i in range(uhd)}
    odd_name = b"field-\xff\xfe.jpg"
    restarts_before = daemon.restarts()
    started = time.monotonic()
    for name, data in {**good, **bad, **fourk}.items():
        deliver(folder, name, data)
    deliver(folder, odd_name, smear_jpeg(5000))
    expected = len(good) + len(bad) + len(fourk) + 1
    items = daemon.wait_results(expected, 600)
    elapsed = time.monotonic() - started
    outcome = {}
    for item in items:
        name = item["source"].rsplit("/", 1)[-1]
        outcome[name] = item["status"] + (f" ({item['reason']})" if item.get("reason") else "")
    good_done = sum(outcome.get(n) == "done" for n in (*good, *fourk))
    names = [item["source"].rsplit("/", 1)[-1] for item in items if "/HOSTILE/" in item["source"]]
    return {"files": expected, "seconds_to_all_outcomes": round(elapsed, 1),
            "outcomes": dict(sorted(outcome.items())),
            "good_done": good_done, "good_files": len(good) + len(fourk),
            "restarts": daemon.restarts() - restarts_before,
            "checks": {
                "every good file done": good_done == len(good) + len(fourk),
                "every bad file rejected": sum(
                    v.startswith("rejected") for n, v in outcome.items()
                    if n not in good and n not in fourk) == len(bad) + 1,
                "none stored twice": len(names) == len(set(names)),
                "no process restarted": daemon.restarts() == restarts_before,
            }}


def redis_kill(daemon: Daemon) -> dict:
    folder = daemon.root / "inbox" / "REDIS-KILL"
    before = len(daemon.results())
    restarts_before = daemon.restarts()
    for i in range(20):
        deliver(folder, f"f-{i:02d}.jpg", smear_jpeg(6000 + i))
    time.sleep(1.0)  # some queued, some analysed, some stored: frames in flight
    pid = embedded_pid(daemon.redis_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while embedded_pid(daemon.redis_dir) in (None, pid):
        time.sleep(0.05)
    daemon.wait_ready(120)
    ready = time.monotonic() - killed
    items = daemon.wait_results(before + 20, 300)
    mine = [i for i in items if "/REDIS-KILL/" in i["source"]]
    names = [i["source"].rsplit("/", 1)[-1] for i in mine]
    done = sum(i["status"] == "done" for i in mine)
    return {"seconds_to_ready": round(ready, 1), "frames": 20, "stored": len(set(names)),
            "duplicates": len(names) - len(set(names)),
            "done": done, "restarts": daemon.restarts() - restarts_before,
            "checks": {"ready again within 30 s": ready < 30, "every frame done": done == 20,
                       "none stored twice": len(names) == len(set(names))}}


def flood(daemon: Daemon, count: int) -> dict:
    client = daemon.redis()
    folder = daemon.root / "inbox" / "FLOOD"
    before_results = len(daemon.results())
    restarts_before = daemon.restarts()
    memory_before = used_memory_bytes(client)
    keys_before = memory_by_key(client)
    started = time.monotonic()
    for i in range(count):
        deliver(folder, f"f-{i:05d}.jpg", smear_jpeg(10_000 + i))
    daemon.wait_results(before_results + count, 3600)
    elapsed = time.monotonic() - started
    memory_after = used_memory_bytes(client)
    keys_after = memory_by_key(client)
    by_key = {name: round((keys_after.get(name, 0) - keys_before.get(name, 0)) / count, 1)
              for name in sorted(set(keys_before) | set(keys_after))}
    _, status = get_json(f"{daemon.base}/status", 30)
    storage = status.get("storage") or {}
    return {"frames": count, "seconds": round(elapsed, 1),
            "frames_per_second": round(count / elapsed, 1),
            "redis_used_memory_mib_before": round(memory_before / 2**20, 1),
            "redis_used_memory_mib_after": round(memory_after / 2**20, 1),
            "redis_bytes_per_result": round((memory_after - memory_before) / count),
            # MEMORY USAGE of the keys, by name in store/keys.py: where those bytes are
            "redis_bytes_per_result_by_key": {k: v for k, v in by_key.items() if v},
            "data_dir_mib": {k: round(v / 2**20, 1)
                             for k, v in (storage.get("data_dir_bytes") or {}).items()},
            "restarts": daemon.restarts() - restarts_before,
            "checks": {"no process restarted": daemon.restarts() == restarts_before}}


def slow_clients(daemon: Daemon, settings: Settings, count: int = 2000) -> dict:
    """``count`` connections that never finish their request (half send a head and part of
    a 1 MB body, half part of a head) against the daemon's API, all open at once; /healthz
    is asked once a second meanwhile. Reports how each slow connection ended (408, 503, reset)
    and when, and what /healthz answered and how fast (measured, not asserted)."""
    import selectors
    import socket

    host, port = daemon.base.removeprefix("http://").rsplit(":", 1)
    opened = time.monotonic()
    conns: dict[socket.socket, bytearray] = {}
    for i in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        if i % 2 == 0:
            sock.sendall(b"POST /frames?specimen_id=SLOW&name=s%d.jpg HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
                         % i + b"\xff\xd8" + b"\x00" * 1000)
        else:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        conns[sock] = bytearray()
    open_seconds = time.monotonic() - opened
    selector = selectors.DefaultSelector()
    for sock in conns:
        selector.register(sock, selectors.EVENT_READ)
    ended: dict[str, int] = {}
    last_closed = 0.0
    health: list[tuple[int, float]] = []
    next_probe = time.monotonic()
    limit = settings.api.header_timeout_seconds + settings.api.body_timeout_seconds + 60
    while selector.get_map() and time.monotonic() - opened < limit:
        if time.monotonic() >= next_probe:
            asked = time.monotonic()
            code, _ = get_json(f"{daemon.base}/healthz", 30)
            health.append((code, time.monotonic() - asked))
            next_probe = asked + 1.0
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk, conns[sock][:] = b"", b"reset"
            if chunk:
                conns[sock] += chunk
                continue
            answer = bytes(conns[sock])
            kind = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/") else (
                "reset" if answer == b"reset" else "closed without answer")
            ended[kind] = ended.get(kind, 0) + 1
            last_closed = time.monotonic() - opened
            selector.unregister(sock)
            sock.close()
    still_open = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    seconds = sorted(t for _, t in health)
    return {"connections": count, "seconds_to_open_all": round(open_seconds, 1),
            "ended_by_answer": ended, "still_open_at_the_end": still_open,
            "last_closed_after_seconds": round(last_closed, 1),
            "healthz_answers": {str(c): sum(1 for k, _ in health if k == c)
                                for c in sorted({c for c, _ in health})},
            "healthz_seconds_median": round(seconds[len(seconds) // 2], 3) if seconds else None,
            "healthz_seconds_max": round(seconds[-1], 3) if seconds else None,
            "configured": {k: getattr(settings.api, k) for k in (
                "header_timeout_seconds", "body_timeout_seconds", "max_connections")},
            "checks": {"every slow connection closed by the API": still_open == 0,
                       "/healthz answered": any(c == 200 for c, _ in health)}}


def audit_week(settings: Settings, root: Path, polls: int = 7 * 86400) -> dict:
    """A week of polls in a Redis of its own (the daemon's stream already holds entries newer
    than a week ago, and stream ids only grow), trimmed with the configured ``audit.*``."""
    from daemon.ops.housekeeping import trim_audit
    from daemon.store.connection import start_embedded, stop_embedded

    directory = root / "audit-redis"
    sock, _ = start_embedded(directory)
    client = socket_client(sock)
    try:
        memory_before = used_memory_bytes(client)
        now = time.time()
        start_ms = int((now - polls) * 1000)
        audit.append_past(client, (
            (f"{start_ms + i * 1000}-0",
             {"time": repr(now - polls + i), "key": "lis", "role": "read",
              "action": "results.read", "detail": "after=1795000000000-0", "client": "10.0.0.5"})
            for i in range(polls)))
        memory_week = used_memory_bytes(client)
        per_entry = (memory_week - memory_before) / polls
        trail = settings.audit
        folder = root / "audit-files"
        moved = trim_audit(client, folder if trail.archive else None, trail.retention_days,
                           trail.max_entries, now=now)
        # the bound by length, as a busier site would reach it
        bounded = trim_audit(client, folder if trail.archive else None, None, 100_000, now=now)
        memory_bounded = used_memory_bytes(client)
        disk = sum(p.stat().st_size for p in folder.glob("*.jsonl")) if folder.exists() else 0
    finally:
        client.close()
        stop_embedded(directory)
    return {"polls": polls, "redis_bytes_per_entry": round(per_entry),
            "redis_mib_for_the_week": round((memory_week - memory_before) / 2**20, 1),
            "moved_by_configured_limits": moved,
            "moved_to_reach_100000_entries": bounded,
            "redis_mib_at_100000_entries": round((memory_bounded - memory_before) / 2**20, 1),
            "file_bytes_per_entry": round(disk / max(1, moved + bounded)),
            "configured": trail.model_dump()}


def queue_memory(settings: Settings, root: Path, frames: int) -> dict:
    """Redis memory with ``frames`` camera frames queued and no worker (issue 15). Enqueued
    with the queue capture uses (the same script: stream entry, in-flight record, counter),
    in a Redis of its own so nothing else moves its ``used_memory``."""
    from daemon.cli.bench import bench_frames
    from daemon.store.connection import start_embedded, stop_embedded
    from daemon.store.frames import FrameStore
    from daemon.store.queue import FrameQueue

    distinct = bench_frames(8, None, (1280, 1920), 3.0)  # cycled: every entry is its own frame
    store = FrameStore(root / "queue-frames")
    measured: dict = {}
    for mode, count, inline_max in (("frame_store", frames, settings.queue.inline_max_bytes),
                                    ("inline", frames, None)):
        directory = root / f"queue-redis-{mode}"  # a fresh Redis for each way
        sock, _ = start_embedded(directory)
        client = socket_client(sock)
        try:
            queue = FrameQueue(client, store, inline_max)
            before = used_memory_bytes(client)
            total = 0
            for i in range(count):
                data = distinct[i % len(distinct)]
                total += len(data)
                assert queue.enqueue(f"{mode}-{i:06d}", "CAM", f"/inbox/CAM/{i:06d}.jpg",
                                     "rig-1", data) == "new"
            after = used_memory_bytes(client)
        finally:
            client.close()
            stop_embedded(directory)
        measured[mode] = {"frames": count, "frame_bytes_mean": round(total / count),
                          "redis_used_memory_mib": round(after / 2**20, 2),
                          "redis_used_memory_growth_mib": round((after - before) / 2**20, 2),
                          "redis_bytes_per_frame": round((after - before) / count)}
    files, size = store.usage()
    measured["frame_store"]["files"] = files
    measured["frame_store"]["disk_mib"] = round(size / 2**20, 1)
    measured["inline_max_bytes"] = settings.queue.inline_max_bytes
    return measured


def reliability_report(settings: Settings, scenarios: list[str], flood_frames: int = 10_000,
                       queue_frames: int = 1000, scale: dict | None = None) -> dict:
    """Run ``scenarios`` against a daemon of their own; the report with its ``bounds``
    (peak RSS per role against its limit) and ``failures`` (empty: all passed). ``scale``:
    keyword arguments per scenario (the tests run small ones)."""
    scale = scale or {}
    report: dict = {"machine": f"{os.cpu_count()} cpus", "scenarios": scenarios}
    with tempfile.TemporaryDirectory(prefix="leukoscope-reliability-") as tmp:
        runs = {"hostile": lambda d: hostile(d, **scale.get("hostile", {})),
                "push-hostile": lambda d: push_hostile(d, **scale.get("push-hostile", {})),
                "worker-kill": lambda d: worker_kill(d, **scale.get("worker-kill", {})),
                "poison": lambda d: poison(d, settings.queue.max_deliveries,
                                           **scale.get("poison", {})),
                "redis-kill": redis_kill,
                "flood": lambda d: flood(d, flood_frames),
                "slow-clients": lambda d: slow_clients(d, settings)}
        if not set(runs) & set(scenarios):  # no daemon needed (audit-week, *-memory)
            runs = {}
        daemon = Daemon(settings, Path(tmp)) if runs else None
        try:
            if daemon is not None:
                daemon.sampler.take()
            for name, scenario in runs.items():
                if name not in scenarios:
                    continue
                assert daemon is not None
                try:
                    report[name] = scenario(daemon)
                except Exception as exc:  # noqa: BLE001 - report it, run the rest
                    report[name] = {"error": f"{type(exc).__name__}: {exc}"}
                report[name]["peak_rss_mib"] = daemon.sampler.take()
        finally:
            if daemon is not None:
                report["exit_code"] = daemon.stop()
                report["processes_restarted"] = daemon.restarts()
        if "audit-week" in scenarios:
            report["audit-week"] = audit_week(settings, Path(tmp))
        if "queue-memory" in scenarios:
            report["queue-memory"] = queue_memory(settings, Path(tmp), queue_frames)
        if "specimen-memory" in scenarios:
            from daemon.cli.reliability_specimens import specimen_memory

            report["specimen-memory"] = specimen_memory(Path(tmp),
                                                        **scale.get("specimen-memory", {}))
    report["bounds"] = bounds(report, settings)
    report["failures"] = failures(report)
    return report


def run_reliability(settings: Settings, scenarios: list[str], flood_frames: int,
                    as_json: bool, queue_frames: int = 1000) -> int:
    """Print the report; exit code 1 when a frame-outcome check or a memory bound failed."""
    report = reliability_report(settings, scenarios, flood_frames, queue_frames)
    print(json.dumps(report) if as_json else json.dumps(report, indent=2))
    if report["failures"]:
        print("reliability: FAILED: " + "; ".join(report["failures"]), file=sys.stderr)
        return 1
    return 0

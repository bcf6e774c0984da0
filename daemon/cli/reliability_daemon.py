"""The daemon ``leukoscope reliability`` runs its scenarios against, and what they share:
``leukoscope run`` in a temporary folder (embedded Redis, the configured models), a sampler
of every process's resident memory (VmRSS), and the files the scenarios deliver.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import redis

from daemon.cli.sandbox import clean_env, write_config
from daemon.imaging.synthetic import encode, smear_field
from daemon.settings import Settings
from daemon.store.connection import SOCKET_NAME, embedded_pid, socket_client

ROLES = ("run", "capture", "worker", "api")


def get_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def role_of(pid: int) -> str | None:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in args]
    for role in ROLES:
        if role in words:
            return "supervisor" if role == "run" else role
    return None


class Sampler(threading.Thread):
    """Peak VmRSS per role (supervisor, capture, worker, api, api-decoder, redis), 5 times a
    second."""

    def __init__(self, supervisor: int, redis_dir: Path) -> None:
        super().__init__(daemon=True)
        self.supervisor = supervisor
        self.redis_dir = redis_dir
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            pids = {self.supervisor: "supervisor"}
            for child in child_pids(self.supervisor):
                role = role_of(child)
                if role:
                    pids[child] = role
                if role == "api":  # its decoding children (api.decode_workers)
                    for decoder in child_pids(child):
                        pids[decoder] = "api-decoder"
            redis_pid = embedded_pid(self.redis_dir)
            if redis_pid:
                pids[redis_pid] = "redis"
            for pid, role in pids.items():
                self.peak[role] = max(self.peak.get(role, 0), rss_of(pid))
            self.stopping.wait(0.2)

    def mib(self) -> dict[str, float]:
        return {role: round(value / 2**20, 1) for role, value in sorted(self.peak.items())}

    def take(self) -> dict[str, float]:
        """The peaks since the last take (one scenario's), then start afresh."""
        peaks = self.mib()
        self.peak = {}
        return peaks


class Daemon:
    def __init__(self, settings: Settings, root: Path) -> None:
        self.root = root
        self.config, port = write_config(settings, root, "INFO")
        self.base = f"http://127.0.0.1:{port}"
        self.log = root / "daemon.log"
        env = clean_env()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config)], env=env,
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.redis_dir = root / "var" / "redis"
        self.sampler = Sampler(self.process.pid, self.redis_dir)
        self.sampler.start()
        self.wait_ready(180)

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        while get_json(f"{self.base}/readyz?scope=installation", 2)[0] != 200:
            if time.monotonic() - started > timeout or self.process.poll() is not None:
                raise RuntimeError(f"the daemon did not become ready; see {self.log}")
            time.sleep(0.1)
        return time.monotonic() - started

    def redis(self) -> redis.Redis:
        return socket_client(self.redis_dir / SOCKET_NAME)

    def results(self) -> list[dict]:
        items: list[dict] = []
        cursor = None
        while True:
            query = "?limit=1000" + (f"&after={cursor}" if cursor else "")
            code, page = get_json(f"{self.base}/results{query}", 30)
            if code != 200:
                time.sleep(0.5)
                continue
            items += page["items"]
            if not page["items"]:
                return items
            cursor = page["next"]

    def wait_results(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            items = self.results()
            if len(items) >= count:
                return items
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(items)} of {count} results in {timeout:.0f} s")
            time.sleep(1.0)

    def api_pid(self) -> int | None:
        """The API child of the supervisor now (None while it is being restarted)."""
        return next((pid for pid in child_pids(self.process.pid) if role_of(pid) == "api"), None)

    @staticmethod
    def rss(pid: int | None) -> int:
        return rss_of(pid) if pid else 0

    def restarts(self) -> int:
        return self.log.read_text(errors="replace").count("child exited")

    def stop(self) -> int:
        self.sampler.stopping.set()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9
        finally:
            from daemon.store.connection import stop_embedded

            stop_embedded(self.redis_dir)


def deliver(folder: Path, name: str | bytes, data: bytes) -> None:
    """Write-then-rename, with bytes names allowed (a name that is not UTF-8)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = name if isinstance(name, bytes) else name.encode()
    target = os.fsencode(folder) + b"/" + raw
    with open(target + b".part", "wb") as out:
        out.write(data)
    os.rename(target + b".part", target)


def smear_jpeg(seed: int, size: int = 224) -> bytes:
    image, _ = smear_field(np.random.default_rng(seed), white_cells=2)
    if size != image.shape[0]:
        image = cv2.resize(image, (size, size))
    return encode(image)


def camera_jpeg(seed: int, width: int, height: int) -> bytes:
    """A sharp, ordinary-looking field at camera size (tiled synthetic smear + noise)."""
    tile, _ = smear_field(np.random.default_rng(seed), white_cells=3)
    reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1)
    image = np.tile(tile, reps)[:height, :width]
    noise = np.random.default_rng(seed).integers(-6, 7, image.shape, dtype=np.int16)
    return encode(np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def pages_tiff(pages: int, side: int) -> bytes:
    """A deflate TIFF of ``pages`` black pages of side x side: about 0.1 % of its decoded
    size (40 pages of 10000x10000: 3.9 MB on disk, 4 GB decoded)."""
    import tifffile

    black = np.zeros((side, side), np.uint8)
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as tif:
        for _ in range(pages):
            tif.write(black, compression="zlib", rowsperstrip=side)
    return out.getvalue()

"""Shared fixtures: tiny ONNX models, a real embedded Redis, settings, a running daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import uvicorn
import yaml

from daemon import telemetry
from daemon.imaging.synthetic import encode, smear_field
from daemon.settings import Settings, load_settings
from daemon.store.connection import start_embedded, stop_embedded
from tests.tiny_models import build_classifier, build_segmenter

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_process_metrics() -> Iterator[None]:
    """Every test starts with this process's own metrics (daemon.telemetry) at zero."""
    telemetry.reset()
    yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    return build_segmenter(folder), build_classifier(folder)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real Redis server (the embedded one) on a unix socket, stopped after the test."""
    directory = tmp_path / "redis"
    sock, _ = start_embedded(directory)
    yield f"unix://{sock}"
    stop_embedded(directory)


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def settings_dict(root: Path, models: tuple[Path, Path], **overrides: object) -> dict:
    data: dict = {
        "data_dir": str(root / "var"),
        "capture": {"directory": str(root / "inbox"), "settle_seconds": 0.3, "poll_seconds": 0.3},
        "queue": {"claim_idle_seconds": 2.0},
        "workers": {"count": 1, "device": "cpu", "heartbeat_seconds": 0.5, "threads": 1},
        "models": {"segmenter": str(models[0]), "classifier": str(models[1])},
        "logging": {"level": "INFO"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


@pytest.fixture
def make_settings(
    tmp_path: Path, tiny_models: tuple[Path, Path], redis_url: str
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        data = settings_dict(tmp_path, tiny_models, redis={"url": redis_url}, **overrides)
        return load_settings(None, **data)

    return make


@contextlib.contextmanager
def serve_http(app: object) -> Iterator[httpx.Client]:
    """Serve an ASGI app with uvicorn on a free loopback port; yield an HTTP client for it.

    Real sockets and real HTTP, like a LIS or a rig would use (not an in-process transport).
    """
    from daemon.api.server import server_config

    port = free_port()
    state = getattr(app, "state", None)
    if state is not None and hasattr(state, "settings"):  # the API as `leukoscope api` serves it
        config = server_config(app, state.settings, "127.0.0.1", port, state.http_stats)
    else:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the API server")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body else {}


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def queue_drained(api_url: str) -> bool:
    """Nothing queued or being analysed (/status backlog): no further result can appear, so
    a count taken now is final. Tests wait on this rather than sleep 'until a duplicate
    would show up'."""
    try:
        code, status = http_json(f"{api_url}/status", timeout=5)
    except OSError:
        return False
    return code == 200 and status["backlog"]["length"] == 0 and status["backlog"]["pending"] == 0


def write_frame(folder: Path, name: str, data: bytes) -> Path:
    """Deliver a frame the safe way: write a .part file, then rename it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    part.write_bytes(data)
    target = folder / name
    part.rename(target)
    return target


def synthetic_jpeg(seed: int, white_cells: int = 2) -> bytes:
    image, _ = smear_field(np.random.default_rng(seed), white_cells=white_cells)
    return encode(image)


@dataclass
class Daemon:
    """A `leukoscope run` process tree started by the tests."""

    root: Path
    config: Path
    api_url: str
    process: subprocess.Popen
    log: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    def results(self) -> list[dict]:
        items: list[dict] = []
        cursor = None
        while True:
            query = "?limit=500" + (f"&after={cursor}" if cursor else "")
            code, page = http_json(f"{self.api_url}/results{query}")
            assert code == 200, page
            items += page["items"]
            if not page["items"]:
                return items
            cursor = page["next"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=20)
        return self.process.returncode


def start_daemon(root: Path, models: tuple[Path, Path], **overrides: object) -> Daemon:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yaml"
    api = {"port": port, **overrides.pop("api", {})}  # type: ignore[dict-item]
    config.write_text(yaml.safe_dump(settings_dict(root, models, api=api, **overrides)))
    log = root / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSCOPE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    daemon = Daemon(root, config, f"http://127.0.0.1:{port}", process, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited:\n{log.read_text()[-4000:]}")
        try:
            # the whole installation (a worker with its models), not only the API process
            return http_json(f"{daemon.api_url}/readyz?scope=installation", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "the daemon to become ready")
    except BaseException:
        daemon.stop()  # never leave a process tree (and its Redis) behind a failed start
        raise
    return daemon


@pytest.fixture(scope="module")
def running_daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> Iterator[Daemon]:
    """A daemon that has processed a few frames (for ops tests that need live metrics)."""
    daemon = start_daemon(tmp_path_factory.mktemp("daemon"), tiny_models)
    try:
        for i in range(4):
            write_frame(daemon.inbox / "S-live", f"f{i}.jpg", synthetic_jpeg(100 + i))
        write_frame(daemon.inbox / "S-live", "bad.jpg", b"not an image")
        wait_for(lambda: len(daemon.results()) >= 5, 60, "5 results")
        yield daemon
    finally:
        daemon.stop()


#: Measurements a test reports (not asserts) at the end of the run, e.g. the review station's
#: page load time (tests/test_ui_browser.py).
MEASURED = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MEASURED] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    lines = config.stash.get(MEASURED, [])
    if lines:
        terminalreporter.section("measured (not asserted)")
        for line in lines:
            terminalreporter.write_line(line)

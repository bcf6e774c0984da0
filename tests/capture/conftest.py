"""Capture test fixtures: a real embedded Redis, an inbox on disk, synthetic frames."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from capture.service import CaptureService
from daemon.domain.results import FrameResult
from daemon.settings import Settings
from daemon.store.connection import start_embedded, stop_embedded
from daemon.store.keys import GROUP, STREAM_KEY
from daemon.store.queue import Delivery, FrameQueue
from daemon.store.results import ResultStore


@pytest.fixture(scope="session")
def redis_dir() -> Iterator[Path]:
    # A short path: unix socket paths are limited to ~107 bytes, tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="lkscap-"))
    start_embedded(directory)
    yield directory
    stop_embedded(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def client(redis_dir: Path) -> Iterator[redis.Redis]:
    conn = redis.Redis(unix_socket_path=str(redis_dir / "redis.sock"))
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(tmp_path: Path, redis_dir: Path, inbox: Path) -> Callable[..., Settings]:
    def make(max_backlog: int = 256, **capture: Any) -> Settings:
        options = {"directory": inbox, "settle_seconds": 0.2, "poll_seconds": 0.2,
                   "native_events": True, **capture}
        settings = Settings(
            data_dir=tmp_path / "var",
            redis={"url": f"unix://{redis_dir / 'redis.sock'}"},
            capture=options,
            queue={"max_backlog": max_backlog},
        )
        FRAME_STORES.append(settings.frames_dir)
        return settings

    return make


@pytest.fixture
def running() -> Iterator[Callable[[Settings], contextlib.AbstractContextManager]]:
    """``with running(settings) as service:`` runs a CaptureService in a thread."""

    @contextlib.contextmanager
    def start(settings: Settings) -> Iterator[CaptureService]:
        service = CaptureService(settings)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                service.run()
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                errors.append(exc)

        thread = threading.Thread(target=target, name="capture-under-test", daemon=True)
        thread.start()
        wait_for(lambda: service.state != "starting" or errors, what="capture start")
        try:
            yield service
        finally:
            service.stop()
            thread.join(timeout=10)
            service.client.close()
            assert not thread.is_alive(), "capture did not stop"
            assert not errors, errors

    return start


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
             ) -> Any:
    """Poll ``predicate`` until truthy; returns its value or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.03)


def after_rescans(service: Any, count: int = 3) -> None:
    """Wait until the watcher has rescanned the inbox ``count`` more times, each rescan's
    files handled by the loop before the next begins: what a rescan would queue again is
    queued by then. Deterministic, unlike sleeping for 'a few rescans'."""
    start = service.watcher.rescans
    wait_for(lambda: service.watcher.rescans >= start + count + 1, what=f"{count} rescans")


def after_passes(service: Any, count: int = 3) -> None:
    """Wait until the capture loop has run ``count`` more times (paused or not)."""
    start = service.passes
    wait_for(lambda: service.passes >= start + count + 1, what=f"{count} loop passes")


def frame_bytes(seed: int = 0, ext: str = ".jpg", size: int = 192) -> bytes:
    """A synthetic blood smear: pale background, pink red cells, purple white cells."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), (232, 222, 238), np.uint8)  # BGR, pale pinkish
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    for _ in range(12):
        centre = tuple(int(v) for v in rng.integers(10, size - 10, 2))
        cv2.circle(image, centre, int(rng.integers(9, 13)), (170, 140, 225), -1)  # red cell
        cv2.circle(image, centre, 4, (190, 170, 235), -1)  # pale centre
    for _ in range(2):
        centre = tuple(int(v) for v in rng.integers(20, size - 20, 2))
        cv2.circle(image, centre, int(rng.integers(14, 18)), (200, 150, 190), -1)  # cytoplasm
        cv2.circle(image, centre, int(rng.integers(8, 11)), (140, 40, 110), -1)  # nucleus
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    return encoded.tobytes()


#: frame stores of the settings made in this session: ``entries`` reads a frame queued by
#: reference (above ``queue.inline_max_bytes``) from them, as a worker would
FRAME_STORES: list[Path] = []


def entries(client: redis.Redis) -> list[dict[str, Any]]:
    """The queued frames, decoded (data stays bytes; a frame in the frame store is read from
    it, and its entry also keeps ``data_ref``)."""
    out = []
    for _, fields in client.xrange(STREAM_KEY):
        item = {k.decode(): v for k, v in fields.items()}
        entry = {k: (v if k == "data" else v.decode()) for k, v in item.items()}
        if "data_ref" in entry:
            stored = [d / entry["data_ref"] for d in reversed(FRAME_STORES)]
            entry["data"] = next(p.read_bytes() for p in stored if p.is_file())
        out.append(entry)
    return out


def complete(client: redis.Redis, status: str = "done", reason: str | None = None,
             error: str | None = None, limit: int = 100) -> list[Delivery]:
    """Act as a worker: take queued frames, store a result for each and acknowledge it."""
    queue = FrameQueue(client)
    store = ResultStore(client, STREAM_KEY, GROUP)
    done = queue.read("test-worker", limit, 0, own_pending=True)
    done += queue.read("test-worker", limit, 50)
    for delivery in done:
        result = FrameResult(
            frame_id=delivery.frame_id, specimen_id=delivery.specimen_id,
            source=delivery.source, rig_id=delivery.rig_id, status=status, reason=reason,
            error=error, captured_at=delivery.captured_at, completed_at=time.time(),
        )
        store.store(result, ack_entry=delivery.entry_id)
    return done


def analyse_all(settings: Settings, worker_id: str = "capture-test-worker") -> int:
    """Run a real worker (ONNX models of ``settings``) until the queue is empty; returns how
    many frames it handled. Quality control is the worker's: frames capture queued are only
    judged here (issue 15, decode once)."""
    from daemon.worker.worker import Worker

    worker = Worker(settings, worker_id)
    handled = 0
    try:
        while step := worker.step(block_ms=100):
            handled += step
        worker.flush()
    finally:
        worker.client.close()
    return handled

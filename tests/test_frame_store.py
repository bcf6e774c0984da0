"""Decode once and frames out of Redis (issue 15): the worker's quality control, the frame
store's lifecycle and its janitor, against a real Redis, real files and the tiny ONNX models."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import pytest

from daemon.imaging.synthetic import encode
from daemon.settings import Settings
from daemon.store.frames import FrameStore, sweep
from daemon.store.keys import STREAM_KEY
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from daemon.worker.worker import Worker
from tests.conftest import synthetic_jpeg


def drain(worker: Worker) -> None:
    while worker.step(block_ms=100):
        pass
    worker.flush()


def flat_jpeg(level: int = 200) -> bytes:
    """A field with no stain at all: quality control calls it an empty field."""
    return encode(np.full((128, 128, 3), level, np.uint8))


@pytest.fixture
def small_inline(make_settings: Callable[..., Settings]) -> Settings:
    # Every test frame (a few KB) is "large": it travels through the frame store.
    return make_settings(queue={"inline_max_bytes": 1000})


def test_worker_rejects_frames_failing_quality_control_with_their_measures(
        make_settings: Callable[..., Settings]) -> None:
    worker = Worker(make_settings(), "t-qc")
    queue = worker.queue
    assert queue.enqueue("flat", "S1", "/in/S1/flat.jpg", "rig-1", flat_jpeg()) == "new"
    assert queue.enqueue("dark", "S1", "/in/S1/dark.jpg", "rig-1", flat_jpeg(5)) == "new"
    assert queue.enqueue("good", "S1", "/in/S1/good.jpg", "rig-1", synthetic_jpeg(1)) == "new"
    # The same flat field, checked before queueing (an HTTP push): not judged again.
    assert queue.enqueue("pushed", "S1", "http:S1/flat.jpg", "rig-1", flat_jpeg(),
                         qc_done=True) == "new"
    drain(worker)
    store = ResultStore(worker.client)
    flat, dark = store.get("flat"), store.get("dark")
    assert (flat.status, flat.reason) == ("rejected", "empty_field")
    assert flat.quality["stained_fraction"] < 0.005 and "stained" in flat.error
    assert (dark.status, dark.reason) == ("rejected", "underexposed")
    good = store.get("good")
    assert good.status == "done" and good.quality is None
    assert {"decode", "rescale", "qc"} <= set(good.timings_ms)
    assert store.get("pushed").status == "done"
    assert "qc" not in store.get("pushed").timings_ms


def test_quality_control_off_lets_every_frame_through(
        make_settings: Callable[..., Settings]) -> None:
    worker = Worker(make_settings(capture={"qc": {"enabled": False}}), "t-noqc")
    worker.queue.enqueue("flat", "S1", "/in/S1/flat.jpg", "rig-1", flat_jpeg())
    drain(worker)
    assert ResultStore(worker.client).get("flat").status == "done"


def test_large_frames_travel_by_reference_and_are_deleted_only_after_their_result(
        small_inline: Settings) -> None:
    worker = Worker(small_inline, "t-store")
    client = worker.client
    frames = FrameStore(small_inline.frames_dir)
    data = synthetic_jpeg(3)
    assert len(data) > 1000
    assert worker.queue.enqueue("big", "S1", "/in/S1/big.jpg", "rig-1", data) == "new"
    ((_, fields),) = client.xrange(STREAM_KEY)
    assert b"data" not in fields and fields[b"data_ref"] == b"big"
    assert frames.path("big").read_bytes() == data
    # Small frames stay inline.
    small = FrameQueue(client, frames, inline_max_bytes=len(data) + 1)
    assert small.enqueue("inline", "S1", "/in/S1/inline.jpg", "rig-1", data) == "new"
    assert client.xrange(STREAM_KEY)[1][1][b"data"] == data
    seen_at_store: list[bool] = []
    store_many = worker.store.store_many

    def store_and_look(items):  # the bytes must still be there while results are stored
        seen_at_store.append(frames.path("big").exists())
        return store_many(items)

    worker.store.store_many = store_and_look
    drain(worker)
    results = ResultStore(client)
    assert results.get("big").status == "done" and results.get("inline").status == "done"
    assert seen_at_store and all(seen_at_store)
    assert frames.files() == []  # deleted once stored
    # Queued again after its result (a restarted capture): answered 'stored', no file left.
    assert worker.queue.enqueue("big", "S1", "/in/S1/big.jpg", "rig-1", data) == "stored"
    assert frames.files() == []


def test_redis_memory_per_queued_frame_is_bounded(small_inline: Settings) -> None:
    """Camera-sized frames (hundreds of KB each) cost Redis a few hundred bytes per entry."""
    client = Worker(small_inline, "t-mem").client
    queue = FrameQueue.for_settings(client, small_inline)
    rng = np.random.default_rng(0)
    # noise compresses badly: ~300 KB JPEGs, the size of a 1920x1280 field
    data = encode(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    assert len(data) > 250_000
    queue.enqueue("warm", "S1", "/in/S1/warm.jpg", "rig-1", data)
    before = int(client.info("memory")["used_memory"])
    count = 40
    for i in range(count):
        assert queue.enqueue(f"cam{i:03d}", "S1", f"/in/S1/cam{i:03d}.jpg", "rig-1",
                             data) == "new"
    per_frame = (int(client.info("memory")["used_memory"]) - before) / count
    print(f"redis bytes per queued frame: {per_frame:.0f}")
    assert per_frame < 2048, per_frame  # inline it would be len(data), ~300 KB
    assert FrameStore(small_inline.frames_dir).usage() == (count + 1, (count + 1) * len(data))


def test_a_frame_missing_from_the_store_is_rejected_not_lost(small_inline: Settings) -> None:
    worker = Worker(small_inline, "t-missing")
    worker.queue.enqueue("gone", "S1", "/in/S1/gone.jpg", "rig-1", synthetic_jpeg(4))
    FrameStore(small_inline.frames_dir).delete("gone")
    drain(worker)
    result = ResultStore(worker.client).get("gone")
    assert (result.status, result.reason) == ("rejected", "unreadable")
    assert "frame store" in result.error
    assert worker.queue.backlog() == 0


def test_janitor_deletes_orphans_only(small_inline: Settings) -> None:
    worker = Worker(small_inline, "t-janitor")
    client, queue = worker.client, worker.queue
    frames = FrameStore(small_inline.frames_dir)
    data = synthetic_jpeg(5)
    # stored and analysed, but its worker "died" before deleting the bytes
    queue.enqueue("analysed", "S1", "/in/S1/a.jpg", "rig-1", data)
    drain(worker)
    frames.put("analysed", data)
    # in flight, no result yet: a worker will read it, whatever its age
    queue.enqueue("waiting", "S1", "/in/S1/w.jpg", "rig-1", data)
    # a live camera's frame: its in-flight record is forgotten, the queue entry names it
    queue.enqueue("camera", "S1", "opencv:0#1", "rig-1", data)
    queue.forget("camera")
    # written by a capture that died before queueing it
    frames.put("never-queued", data)
    (frames.directory / ".half.123.tmp").write_bytes(b"half")
    young = time.time()
    assert sweep(client, frames, 600, now=young) == 0  # nothing is old enough yet
    old = young + 3600
    for path in frames.files():
        os.utime(path, (young - 1, young - 1))
    assert sweep(client, frames, 600, now=old) == 3
    assert sorted(p.name for p in frames.files()) == ["camera", "waiting"]
    drain(worker)  # the two still queued are analysed and their bytes released
    assert frames.files() == []


def test_decoding_on_threads_gives_the_same_results_in_order(
        make_settings: Callable[..., Settings]) -> None:
    """Frames decoded ahead on the decode threads come out in queue order, with the same
    results as one after the other; a bad frame among them is still its own rejection."""
    outcomes = {}
    for threads in (1, 3):
        worker = Worker(make_settings(workers={"decode_threads": threads, "batch_frames": 8}),
                        f"t-decode{threads}")
        worker.client.flushall()
        worker.queue.ensure_group()
        for i in range(6):
            worker.queue.enqueue(f"d{i}", "S1", f"/in/S1/{i}.jpg", "rig-1", synthetic_jpeg(i))
        worker.queue.enqueue("bad", "S1", "/in/S1/bad.jpg", "rig-1", b"\xff\xd8\xff" + bytes(9))
        assert worker.step(block_ms=100) == 7
        worker.flush()
        store = ResultStore(worker.client)
        outcomes[threads] = {
            f: (r.status, r.reason, r.frame_class, [c.bbox for c in r.cells])
            for f in [f"d{i}" for i in range(6)] + ["bad"] if (r := store.get(f))}
        if threads > 1:
            assert worker._decoder is not None  # the pool was used
    assert outcomes[1] == outcomes[3]
    assert outcomes[3]["bad"][:2] == ("rejected", "truncated")
    assert all(outcomes[3][f"d{i}"][0] == "done" for i in range(6))

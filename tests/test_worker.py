"""Queue + worker against a real Redis and the tiny ONNX models."""

from collections.abc import Callable

import pytest

from daemon.settings import Settings
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from daemon.worker.worker import Worker
from tests.conftest import synthetic_jpeg


def enqueue(queue: FrameQueue, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        frame_id = f"frame{i:04d}"
        assert queue.enqueue(frame_id, "S1", f"/in/S1/{i}.jpg", "rig-1", synthetic_jpeg(i)) == "new"
        ids.append(frame_id)
    return ids


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_enqueue_is_idempotent(settings: Settings) -> None:
    worker = Worker(settings, "t-w0")
    enqueue(worker.queue, 1)
    assert worker.queue.enqueue("frame0000", "S1", "/in/S1/0.jpg", "rig-1", b"x") == "queued"
    assert worker.queue.backlog() == 1


def test_worker_stores_one_result_per_frame_and_drains_the_stream(settings: Settings) -> None:
    worker = Worker(settings, "t-w0")
    ids = enqueue(worker.queue, 5)
    worker.queue.enqueue("bad", "S1", "/in/S1/bad.jpg", "rig-1", b"\xff\xd8\xff" + bytes(50))
    while worker.step(block_ms=100):
        pass
    store = ResultStore(worker.client)
    for frame_id in ids:
        r = store.get(frame_id)
        assert r.status == "done" and r.frame_class and len(r.cells) == 2
        assert r.models["classifier"].name == "tiny-classifier"
        assert set(r.timings_ms) >= {"queue_wait", "decode", "segment", "classify"}
    bad = store.get("bad")
    assert bad.status == "rejected" and bad.reason == "truncated"
    assert worker.queue.backlog() == 0 and worker.queue.pending() == 0


def test_frames_of_a_dead_worker_are_reclaimed_exactly_once(settings: Settings) -> None:
    dead = Worker(settings, "t-dead")
    ids = enqueue(dead.queue, 4)
    taken = dead.queue.read("t-dead", count=4, block_ms=100)  # then it "dies"
    assert len(taken) == 4 and dead.queue.pending() == 4
    # It managed to store one result before dying, without acknowledging it.
    dead.process(taken[:1])
    dead.client.xgroup_setid("lks:frames", "workers", "$")  # no effect on pending entries
    survivor = Worker(settings, "t-alive")
    survivor.settings.queue.claim_idle_seconds = 0.2
    import time

    time.sleep(0.3)
    handled = 0
    for _ in range(10):
        handled += survivor.step(block_ms=50)
    store = ResultStore(survivor.client)
    assert all(store.get(i) is not None for i in ids)
    assert store.count() == 4
    assert survivor.queue.backlog() == 0 and survivor.queue.pending() == 0


def test_restarted_worker_first_finishes_what_it_held(settings: Settings) -> None:
    first = Worker(settings, "t-same")
    ids = enqueue(first.queue, 3)
    assert len(first.queue.read("t-same", count=3, block_ms=100)) == 3
    again = Worker(settings, "t-same")  # same consumer name after a restart
    again.stopping.set()  # run() would loop; drive the start-up path by hand
    own = again.queue.read("t-same", 8, 0, own_pending=True)
    again.process(own)
    store = ResultStore(again.client)
    assert [store.get(i).status for i in ids] == ["done"] * 3


def test_poison_frame_becomes_failed_after_max_deliveries(settings: Settings) -> None:
    settings.queue.max_deliveries = 1
    settings.queue.claim_idle_seconds = 0.1
    worker = Worker(settings, "t-a")
    (frame_id,) = enqueue(worker.queue, 1)
    worker.queue.read("t-crashed", count=1, block_ms=100)
    import time

    time.sleep(0.2)
    worker.step(block_ms=50)
    r = ResultStore(worker.client).get(frame_id)
    assert r.status == "failed" and "crashed" in r.error

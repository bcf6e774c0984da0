"""Queue + worker against a real Redis and the tiny ONNX models."""

from collections.abc import Callable

import numpy as np
import pytest

from daemon.imaging.synthetic import encode
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
        assert set(r.timings_ms) >= {"queue_wait", "decode", "rescale", "segment", "classify"}
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


def test_a_frame_queued_twice_gets_one_result_counted_once(settings: Settings) -> None:
    """First deliveries are not looked up for an earlier result (no round trip per batch):
    a frame that still got queued twice (its in-flight record dropped meanwhile) keeps its
    first result, is counted once, and both entries leave the stream."""
    from daemon.store import counters, keys

    worker = Worker(settings, "t-w0")
    (frame_id,) = enqueue(worker.queue, 1)
    worker.queue.forget(frame_id)
    assert worker.queue.enqueue(frame_id, "S1", "/in/S1/0.jpg", "rig-1",
                                synthetic_jpeg(0)) == "new"
    assert worker.queue.backlog() == 2
    while worker.step(block_ms=100):
        pass
    worker.flush()
    assert worker.queue.backlog() == 0 and worker.queue.pending() == 0
    assert worker.frames_done == 1 and ResultStore(worker.client).count() == 1
    ((field, _),) = counters.counter("leukoscope_frames_processed_total",
                                     {"rig": "rig-1", "outcome": "done"})
    assert float(worker.client.hget(keys.METRICS_KEY, field)) == 1.0


class Crash(BaseException):
    """Stands for the death of a worker process mid-batch: nothing is stored or acknowledged
    and the exception is not caught by the worker's own handlers."""


def poison_jpeg() -> bytes:
    """A flat grey frame, which the crashing analyzer below recognises as flat (by its content,
    not its size: the worker rescales it by its rig's running red-cell estimate first)."""
    image = np.full((96, 128, 3), 200, np.uint8)
    return encode(image)


def is_poison(image: np.ndarray) -> bool:
    """The poison frame as the models get it: one colour (rescaled, and its grey turned by the
    background gain into one colour per channel)."""
    return bool(np.ptp(image.reshape(-1, image.shape[-1]), axis=0).max() <= 2)


def crash_on_poison(worker: Worker) -> None:
    analyze = worker.analyzer.analyze

    def analyze_or_crash(images):
        if any(is_poison(image) for image in images):
            raise Crash()
        return analyze(images)

    worker.analyzer.analyze = analyze_or_crash


def test_a_frame_that_crashes_workers_fails_alone_and_its_batch_is_done(
        settings: Settings) -> None:
    settings.queue.max_deliveries = 2
    first = Worker(settings, "t-poison")
    good = enqueue(first.queue, 7)
    # A flat frame that crashes the models; it passed quality control before queueing (as
    # a push does), else the worker would reject it as an empty field before analysis.
    assert first.queue.enqueue("poison", "S1", "/in/S1/p.jpg", "rig-1", poison_jpeg(),
                               qc_done=True) == "new"
    crashes = 0
    batch = first.queue.read("t-poison", 8, 100)
    assert len(batch) == 8
    worker = first
    for _ in range(10):  # each round: the worker restarts and re-reads what it held
        crash_on_poison(worker)
        try:
            if batch:
                worker.process(batch)
                worker.flush()
            worker.drain_own()
            break
        except Crash:
            crashes += 1
            worker = Worker(settings, "t-poison")  # the restarted process
            batch = []
    store = ResultStore(worker.client)
    assert [store.get(i).status for i in good] == ["done"] * 7
    poison = store.get("poison")
    assert poison.status == "failed" and "alone" in poison.error
    # the first crash in the batch, then max_deliveries crashes alone
    assert crashes == 1 + settings.queue.max_deliveries
    assert worker.queue.backlog() == 0 and worker.queue.pending() == 0
    assert worker.client.hlen("lks:solo") == 0  # attempts are forgotten once stored


def test_one_frame_failing_analysis_does_not_fail_its_batch(settings: Settings) -> None:
    worker = Worker(settings, "t-iso")
    good = enqueue(worker.queue, 5)
    assert worker.queue.enqueue("bad", "S1", "/in/S1/b.jpg", "rig-1", poison_jpeg(),
                                qc_done=True) == "new"  # past QC: the models must see it
    analyze = worker.analyzer.analyze

    def analyze_or_fail(images):
        if any(is_poison(image) for image in images):
            raise RuntimeError("model exploded on this frame")
        return analyze(images)

    worker.analyzer.analyze = analyze_or_fail
    while worker.step(block_ms=100):
        pass
    worker.flush()
    store = ResultStore(worker.client)
    assert [store.get(i).status for i in good] == ["done"] * 5
    bad = store.get("bad")
    assert bad.status == "failed" and "model exploded" in bad.error


def test_infinite_or_absurd_scale_is_that_frames_rejection(settings: Settings) -> None:
    worker = Worker(settings, "t-scale")
    good = enqueue(worker.queue, 2)
    for frame_id, scale in (("inf", float("inf")), ("nan", float("nan")), ("tiny", 1e-9)):
        worker.queue.enqueue(frame_id, "S1", f"/in/S1/{frame_id}.jpg", "rig-1",
                             synthetic_jpeg(9), um_per_pixel=scale)
    while worker.step(block_ms=100):
        pass
    worker.flush()
    store = ResultStore(worker.client)
    assert [store.get(i).status for i in good] == ["done"] * 2
    for frame_id in ("inf", "nan", "tiny"):
        r = store.get(frame_id)
        assert (r.status, r.reason) == ("rejected", "bad_scale"), frame_id


def test_batches_are_bounded_in_pixels(settings: Settings) -> None:
    settings.workers.max_batch_pixels = 2 * 224 * 224  # two synthetic fields at most
    worker = Worker(settings, "t-px")
    ids = enqueue(worker.queue, 5)
    analyze = worker.analyzer.analyze
    seen: list[int] = []

    def counting(images):
        seen.append(sum(i.shape[0] * i.shape[1] for i in images))
        return analyze(images)

    worker.analyzer.analyze = counting
    worker.process(worker.queue.read("t-px", 8, 100))
    worker.flush()
    assert ResultStore(worker.client).count() == 5 and len(ids) == 5
    assert max(seen) <= settings.workers.max_batch_pixels and len(seen) == 3


def test_a_decompression_bomb_is_rejected_from_its_header(settings: Settings) -> None:
    from daemon.imaging.synthetic import jpeg_bomb

    worker = Worker(settings, "t-bomb")
    good = enqueue(worker.queue, 2)
    worker.queue.enqueue("bomb", "S1", "/in/S1/bomb.jpg", "rig-1", jpeg_bomb(20000, 20000))
    while worker.step(block_ms=100):
        pass
    worker.flush()
    store = ResultStore(worker.client)
    assert [store.get(i).status for i in good] == ["done"] * 2
    bomb = store.get("bomb")
    assert (bomb.status, bomb.reason) == ("rejected", "too_large")
    assert "20000x20000" in bomb.error


def test_a_batchs_first_half_is_analysed_while_its_second_half_is_prepared(
        settings: Settings) -> None:
    # workers.overlap_analysis: preparing is single-threaded, so the models run the first
    # half on the analysis thread meanwhile. The results must be those of the plain order.
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    settings.workers.batch_frames = 6
    plain = Worker(settings, "t-plain")
    enqueue(plain.queue, 6)
    plain.step(block_ms=100)
    plain.flush()
    store = ResultStore(plain.client)
    expected = {f"frame{i:04d}": store.get(f"frame{i:04d}") for i in range(6)}
    store.client.flushdb()

    worker = Worker(settings, "t-overlap")
    events: list[tuple[str, str, float]] = []
    analyze, prepare = worker.analyzer.analyze, worker._prepare

    def slow_analyze(images: list) -> list:
        events.append(("analyse", threading.current_thread().name, time.perf_counter()))
        time.sleep(0.3)  # the models, slowly: the main thread must not wait for them
        out = analyze(images)
        events.append(("analysed", str(len(images)), time.perf_counter()))
        return out

    def noted_prepare(d, decoded=None):  # noqa: ANN001, ANN202 - the wrapped method's own
        events.append(("prepare", d.frame_id, time.perf_counter()))
        return prepare(d, decoded)

    worker.analyzer.analyze = slow_analyze  # type: ignore[method-assign]
    worker._prepare = noted_prepare  # type: ignore[method-assign]
    worker._analyser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analyse")
    try:
        enqueue(worker.queue, 6)
        assert worker.step(block_ms=100) == 6
        worker.flush()
    finally:
        worker._analyser.shutdown(wait=True)
    kinds = [e[0] for e in events]
    assert kinds.count("analyse") == 2  # two halves of three
    assert all(e[1].startswith("analyse") for e in events if e[0] == "analyse")
    first_start = next(e[2] for e in events if e[0] == "analyse")
    first_end = next(e[2] for e in events if e[0] == "analysed")
    during = [e[1] for e in events if e[0] == "prepare" and first_start < e[2] < first_end]
    assert during == ["frame0003", "frame0004", "frame0005"]
    for frame_id, want in expected.items():
        got = ResultStore(worker.client).get(frame_id)
        assert got is not None and got.status == "done"
        assert (got.frame_class, got.frame_probabilities) == (
            want.frame_class, want.frame_probabilities)
        assert [c.bbox for c in got.cells] == [c.bbox for c in want.cells]

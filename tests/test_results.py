import time

import pytest
import redis

from daemon.domain.results import FrameResult
from daemon.store.keys import LOG_KEY, RESULT_KEY, SPECIMEN_FRAMES_KEY
from daemon.store.paging import BadCursor
from daemon.store.results import ResultStore


def result(frame_id: str, status: str = "done") -> FrameResult:
    now = time.time()
    return FrameResult(
        frame_id=frame_id,
        specimen_id="S1",
        source=f"/in/{frame_id}.jpg",
        rig_id="rig-1",
        status=status,
        captured_at=now - 1,
        completed_at=now,
    )


def test_a_frame_keeps_its_first_result(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    assert store.store(result("a"))
    assert not store.store(result("a", status="failed"))
    assert store.get("a").status == "done"
    assert store.count() == 1


def test_cursor_polling_never_misses_or_repeats(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    seen: list[str] = []
    cursor = None
    for batch in range(5):
        for i in range(7):
            store.store(result(f"f{batch}-{i}"))
        while True:
            items, cursor = store.page(cursor, 3)
            if not items:
                break
            seen += [item.frame_id for item in items]
    assert seen == [f"f{b}-{i}" for b in range(5) for i in range(7)]
    items, same = store.page(cursor, 3)
    assert items == [] and same == cursor


def test_first_page_without_cursor_starts_at_oldest(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    assert store.page(None, 10) == ([], "0-0")
    store.store(result("x"))
    items, _ = store.page(None, 10)
    assert [i.frame_id for i in items] == ["x"]


@pytest.mark.parametrize("cursor", [
    "abc", "1-", "-1", "1-2-3", "1700000000000-0; DROP",
    "1-0\n",  # re's '$' would admit a trailing line feed
    "99999999999999999999-0",  # beyond a stream id's 64 bits: Redis would error (was a 503)
    "18446744073709551615-18446744073709551615",  # nothing can come after it
])
def test_malformed_cursor(redis_client: redis.Redis, cursor: str) -> None:
    with pytest.raises(BadCursor):
        ResultStore(redis_client).page(cursor, 10)


def test_outcome_counters_counted_once(redis_client: redis.Redis) -> None:
    from daemon.store import counters, keys

    store = ResultStore(redis_client)
    rejected = result("r", "rejected").model_copy(update={"reason": "truncated"})
    store.store(rejected)
    store.store(rejected)
    raw = {k.decode(): float(v) for k, v in redis_client.hgetall(keys.METRICS_KEY).items()}
    key = counters.counter(
        "leukoscope_frames_rejected_total", {"rig": "rig-1", "reason": "truncated"}
    )[0][0]
    assert raw[key] == 1.0


def analysed(frame_id: str) -> FrameResult:
    """A result as a worker stores it for an ordinary field: two cells, every block set."""
    now = time.time()
    cell = {"bbox": [157, 19, 26, 26], "area_px": 526, "class": "unidentified",
            "probabilities": {"benign": 0.018369, "early_pre_b": 0.002525, "pre_b": 0.001148,
                              "pro_b": 0.005894, "unidentified": 0.972064},
            "confidence": 0.972064, "needs_review": True, "review_reasons": ["unidentified"]}
    return FrameResult.model_validate({
        "frame_id": frame_id, "specimen_id": "S1", "source": f"/data/inbox/S1/{frame_id}.jpg",
        "rig_id": "rig-1", "status": "done", "captured_at": now - 2, "completed_at": now,
        "frame_class": "benign", "frame_probabilities": {"benign": 0.93, "pro_b": 0.07},
        "cells": [cell, {**cell, "bbox": [109, 156, 26, 27], "class": "benign",
                         "confidence": 0.873156, "needs_review": False,
                         "review_reasons": []}],
        "models": {kind: {"name": f"leukoscope-{kind}", "version": "2.0.0",
                          "sha256": f"{i}" * 64} for i, kind in
                   enumerate(("segmenter", "classifier"))},
        "timings_ms": {"queue_wait": 7468.532, "decode": 0.262, "rescale": 4.627, "qc": 0.231,
                       "segment": 6.901, "crop": 0.27, "classify": 0.591},
        "worker": "vm-w0", "quality": {"focus": 81.2, "mean_brightness": 201.5},
        "um_per_pixel": 0.31, "metadata": {"stream_time": "12.500", "seq": "7"},
        "scale": {"um_per_pixel": 0.37332, "source": "estimated", "factor": 0.85441,
                  "rbc_diameter_px": 19.711, "reliable": True},
        "acquisition": {"background_rgb": [233.0, 227.0, 239.0], "brightness": 230.16,
                        "hue_deg": 308.66, "chroma": 6.4, "gain": [1.0815, 1.1233, 1.0586]},
        "needs_review": True, "review_reasons": ["unidentified_cells"],
    })


def test_a_stored_result_reads_back_whole_in_a_third_of_its_json(
        redis_client: redis.Redis) -> None:
    """Results are most of Redis: each one's value is deflated with a dictionary of what
    every result repeats. Plain JSON (as stored before) takes more than its length."""
    store = ResultStore(redis_client)
    stored = analysed("a1b2c3d4e5f6a1b2c3d4e5f6")
    assert store.store(stored)
    assert store.get(stored.frame_id) == stored  # every field the API returns
    assert store.page(None, 10)[0] == [stored]
    used = redis_client.memory_usage(RESULT_KEY.format(stored.frame_id), samples=0)
    assert used < len(stored.to_json()) / 3, (used, len(stored.to_json()))


def test_results_stored_as_plain_json_before_are_still_read(redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    old = analysed("0123456789abcdef01234567")
    redis_client.set(RESULT_KEY.format(old.frame_id), old.to_json())  # as stored before
    assert store.get(old.frame_id) == old


def test_where_the_original_went_costs_a_few_bytes_of_the_result(
        redis_client: redis.Redis) -> None:
    """Capture records where it moved each original inside the stored result, where
    deflate finds most of the path in ``source``: a few bytes a result, where an entry in
    a hash of their own took 70 (this test) to 130 bytes (a large hash)."""
    store = ResultStore(redis_client)
    stored = [analysed(f"{i:024x}") for i in range(200)]
    for item in stored:
        store.store(item)

    def used() -> int:
        keys = list(redis_client.scan_iter(count=1000))
        return sum(redis_client.memory_usage(key, samples=0) or 0 for key in keys)

    before = used()
    store.record_moved([(item.frame_id, f"/data/archive/S1/{item.frame_id}.jpg")
                        for item in stored])
    grown = (used() - before) / len(stored)
    assert grown < 30, grown
    assert store.get(stored[7].frame_id).archived_path == f"/data/archive/S1/{'7'.zfill(24)}.jpg"
    page, _ = store.page(None, 500)
    assert [r.archived_path for r in page] == [f"/data/archive/S1/{r.frame_id}.jpg"
                                               for r in stored]
    assert [r.model_copy(update={"archived_path": None}) for r in page] == stored


def test_a_result_stored_as_plain_json_before_is_located_as_before(
        redis_client: redis.Redis) -> None:
    store = ResultStore(redis_client)
    old = analysed("fedcba9876543210fedcba98")
    redis_client.set(RESULT_KEY.format(old.frame_id), old.to_json())  # as stored before
    store.record_moved([(old.frame_id, "/data/archive/S1/old.jpg")])
    assert store.get(old.frame_id).archived_path == "/data/archive/S1/old.jpg"
    assert redis_client.get(RESULT_KEY.format(old.frame_id)) == old.to_json().encode()


def test_a_specimens_frames_are_kept_compact_up_to_1024(redis_client: redis.Redis) -> None:
    """Each result of a specimen adds its frame to the specimen's gallery index (a zset).
    The embedded Redis keeps it in the compact encoding up to 1,024 frames: under 60 bytes
    a frame for 500, where the default (128) made it a skiplist of about 120."""
    store = ResultStore(redis_client)
    for i in range(500):
        store.store(result(f"{i:024x}"))
    frames = SPECIMEN_FRAMES_KEY.format("S1")
    assert redis_client.zcard(frames) == 500
    assert redis_client.memory_usage(frames, samples=0) / 500 < 60


def test_redis_memory_is_summed_by_the_key_names_of_the_schema(
        redis_client: redis.Redis) -> None:
    """What `leukoscope reliability` reports per stored result, by key name."""
    from daemon.store.connection import memory_by_key

    store = ResultStore(redis_client)
    for i in range(3):
        store.store(result(f"m{i}"))
    by_key = memory_by_key(redis_client)
    assert by_key[RESULT_KEY] == sum(
        redis_client.memory_usage(RESULT_KEY.format(f"m{i}"), samples=0) for i in range(3))
    assert {SPECIMEN_FRAMES_KEY, LOG_KEY} <= set(by_key)


def test_batched_stores_and_enqueues_survive_a_server_that_lost_its_scripts(
        redis_client: redis.Redis) -> None:
    """Script calls go as EVALSHA alone (no SCRIPT EXISTS first): after SCRIPT FLUSH (what
    a restarted Redis without the scripts is) every enqueue and every store of a batch still
    runs exactly once."""
    from daemon.store.keys import GROUP, STREAM_KEY
    from daemon.store.queue import FrameQueue

    queue = FrameQueue(redis_client)
    store = ResultStore(redis_client, STREAM_KEY, GROUP)
    redis_client.script_flush()
    outcomes = [queue.enqueue(f"q{i}", "S1", f"/in/q{i}.jpg", "rig-1", b"x")
                for i in range(3)]
    assert outcomes == ["new", "new", "new"]
    assert queue.backlog_seen == 3 == queue.backlog()
    deliveries = queue.read("w", 10, 0)
    redis_client.script_flush()
    stored = store.store_many([(result(d.frame_id), d.entry_id) for d in deliveries]
                              + [(result("q0"), None)])  # a duplicate in the same batch
    assert stored == [True, True, True, False]
    assert queue.backlog() == 0 and store.count() == 3
    assert queue.enqueue("q1", "S1", "/in/q1.jpg", "rig-1", b"x") == "stored"

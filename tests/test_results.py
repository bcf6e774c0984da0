import time

import pytest
import redis

from daemon.domain.results import FrameResult
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


def test_batched_stores_and_enqueues_survive_a_server_that_lost_its_scripts(
        redis_client: redis.Redis) -> None:
    """Batches send EVALSHA alone (no SCRIPT EXISTS first): after SCRIPT FLUSH (what a
    restarted Redis without the scripts is) every call of the batch still runs exactly once."""
    from daemon.store.keys import GROUP, STREAM_KEY
    from daemon.store.queue import FrameQueue

    queue = FrameQueue(redis_client)
    store = ResultStore(redis_client, STREAM_KEY, GROUP)
    redis_client.script_flush()
    outcomes = queue.enqueue_many([queue.entry(f"q{i}", "S1", f"/in/q{i}.jpg", "rig-1", b"x")
                                   for i in range(3)])
    assert outcomes == ["new", "new", "new"]
    assert queue.backlog_seen == 3 == queue.backlog()
    deliveries = queue.read("w", 10, 0)
    redis_client.script_flush()
    stored = store.store_many([(result(d.frame_id), d.entry_id) for d in deliveries]
                              + [(result("q0"), None)])  # a duplicate in the same batch
    assert stored == [True, True, True, False]
    assert queue.backlog() == 0 and store.count() == 3
    assert queue.enqueue_many([queue.entry("q1", "S1", "/in/q1.jpg", "rig-1", b"x")]) == [
        "stored"]

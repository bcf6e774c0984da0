"""Bounded Redis and disk (issue 16): the audit trail leaves Redis by age and length, into
rotated JSON-lines files first; orphaned in-flight records are forgotten; /status and
/metrics say how much Redis and data_dir hold. Real Redis, real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from daemon.domain.results import FrameResult
from daemon.ops.housekeeping import sweep_inflight, trim_audit
from daemon.ops.status import StatusReader
from daemon.store import audit
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore


def test_audit_is_trimmed_by_age_and_length_into_daily_files(redis_client: redis.Redis,
                                                              tmp_path: Path) -> None:
    day = 86400.0
    now = time.time()
    # 5 entries "written" 3 days ago, 10 today (stream ids carry the time: XADD with an id)
    for i in range(5):
        redis_client.xadd("lks:audit", {"time": repr(now - 3 * day + i), "key": "lis",
                                        "role": "read", "action": "results.read"},
                          id=f"{int((now - 3 * day) * 1000) + i}-0")
    for i in range(10):
        audit.record(redis_client, "lis", "read", "results.read", frame_id=f"f{i}")
    assert audit.length(redis_client) == 15
    folder = tmp_path / "audit"
    moved = trim_audit(redis_client, folder, retention_days=1, max_entries=None, now=now)
    assert moved == 5 and audit.length(redis_client) == 10
    (old_file,) = folder.glob("audit-*.jsonl")
    lines = [json.loads(line) for line in old_file.read_text().splitlines()]
    assert len(lines) == 5 and all(line["action"] == "results.read" for line in lines)
    # by length: the oldest leave first, into today's file
    moved = trim_audit(redis_client, folder, retention_days=None, max_entries=4, now=now)
    assert moved == 6 and audit.length(redis_client) == 4
    kept, _ = audit.page(redis_client, None, 10)
    assert [e.frame_id for e in kept] == ["f6", "f7", "f8", "f9"]
    archived = [json.loads(line) for path in sorted(folder.glob("audit-*.jsonl"))
                for line in path.read_text().splitlines()]
    assert len(archived) == 11 and len({a["cursor"] for a in archived}) == 11
    # nothing more to do: idempotent
    assert trim_audit(redis_client, folder, 1, 4, now=now) == 0


def test_orphaned_inflight_records_are_forgotten(redis_client: redis.Redis) -> None:
    queue, results = FrameQueue(redis_client), ResultStore(redis_client)
    for frame_id in ("old", "fresh", "waiting"):
        assert queue.enqueue(frame_id, "S1", f"upload:S1/{frame_id}.jpg", "rig-gone",
                             b"\xff\xd8\xff") == "new"
    now = time.time()
    for frame_id, age in (("old", 3600), ("fresh", 5)):
        results.store(FrameResult(frame_id=frame_id, specimen_id="S1", source="x",
                                  rig_id="rig-gone", status="done", captured_at=now - age,
                                  completed_at=now - age))
    assert sweep_inflight(redis_client, older_than=now - 600) == 1
    assert {r.frame_id for r in queue.inflight()} == {"fresh", "waiting"}


def test_status_and_metrics_show_redis_memory_and_data_dir_bytes(
        redis_client: redis.Redis, make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    (settings.archive_dir / "S1").mkdir(parents=True)
    (settings.archive_dir / "S1" / "a.jpg").write_bytes(b"x" * 100_000)
    report = StatusReader(redis_client, settings, time.time()).report()
    storage = report.storage
    assert storage.redis_used_memory_bytes > 100_000
    assert storage.data_dir_bytes["archive"] >= 100_000
    assert storage.filesystem_total_bytes > storage.filesystem_free_bytes > 0
    names = {family.name for family in
             StatusReader(redis_client, settings, time.time()).live_gauges()}
    assert {"leukoscope_redis_memory_used_bytes", "leukoscope_data_dir_bytes",
            "leukoscope_audit_entries"} <= names


def test_the_lease_outlives_one_mllp_delivery_and_parts_fail_alone(
        make_settings, redis_client: redis.Redis) -> None:
    from daemon.ops.housekeeping import Housekeeper

    settings = make_settings(lis={"mllp": {"host": "127.0.0.1", "port": 9,
                                           "connect_timeout_seconds": 5,
                                           "ack_timeout_seconds": 15}},
                             audit={"max_entries": 2})
    keeper = Housekeeper(settings, redis_client)
    assert keeper.leader()
    assert redis_client.pttl("lks:housekeeper") > 20 * 1000  # longer than one delivery

    def broken(*_args: object) -> None:
        raise RuntimeError("one bad specimen")

    keeper.specimens.tick = broken  # the lifecycle part fails on every step ...
    for i in range(5):
        audit.record(redis_client, "lis", "read", "results.read", frame_id=f"f{i}")
    keeper.step()  # ... and the audit retention after it still runs
    assert audit.length(redis_client) == 2
    keeper.stop()  # a stopping process hands the upkeep over at once
    assert redis_client.get("lks:housekeeper") is None

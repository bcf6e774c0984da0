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


def _zset_encoding(client: redis.Redis, key: str, members: int) -> str:
    client.delete(key)
    client.zadd(key, {f"frame-{i:04d}": i for i in range(members)})
    encoding = client.object("encoding", key)
    client.delete(key)
    return encoding.decode() if isinstance(encoding, bytes) else encoding


def test_a_redis_of_your_own_is_told_to_keep_frame_indexes_compact(
        redis_client: redis.Redis, make_settings) -> None:
    """A server at the default (128) is raised to 1,024 at start-up, and a 500-frame index
    is then stored compact; a server set higher by hand is left as it is."""
    from daemon.store.connection import ZSET_COMPACT_ENTRIES, ensure_compact_zsets

    name = next(n for n in ("zset-max-listpack-entries", "zset-max-ziplist-entries")
                if redis_client.config_get(n))
    redis_client.config_set(name, 128)  # a Redis as it comes
    assert _zset_encoding(redis_client, "test:zset", 500) == "skiplist"
    reader = StatusReader(redis_client, make_settings(), time.time())
    compaction = reader.report().storage.redis_zset_compaction
    assert compaction.ok and compaction.entries == ZSET_COMPACT_ENTRIES
    assert compaction.setting == name and compaction.refused is None
    assert int(redis_client.config_get(name)[name]) == ZSET_COMPACT_ENTRIES
    assert _zset_encoding(redis_client, "test:zset", 500) in ("listpack", "ziplist")

    redis_client.config_set(name, 4096)  # set higher by hand: never lowered
    state = ensure_compact_zsets(redis_client)
    assert state.ok and state.entries == 4096 and state.raised_from is None
    assert int(redis_client.config_get(name)[name]) == 4096


def test_a_redis_that_refuses_config_is_warned_about_once_and_shown(
        redis_client: redis.Redis, redis_url: str, make_settings, caplog, monkeypatch) -> None:
    """An ACL user without CONFIG (as on a managed Redis): one warning naming the setting and
    what it costs, however often it is checked, and ok: false in /status and /metrics."""
    from daemon.ops import status

    name = next(n for n in ("zset-max-listpack-entries", "zset-max-ziplist-entries")
                if redis_client.config_get(n))
    redis_client.config_set(name, 128)
    redis_client.acl_setuser("managed", enabled=True, nopass=True, keys=["*"],
                             channels=["*"], commands=["+@all", "-config"])
    limited = redis.Redis.from_url(redis_url, username="managed")
    monkeypatch.setattr(status, "ZSET_CHECK_SECONDS", 0.0)  # check on every report
    reader = StatusReader(limited, make_settings(), time.time())
    with caplog.at_level("WARNING", logger="daemon.ops.status"):
        reports = [reader.report().storage.redis_zset_compaction for _ in range(3)]
    assert all(not r.ok and r.entries is None and "permission" in r.refused for r in reports)
    warnings = [r.getMessage() for r in caplog.records if r.name == "daemon.ops.status"]
    assert len(warnings) == 1, warnings
    assert "zset-max-listpack-entries" in warnings[0] and "1024" in warnings[0]
    assert "130 bytes a frame" in warnings[0]
    assert int(redis_client.config_get(name)[name]) == 128  # nothing was set
    gauges = {f.name: f.samples[0].value for f in reader.live_gauges()
              if f.name == "leukoscope_redis_zset_compact"}
    assert gauges == {"leukoscope_redis_zset_compact": 0.0}

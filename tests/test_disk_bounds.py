"""Disk bounds of data_dir (issue 16): the archive of originals and the daily audit files,
with real files on disk; the archive keeps every original of a specimen still in flight."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon import telemetry
from daemon.ops.disk_bounds import prune_archive, prune_audit_files, prune_quarantine
from daemon.ops.housekeeping import Housekeeper
from daemon.ops.status import StatusReader
from daemon.settings import REASON_SUFFIX, ConfigError, Settings, load_settings
from daemon.store.queue import FrameQueue

DAY = 86400.0
NOW = 1_795_000_000.0  # 2026-11-18 (UTC)


def deleted(metric: str, reason: str) -> float:
    return telemetry.LOCAL.get_sample_value(metric, {"reason": reason}) or 0.0


def original(archive: Path, specimen: str, name: str, size: int, age_days: float) -> Path:
    path = archive / specimen / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    return path


def audit_files(folder: Path, days: int, size: int) -> list[Path]:
    """One file per UTC day up to NOW's day (2026-11-18), oldest first."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for day in range(18 - days + 1, 19):
        path = folder / f"audit-2026-11-{day:02d}.jsonl"
        path.write_bytes(b"x" * (size - 1) + b"\n")
        made.append(path)
    return made


def test_audit_files_past_their_age_go_oldest_first_and_today_stays(tmp_path: Path) -> None:
    files = audit_files(tmp_path, 10, 1000)  # 2026-11-09 .. 2026-11-18
    (tmp_path / "notes.txt").write_text("not an audit file")
    pruned = prune_audit_files(tmp_path, 3.0, None, now=NOW)
    # days that ended more than 3 days before NOW (mid-18th): the 9th to the 14th
    assert [p.exists() for p in files] == [False] * 6 + [True] * 4
    assert (pruned.files, pruned.bytes) == (6, 6000)
    assert deleted("leukoscope_audit_files_deleted_total", "age") == 6
    assert (tmp_path / "notes.txt").exists()


def test_audit_files_over_their_byte_bound_lose_the_oldest_days(tmp_path: Path) -> None:
    files = audit_files(tmp_path, 10, 1000)
    pruned = prune_audit_files(tmp_path, None, 3500, now=NOW)
    # 10,000 bytes held, 3,500 allowed: the 7 oldest go, 3 days (3,000 bytes) stay
    assert [p.exists() for p in files] == [False] * 7 + [True] * 3
    assert pruned.files == 7
    assert deleted("leukoscope_audit_files_deleted_total", "size") == 7
    # today's file is still being appended to: kept even alone over the bound
    prune_audit_files(tmp_path, None, 10, now=NOW)
    assert [p.exists() for p in files] == [False] * 9 + [True]


def test_archive_keeps_within_age_and_bytes_and_a_busy_specimen_keeps_all(
        tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    old_a = original(archive, "S-A", "f1.jpg", 1000, 40)
    old_busy = original(archive, "S-BUSY", "f1.jpg", 1000, 50)
    mid_b = [original(archive, "S-B", f"f{i}.jpg", 1000, 20 - i) for i in range(5)]
    new_c = original(archive, "S-C", "f1.jpg", 1000, 1)
    pruned = prune_archive(archive, 30.0, None, {"S-BUSY"}, now=NOW)
    assert not old_a.exists() and not (archive / "S-A").exists()  # emptied folder removed
    assert old_busy.exists()  # in flight: its result may not be stored yet
    assert all(p.exists() for p in mid_b) and new_c.exists()
    assert pruned.files == 1 and deleted("leukoscope_archive_originals_deleted_total", "age") == 1
    # 7,000 bytes held (the busy file counts), 4,000 allowed: the 3 oldest deletable go
    pruned = prune_archive(archive, 30.0, 4000, {"S-BUSY"}, now=NOW)
    assert old_busy.exists()
    assert [p.exists() for p in mid_b] == [False, False, False, True, True]
    assert new_c.exists() and pruned.files == 3
    assert deleted("leukoscope_archive_originals_deleted_total", "size") == 3
    # no bound configured: nothing is touched
    assert prune_archive(archive, None, None, set(), now=NOW).files == 0


def quarantined(folder: Path, specimen: str, name: str, size: int, file_age_days: float,
                note_age_days: float | None) -> tuple[Path, Path]:
    """A quarantined file (mtime: the rig's) and, unless ``note_age_days`` is None, its
    reason note (mtime: when it was quarantined)."""
    path = original(folder, specimen, name, size, file_age_days)
    note = path.with_name(path.name + REASON_SUFFIX)
    if note_age_days is not None:
        note.write_bytes(b"r" * 100)
        os.utime(note, (NOW - note_age_days * DAY, NOW - note_age_days * DAY))
    return path, note


def test_quarantined_files_go_with_their_notes_by_quarantine_age_then_bytes(
        tmp_path: Path) -> None:
    folder = tmp_path / "quarantine"
    old = quarantined(folder, "S-A", "blur.jpg", 900, 60, 40)
    # written by the rig long ago, quarantined yesterday: the note's age counts
    recent = quarantined(folder, "S-B", "late.jpg", 900, 60, 1)
    lone_note = quarantined(folder, "S-C", "gone.jpg", 900, 50, 45)[1]
    lone_note.with_name("gone.jpg").unlink()  # a note whose file is gone is its own unit
    writing = folder / "S-C" / ".upload.jpg.123.part"
    writing.write_bytes(b"x" * 5000)
    os.utime(writing, (NOW - 90 * DAY, NOW - 90 * DAY))
    mid = [quarantined(folder, "S-D", f"f{i}.jpg", 900, 30, 20 - i) for i in range(4)]
    pruned = prune_quarantine(folder, 30.0, None, now=NOW)
    assert not any(p.exists() for p in old) and not (folder / "S-A").exists()
    assert not lone_note.exists() and writing.exists()  # a file being written is left alone
    assert all(p.exists() for p in recent) and all(p.exists() for u in mid for p in u)
    assert (pruned.files, pruned.bytes) == (2, 1000 + 100)
    assert deleted("leukoscope_quarantine_files_deleted_total", "age") == 2
    # 5 files of 1,000 bytes with their notes, 2,500 allowed: the 3 oldest pairs go
    pruned = prune_quarantine(folder, None, 2500, now=NOW)
    assert [p.exists() for u in mid for p in u] == [False] * 6 + [True] * 2
    assert all(p.exists() for p in recent)
    assert pruned.files == 3 and pruned.bytes == 3000
    assert deleted("leukoscope_quarantine_files_deleted_total", "size") == 3
    assert prune_quarantine(folder, None, None, now=NOW).files == 0


def test_the_housekeeper_bounds_archive_and_quarantine_but_not_a_specimen_in_flight(
        make_settings: Callable[..., Settings], redis_client) -> None:
    settings = make_settings(archive={"retention_days": 1.0, "max_bytes": 50_000},
                             quarantine={"retention_days": 1.0, "max_bytes": 20_000},
                             audit={"files_retention_days": 2.0})
    queue = FrameQueue(redis_client)
    # a pushed frame queued, its copy already archived (as POST /frames does): no result yet
    assert queue.enqueue("f-busy", "S-PUSHED", "upload:S-PUSHED/a.jpg", "rig-1",
                         b"\xff\xd8jpeg") == "new"
    real_now = time.time()
    for specimen in ("S-PUSHED", "S-DONE"):
        path = settings.archive_dir / specimen / "a.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (real_now - 3 * DAY, real_now - 3 * DAY))
    rejected = settings.quarantine_dir / "S-BAD" / "a.jpg"
    rejected.parent.mkdir(parents=True)
    for path in (rejected, rejected.with_name("a.jpg" + REASON_SUFFIX)):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (real_now - 3 * DAY, real_now - 3 * DAY))
    old_day = settings.audit_dir / "audit-2020-01-01.jsonl"
    old_day.parent.mkdir(parents=True, exist_ok=True)
    old_day.write_text("{}\n")
    Housekeeper(settings, redis_client).step()
    assert (settings.archive_dir / "S-PUSHED" / "a.jpg").exists()
    assert not (settings.archive_dir / "S-DONE").exists()
    assert not old_day.exists()
    assert not (settings.quarantine_dir / "S-BAD").exists()
    storage = StatusReader(redis_client, settings, real_now).storage()
    assert storage.data_dir_limit_bytes == {"archive": 50_000, "quarantine": 20_000}


@pytest.mark.parametrize("key", ["archive.max_bytes", "archive.retention_days",
                                 "quarantine.max_bytes", "quarantine.retention_days",
                                 "audit.files_max_bytes", "audit.files_retention_days"])
def test_a_disk_bound_of_zero_is_refused_naming_its_key(key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}: Input should be greater than 0"):
        load_settings(None, **{section: {name: 0}})

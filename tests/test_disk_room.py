"""daemon/store/disk.py: the data disk's floor for intake (queue.min_free_bytes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.settings import Settings
from daemon.store import disk
from daemon.store.disk import IntakeRoom, free_bytes


def test_room_by_the_floor(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert IntakeRoom(tmp_path, None).check().ok  # no floor
    assert IntakeRoom(tmp_path, 1).check().ok
    full = IntakeRoom(tmp_path, free * 4).check()
    assert not full.ok and full.min_free_bytes == free * 4
    assert full.free_bytes is not None and full.free_bytes < free * 4
    assert "queue.min_free_bytes" in full.reason()


def test_a_folder_not_made_yet_is_measured_on_its_filesystem(tmp_path: Path) -> None:
    assert free_bytes(tmp_path / "var" / "not" / "yet") == pytest.approx(
        shutil.disk_usage(tmp_path).free, rel=0.01)


def test_the_answer_is_reused_for_a_moment_then_read_again(tmp_path: Path, monkeypatch) -> None:
    room = IntakeRoom(tmp_path, 1)
    assert room.check().ok
    reads: list[Path] = []
    monkeypatch.setattr(disk, "free_bytes", lambda path: reads.append(path) or 0)
    assert room.check().ok and reads == []  # within CHECK_EVERY_SECONDS: the last answer
    room._checked_at -= disk.CHECK_EVERY_SECONDS
    assert not room.check().ok and reads == [tmp_path]


def test_the_setting_is_validated_and_may_be_null() -> None:
    assert Settings().queue.min_free_bytes == 1 << 30
    assert Settings(queue={"min_free_bytes": None}).queue.min_free_bytes is None
    with pytest.raises(ValidationError, match="min_free_bytes"):
        Settings(queue={"min_free_bytes": 0})


def test_a_change_of_room_is_logged_once_each_way(tmp_path: Path, monkeypatch, caplog) -> None:
    room = IntakeRoom(tmp_path, 1000)
    free = iter([0, 0, 5000])
    monkeypatch.setattr(disk, "free_bytes", lambda path: next(free))
    with caplog.at_level("INFO", logger="daemon.store.disk"):
        for _ in range(3):
            room._checked_at -= disk.CHECK_EVERY_SECONDS
            room.check()
    assert [r.getMessage()[:15] for r in caplog.records] == ["intake stopped:", "intake resumed:"]

"""InboxWatcher settle logic with a fake clock: deterministic, no sleeps, no Redis."""

from __future__ import annotations

import os
import time
from pathlib import Path

from capture.watcher import InboxWatcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def names(watcher: InboxWatcher) -> list[str]:
    return [r.placement.name for r in watcher.ready()]


def test_file_is_ready_only_after_settling(tmp_path: Path) -> None:
    clock = Clock()
    watcher = InboxWatcher(tmp_path, settle_seconds=1.0, poll_seconds=0.01,
                           native_events=False, clock=clock)
    path = tmp_path / "S1" / "a.jpg"
    path.parent.mkdir()
    path.write_bytes(b"part one")
    assert names(watcher) == []
    clock.now += 0.9
    with open(path, "ab") as handle:  # still growing: settle time starts again
        handle.write(b" and two")
    assert names(watcher) == []
    clock.now += 0.9
    assert names(watcher) == []
    clock.now += 0.2
    ready = watcher.ready()
    assert [r.placement.name for r in ready] == ["a.jpg"] and ready[0].size == 16
    # Taken: not offered again while unchanged, offered again once it changes.
    watcher.taken(ready[0], "fid")
    assert watcher.owner(path) == "fid"
    clock.now += 5
    assert names(watcher) == []
    path.write_bytes(b"rewritten")
    os.utime(path, ns=(1, 1))
    assert watcher.owner(path) is None
    clock.now += 0.02  # the next rescan sees the change; its settle time starts there
    assert names(watcher) == []
    clock.now += 1.1
    assert names(watcher) == ["a.jpg"]


def test_renamed_file_is_ready_at_once_and_excluded_dirs_are_skipped(tmp_path: Path) -> None:
    clock = Clock()
    excluded = tmp_path / "var"
    watcher = InboxWatcher(tmp_path, settle_seconds=60, poll_seconds=0.01,
                           native_events=False, exclude=[excluded], clock=clock)
    (excluded / "archive" / "S1").mkdir(parents=True)
    (excluded / "archive" / "S1" / "old.jpg").write_bytes(b"x")
    path = tmp_path / "b.jpg"
    path.write_bytes(b"frame")
    watcher._hint(str(path), renamed=True)  # what the watchdog handler does on moved-to
    assert names(watcher) == ["b.jpg"]
    clock.now += 120
    assert names(watcher) == ["b.jpg"]  # the excluded archive is never offered


def age(path: Path, seconds: float) -> None:
    """Set ``path``'s mtime ``seconds`` into the past (the removal goes by the folder's own)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_folders_empty_for_long_enough_are_removed(tmp_path: Path) -> None:
    clock = Clock()
    watcher = InboxWatcher(tmp_path, settle_seconds=60, poll_seconds=0.01,
                           native_events=False, clock=clock, empty_folder_seconds=3600)
    folders = {name: tmp_path / name for name in
               ("old_empty", "new_empty", "old_with_frame", "old_with_marker", "old_with_part")}
    for folder in folders.values():
        folder.mkdir()
    (folders["old_with_frame"] / "a.jpg").write_bytes(b"x")
    (folders["old_with_marker"] / ".complete").write_bytes(b"")
    (folders["old_with_part"] / "b.jpg.part").write_bytes(b"half")  # still being delivered
    for name, folder in folders.items():
        age(folder, 60 if name == "new_empty" else 7200)
    age(tmp_path, 7200)  # the inbox itself is never removed, empty or not
    names(watcher)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new_empty", "old_with_frame", "old_with_marker", "old_with_part"]
    assert watcher.folders_removed == 1
    # An emptied folder's clock restarts when its last file leaves (moving a file out of a
    # folder changes the folder's mtime).
    (folders["old_with_frame"] / "a.jpg").unlink()
    clock.now += 1
    names(watcher)
    assert folders["old_with_frame"].is_dir()
    age(folders["old_with_frame"], 3601)
    age(folders["new_empty"], 3601)
    clock.now += 1
    names(watcher)
    assert not folders["old_with_frame"].exists() and not folders["new_empty"].exists()
    assert watcher.folders_removed == 3 and tmp_path.is_dir()


def test_nested_empty_folders_go_one_level_per_idle_time_and_excluded_ones_stay(
        tmp_path: Path) -> None:
    clock = Clock()
    data_dir = tmp_path / "site" / "var"  # the data folder inside the inbox: excluded
    data_dir.mkdir(parents=True)
    nested = tmp_path / "S1" / "deeper"
    nested.mkdir(parents=True)
    for folder in (data_dir, data_dir.parent, nested, nested.parent):
        age(folder, 7200)
    watcher = InboxWatcher(tmp_path, settle_seconds=60, poll_seconds=0.01, native_events=False,
                           exclude=[data_dir], clock=clock, empty_folder_seconds=3600)
    names(watcher)
    # The empty leaf goes; its parent was just changed by that, so it waits its own time.
    assert not nested.exists() and nested.parent.is_dir()
    assert data_dir.is_dir() and data_dir.parent.is_dir()  # neither the data folder nor its parent
    age(nested.parent, 7200)
    clock.now += 1
    names(watcher)
    assert not nested.parent.exists() and data_dir.is_dir()


def test_no_folder_is_removed_when_disabled(tmp_path: Path) -> None:
    watcher = InboxWatcher(tmp_path, settle_seconds=60, poll_seconds=0.01, native_events=False,
                           clock=Clock(), empty_folder_seconds=0)
    (tmp_path / "S1").mkdir()
    age(tmp_path / "S1", 10 * 365 * 86400)
    names(watcher)
    assert (tmp_path / "S1").is_dir() and watcher.folders_removed == 0

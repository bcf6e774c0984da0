"""InboxWatcher settle logic with a fake clock: deterministic, no sleeps, no Redis."""

from __future__ import annotations

import os
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

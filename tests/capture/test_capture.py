"""The capture loop against a real embedded Redis and real files in a temporary inbox."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from daemon import telemetry
from daemon.domain.ids import UNASSIGNED
from daemon.domain.results import FrameResult
from daemon.imaging.frames import frame_id_for
from daemon.store import keys
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from tests.capture.conftest import (
    after_passes,
    after_rescans,
    complete,
    entries,
    frame_bytes,
    wait_for,
)
from tests.capture.frames import good_rgb

REPO = Path(__file__).resolve().parents[2]


def drop(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def result_of(client: redis.Redis, specimen: str, name: str, data: bytes) -> FrameResult | None:
    return ResultStore(client).get(frame_id_for(specimen, name, data))


def heartbeat(client: redis.Redis, rig: str = "rig-1") -> dict:
    raw = client.hget(keys.CAPTURES_KEY, rig)
    return json.loads(raw) if raw else {}


def exported(name: str) -> list[float]:
    """This process's samples of the process-local metric ``name``."""
    return [s.value for f in telemetry.LOCAL.collect() for s in f.samples if s.name == name]


def test_frame_queued_once_and_not_again_after_restart(client, inbox, make_settings, running):
    settings = make_settings()
    data_a, data_b = frame_bytes(1), frame_bytes(2, ".png")
    path_a = drop(inbox / "SPEC-001", "field_01.jpg", data_a)
    path_b = drop(inbox, "loose.PNG", data_b)
    with running(settings) as service:
        wait_for(lambda: len(entries(client)) == 2, what="two frames queued")
        by_source = {e["source"]: e for e in entries(client)}
        a, b = by_source[str(path_a)], by_source[str(path_b)]
        assert (a["specimen_id"], a["rig_id"], a["data"]) == ("SPEC-001", "rig-1", data_a)
        assert a["frame_id"] == frame_id_for("SPEC-001", "field_01.jpg", data_a)
        assert (b["specimen_id"], b["data"]) == (UNASSIGNED, data_b)
        # Rescans do not queue it again.
        after_rescans(service)
        assert len(entries(client)) == 2
        wait_for(lambda: heartbeat(client).get("frames_queued") == 2, what="heartbeat")
        assert heartbeat(client)["state"] == "watching"
        assert heartbeat(client)["directory"] == str(inbox)
    assert heartbeat(client)["state"] == "stopped"
    assert path_a.exists() and path_b.exists()  # no result yet: originals stay

    with running(settings) as service:
        # The restarted capture sees both files, recognises them as queued, queues nothing.
        wait_for(lambda: service.watcher.owner(path_a) and service.watcher.owner(path_b),
                 what="restarted capture to take both files")
        assert len(entries(client)) == 2
        assert service.frames_queued == 0
        # A result now arrives: the file moves to the archive, the record is forgotten.
        assert len(complete(client)) == 2
        archived = settings.archive_dir / "SPEC-001" / "field_01.jpg"
        wait_for(archived.exists, what="archive")
        wait_for(lambda: (settings.archive_dir / UNASSIGNED / "loose.PNG").exists(),
                 what="archive of the unassigned frame")
        assert archived.read_bytes() == data_a and not path_a.exists()
        wait_for(lambda: not FrameQueue(client).inflight("rig-1"), what="records forgotten")


def test_result_stored_while_capture_was_down(client, inbox, make_settings, running):
    settings = make_settings()
    queued = drop(inbox / "S1", "a.jpg", frame_bytes(3))
    with running(settings):
        wait_for(lambda: len(entries(client)) == 1, what="queued")
    complete(client)  # a worker finishes while capture is stopped
    # A file already in the archive under the same name is kept; the new one gets a suffix.
    drop(settings.archive_dir / "S1", "a.jpg", b"older frame")
    # A file whose result exists but which was never queued (no in-flight record).
    data = frame_bytes(4)
    stored = drop(inbox / "S1", "b.jpg", data)
    ResultStore(client).store(FrameResult(
        frame_id=frame_id_for("S1", "b.jpg", data), specimen_id="S1", source=str(stored),
        status="done", captured_at=time.time(), completed_at=time.time()))
    with running(settings) as service:
        wait_for(lambda: not queued.exists() and not stored.exists(), what="both archived")
        assert (settings.archive_dir / "S1" / "a-1.jpg").read_bytes() == frame_bytes(3)
        assert (settings.archive_dir / "S1" / "a.jpg").read_bytes() == b"older frame"
        assert (settings.archive_dir / "S1" / "b.jpg").read_bytes() == data
        after_rescans(service)
        assert entries(client) == []  # nothing re-queued
        assert FrameQueue(client).inflight() == []


def test_bad_files_are_quarantined_with_reasons(client, inbox, make_settings, running):
    settings = make_settings()
    jpeg, png = frame_bytes(5), frame_bytes(6, ".png")
    bad = {
        "empty.jpg": (b"", "empty_file"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "cut.png": (png[: len(png) - 20], "truncated"),
        "notes.jpg": (b"this is a text file, not an image\n", "not_an_image"),
        "readme.txt": (b"hello\n", "not_an_image"),
    }
    for name, (data, _) in bad.items():
        drop(inbox / "S2", name, data)
    good = drop(inbox / "S2", "good.jpg", jpeg)
    with running(settings) as service:
        quarantine = settings.quarantine_dir / "S2"
        for name, (data, reason) in bad.items():
            wait_for((quarantine / name).exists, what=f"{name} quarantined")
            assert (quarantine / name).read_bytes() == data
            note = (quarantine / f"{name}.reason.txt").read_text()
            assert f"reason: {reason}" in note and str(inbox / "S2" / name) in note
            result = result_of(client, "S2", name, data)
            assert result is not None, name
            assert (result.status, result.reason, result.rig_id) == ("rejected", reason, "rig-1")
            assert result.error and result.source == str(inbox / "S2" / name)
            assert not (inbox / "S2" / name).exists()
        wait_for(lambda: len(entries(client)) == 1, what="the good frame queued")
        assert entries(client)[0]["source"] == str(good)
        assert service.frames_rejected == len(bad)
        # The daemon keeps running; a frame a worker rejects is quarantined too.
        complete(client, status="rejected", reason="undecodable", error="decoder said no")
        wait_for((quarantine / "good.jpg").exists, what="worker-rejected frame quarantined")
        assert "reason: undecodable" in (quarantine / "good.jpg.reason.txt").read_text()
        assert not good.exists()


def test_slowly_written_file_is_not_read_early(client, inbox, make_settings, running):
    settings = make_settings(settle_seconds=1.0)
    data = frame_bytes(7, size=384)
    path = inbox / "S3" / "slow.jpg"
    path.parent.mkdir()
    chunks = [data[i: i + len(data) // 25 + 1] for i in range(0, len(data), len(data) // 25 + 1)]

    def write_slowly() -> None:
        with open(path, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                handle.flush()
                time.sleep(0.1)

    with running(settings):
        writer = threading.Thread(target=write_slowly)
        started = time.monotonic()
        writer.start()
        queued = wait_for(lambda: entries(client), timeout=15, what="slow frame queued")
        writer.join()
        assert time.monotonic() - started >= 0.1 * len(chunks)
        assert len(queued) == 1 and queued[0]["data"] == data
        assert not settings.quarantine_dir.exists()


def test_part_files_ignored_until_renamed(client, inbox, make_settings, running):
    settings = make_settings()
    data = frame_bytes(8)
    part = drop(inbox / "S4", "frame.jpg.part", data)
    drop(inbox / "S4", "frame2.tmp", data)
    drop(inbox / "S4", ".hidden.jpg", data)
    drop(inbox / ".staging", "x.jpg", data)
    with running(settings) as service:
        control = drop(inbox / "S4", "control.jpg", frame_bytes(9))
        wait_for(lambda: len(entries(client)) == 1, what="control frame queued")
        after_rescans(service)
        assert [e["source"] for e in entries(client)] == [str(control)]
        assert part.exists() and not settings.quarantine_dir.exists()
        final = part.with_name("frame.jpg")
        os.rename(part, final)
        wait_for(lambda: len(entries(client)) == 2, what="renamed frame queued")
        assert entries(client)[1]["data"] == data and entries(client)[1]["source"] == str(final)


def test_rename_into_place_is_taken_without_settling(client, inbox, make_settings, running):
    settings = make_settings(settle_seconds=60)  # only the moved-to event can make it ready
    with running(settings) as service:
        if not service.watcher.using_events:
            pytest.skip("no native file events on this system")
        # In a folder watched since start: a folder created just now may get its watch only
        # after the rename, and then the file is (correctly) left to settle instead.
        part = drop(inbox, "f.jpg.part", frame_bytes(10))
        os.rename(part, part.with_name("f.jpg"))
        wait_for(lambda: len(entries(client)) == 1, timeout=5, what="renamed frame queued")


def test_backpressure_pauses_and_resumes(client, inbox, make_settings, running):
    settings = make_settings(max_backlog=2)
    paths = [drop(inbox / "S6", f"f{i}.jpg", frame_bytes(20 + i)) for i in range(3)]
    with running(settings) as service:
        wait_for(lambda: len(entries(client)) == 2, what="two frames queued")
        wait_for(lambda: heartbeat(client).get("state") == "paused_backpressure", what="pause")
        assert service.state == "paused_backpressure"
        after_passes(service)  # several loop ticks while paused
        assert len(entries(client)) == 2
        assert complete(client)  # the backlog drains
        wait_for(lambda: len(entries(client)) == 1, what="third frame queued after draining")
        wait_for(lambda: heartbeat(client).get("state") == "watching", what="resume")
        complete(client)
        for path in paths:
            wait_for(lambda p=path: (settings.archive_dir / "S6" / p.name).exists(),
                     what=f"{path.name} archived")


def test_a_nearly_full_data_disk_pauses_capture_and_loses_nothing(client, inbox, make_settings,
                                                                   running, caplog):
    """Below queue.min_free_bytes free on the data disk capture takes nothing (the file waits
    in the inbox, with a warning that names the setting) and resumes once there is room."""
    from daemon.store.disk import IntakeRoom

    settings = make_settings()
    free = shutil.disk_usage(settings.data_dir.parent).free
    settings.queue.min_free_bytes = free * 4  # more than this disk will ever have free
    path = drop(inbox / "S7", "f.jpg", frame_bytes(40))
    with caplog.at_level(logging.INFO, logger="daemon.store.disk"), running(settings) as service:
        wait_for(lambda: heartbeat(client).get("state") == "paused_disk_low", what="pause")
        after_passes(service)
        assert entries(client) == [] and path.exists()
        assert any("queue.min_free_bytes" in r.getMessage() for r in caplog.records)
        service.intake.disk_room = IntakeRoom(settings.data_dir, 1)  # room again
        wait_for(lambda: len(entries(client)) == 1, what="the frame queued once there is room")
        wait_for(lambda: heartbeat(client).get("state") == "watching", what="resume")
        complete(client)
        wait_for(lambda: (settings.archive_dir / "S7" / "f.jpg").exists(), what="archived")
    stopped = [r for r in caplog.records if r.getMessage().startswith("intake stopped")]
    assert len(stopped) == 1  # said once, however many passes it stayed paused


def test_a_burst_is_queued_once_in_order_and_archived_with_its_paths(
        client, inbox, make_settings, running):
    """A burst of 40 files, more than one archiver batch: each queued once, oldest first,
    and each original archived, its archived_path recorded and its in-flight record gone."""
    settings = make_settings()
    count = 40
    paths = [drop(inbox / "S7", f"b{i:03d}.jpg", frame_bytes(100 + i)) for i in range(count)]
    for age, path in enumerate(paths):
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    with running(settings):
        wait_for(lambda: len(entries(client)) == count, what="the burst queued")
        assert [e["source"] for e in entries(client)] == [str(p) for p in paths]
        assert len(complete(client, limit=count)) == count
        for path in paths:
            wait_for(lambda p=path: not p.exists(), what=f"{path.name} moved")
        wait_for(lambda: client.hlen(keys.INFLIGHT_KEY) == 0, what="records forgotten")
    store = ResultStore(client)
    for path, data in zip(paths, (frame_bytes(100 + i) for i in range(count)), strict=True):
        stored = store.get(frame_id_for("S7", path.name, data))
        assert stored is not None
        assert stored.archived_path == str(settings.archive_dir / "S7" / path.name)
        assert Path(stored.archived_path).read_bytes() == data
    assert len(entries(client)) == 0


def test_backpressure_counts_a_containers_pages(client, inbox, make_settings, running):
    """max_backlog 4: a 3-page TIFF is 3 frames of backlog, so one JPEG after it fits and the
    next waits (counting files, capture took both: 5 frames)."""
    import io

    import numpy as np
    import tifffile

    settings = make_settings(max_backlog=4)
    stack = io.BytesIO()
    tifffile.imwrite(stack, np.stack([good_rgb(40 + p) for p in range(3)]), photometric="rgb")
    tiff = drop(inbox / "S6B", "stack.tif", stack.getvalue())
    jpegs = [drop(inbox / "S6B", f"after{i}.jpg", frame_bytes(30 + i)) for i in range(2)]
    for age, path in enumerate([tiff, *jpegs]):  # oldest first: the TIFF, then the JPEGs
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    with running(settings) as service:
        wait_for(lambda: len(entries(client)) == 4, what="the TIFF's pages and one JPEG")
        wait_for(lambda: service.state == "paused_backpressure", what="pause")
        after_passes(service)
        assert len(entries(client)) == 4
        assert sum("#" in e["source"] for e in entries(client)) == 3


def test_capture_and_pushes_together_never_pass_max_backlog(client, inbox, make_settings,
                                                             running):
    """max_backlog 6, no worker draining. An HTTP push holds room for 3 frames (the API's
    admission, taken while its file is decoded) as capture starts on 6 files: capture's
    files are admitted by the same script, so it queues 3 and waits, and once the push's 3
    frames are in the stream the backlog is 6. Counting only the stream, capture took all
    6 files before the push's frames came: 9."""
    settings = make_settings(max_backlog=6)
    for i in range(6):
        drop(inbox / "S6C", f"f{i}.jpg", frame_bytes(60 + i))
    push = FrameQueue(client)
    with push.admission(3, 6) as (admitted, _):
        assert admitted
        with running(settings) as service:
            wait_for(lambda: service.state == "paused_backpressure", what="capture pauses")
            after_passes(service)  # capture tries again while full: it still may not queue
            assert len(entries(client)) == 3
            for i in range(3):  # the push's frames arrive, as intake.offer queues them
                push.enqueue(f"push-{i}", "P-1", f"upload:P-1/p{i}.jpg", "rig-push", b"x")
            after_passes(service)
            assert len(entries(client)) == 6
    assert client.hlen(keys.ADMISSION_KEY) == 0  # every reservation released


def test_a_container_larger_than_the_room_left_goes_in_page_by_page(client, inbox,
                                                                    make_settings, running):
    """max_backlog 2 and a 3-page TIFF: two pages are queued, the third waits (decoded, in
    the capture loop) until a worker makes room, then the file is archived: the bound is
    never passed, and the file is not refused for having more pages than it."""
    import io

    import numpy as np
    import tifffile

    settings = make_settings(max_backlog=2)
    stack = io.BytesIO()
    tifffile.imwrite(stack, np.stack([good_rgb(70 + p) for p in range(3)]), photometric="rgb")
    tiff = drop(inbox / "S6D", "stack.tif", stack.getvalue())
    with running(settings) as service:
        wait_for(lambda: service.state == "paused_backpressure", what="pause mid-file")
        assert len(entries(client)) == 2 and tiff.exists()
        assert len(complete(client)) == 2  # a worker makes room
        wait_for(lambda: len(entries(client)) == 1, what="the third page queued")
        wait_for(lambda: (settings.archive_dir / "S6D" / "stack.tif").exists(),
                 what="the TIFF archived")
        assert [e["source"].rsplit("#", 1)[1] for e in entries(client)] == ["p2"]


def test_bad_specimen_folders_are_quarantined(client, inbox, make_settings, running):
    settings = make_settings()
    data = frame_bytes(11)
    drop(inbox / "bad name!", "a.jpg", data)
    drop(inbox / "S7" / "deeper", "b.jpg", data)
    drop(inbox / ("x" * 70), "c.jpg", data)
    good = drop(inbox / "S7", "ok.jpg", data)
    with running(settings):
        quarantine = settings.quarantine_dir / UNASSIGNED
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            wait_for((quarantine / name).exists, what=f"{name} quarantined")
            note = (quarantine / f"{name}.reason.txt").read_text()
            assert "reason: bad_location" in note
        assert "nested too deep" in (quarantine / "b.jpg.reason.txt").read_text()
        rejected = [r for r in ResultStore(client).page(None, 100)[0] if r.status == "rejected"]
        assert sorted(r.reason for r in rejected) == ["bad_location"] * 3
        wait_for(lambda: len(entries(client)) == 1, what="good frame queued")
        assert entries(client)[0]["source"] == str(good)


def test_polling_only(client, inbox, make_settings, running):
    settings = make_settings(native_events=False)
    with running(settings) as service:
        assert not service.watcher.using_events
        path = drop(inbox / "S8", "p.bmp", frame_bytes(12, ".bmp"))
        part = drop(inbox / "S8", "q.tif.part", frame_bytes(13, ".tif"))
        os.rename(part, part.with_name("q.tif"))
        wait_for(lambda: len(entries(client)) == 2, what="frames queued by polling")
        complete(client)
        wait_for(lambda: not path.exists() and not part.with_name("q.tif").exists(),
                 what="archived by polling capture")
        assert (settings.archive_dir / "S8" / "p.bmp").exists()


def test_sigterm_stops_cleanly(client, inbox, make_settings, tmp_path):
    settings = make_settings()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {settings.data_dir}\n"
        f"redis: {{url: '{settings.redis.url}'}}\n"
        f"capture: {{directory: {inbox}, settle_seconds: 0.2, poll_seconds: 0.2}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "capture", "--config", str(config)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: heartbeat(client).get("state") == "watching" or process.poll(),
                 timeout=30, what="capture process watching")
        assert process.poll() is None, process.stdout.read().decode()
        drop(inbox / "S9", "x.jpg", frame_bytes(14))
        wait_for(lambda: entries(client), what="frame queued by the capture process")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert heartbeat(client)["state"] == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_data_dir_inside_the_inbox_is_not_watched(client, inbox, make_settings, running):
    settings = make_settings()
    settings.data_dir = inbox / "var"  # archive and quarantine end up under the inbox
    path = drop(inbox / "S10", "a.jpg", frame_bytes(15))
    drop(inbox / "S10", "empty.jpg", b"")
    with running(settings) as service:
        wait_for(lambda: len(entries(client)) == 1, what="queued")
        complete(client)
        archived = settings.archive_dir / "S10" / "a.jpg"
        wait_for(lambda: archived.exists() and not path.exists(), what="archived")
        wait_for((settings.quarantine_dir / "S10" / "empty.jpg").exists, what="quarantined")
        after_rescans(service)  # the archive is neither re-queued nor quarantined
        assert archived.exists() and len(entries(client)) == 0
        assert sorted(p.name for p in settings.quarantine_dir.rglob("*")) == [
            "S10", "empty.jpg", "empty.jpg.reason.txt"]


def test_stopping_right_after_archiving_leaves_watchdog_quiet(client, inbox, make_settings,
                                                              running, caplog):
    """A stop within watchdog's 0.5 s move-pairing delay of an archived frame (as at nearly
    every stop of a busy rig): watchdog logged "InotifyEmitter.queue_events() called when
    the thread is inactive" at error level each time. Three stops, each right after a
    frame left the inbox; not one error-level record from watchdog."""
    settings = make_settings()
    with caplog.at_level("DEBUG", logger="watchdog"):
        for i in range(3):
            with running(settings) as service:
                assert service.watcher.using_events
                data = frame_bytes(40 + i)
                path = drop(inbox / "S-STOP", f"f{i}.jpg", data)
                wait_for(lambda: complete(client), what="queued, then stored by a worker")
                archived = settings.archive_dir / "S-STOP" / path.name
                wait_for(archived.exists, what="archive")
            assert not path.exists()
    noisy = [r for r in caplog.records
             if r.name.startswith("watchdog") and r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]


def test_a_specimen_folder_left_empty_is_removed_once_idle(client, inbox, make_settings,
                                                           running):
    """The inbox does not keep a folder per specimen for ever: once its frame is archived, the
    emptied folder goes after capture.empty_folder_seconds; a folder holding only a completion
    marker stays, and so does one emptied just now when the time is the default day."""
    settings = make_settings(empty_folder_seconds=0.5)
    removed = []
    data = frame_bytes(21)
    path = drop(inbox / "S20", "a.jpg", data)
    marker = drop(inbox / "S21", ".complete", b"")
    os.utime(marker.parent, (time.time() - 3600,) * 2)
    with running(settings) as service:
        removed.append(exported("leukoscope_inbox_folders_removed_total"))
        wait_for(lambda: len(entries(client)) == 1, what="queued")
        complete(client)
        archived = settings.archive_dir / "S20" / "a.jpg"
        wait_for(lambda: archived.exists() and not path.exists(), what="archived")
        wait_for(lambda: not path.parent.exists(), what="the emptied folder removed")
        after_rescans(service)
        assert marker.parent.is_dir() and inbox.is_dir()
        assert service.watcher.folders_removed == 1
    assert archived.read_bytes() == data
    assert result_of(client, "S20", "a.jpg", data).status == "done"
    removed.append(exported("leukoscope_inbox_folders_removed_total"))
    assert removed == [[0.0], [1.0]]  # exported from capture's start, then counted
    # With the default (a day), a folder emptied just now stays.
    path = drop(inbox / "S22", "b.jpg", frame_bytes(22))
    with running(make_settings()) as service:
        wait_for(lambda: len(entries(client)) == 1, what="queued")
        complete(client)
        wait_for(lambda: not path.exists(), what="archived")
        after_rescans(service)
        assert path.parent.is_dir() and service.watcher.folders_removed == 0

"""Live capture through OpenCV: an MJPG AVI and an image sequence written here, played
through the camera reader, field gating, QC and the queue; streams that end and stall."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.gating import Gate
from capture.stream import StreamCapture
from daemon import telemetry
from daemon.store import keys
from tests.capture.conftest import entries, wait_for
from tests.capture.frames import good_rgb, noisy

FPS = 10.0


def panning(count: int, start: int) -> list[np.ndarray]:
    """Frames of a stage moving across a large smear: a different window each frame."""
    field = good_rgb(99, 640)
    return [np.ascontiguousarray(field[:224, 40 * i % 400: 40 * i % 400 + 224])
            for i in range(start, start + count)]


def still(count: int, seed: int) -> list[np.ndarray]:
    """A field held still: the same image with the sensor's noise on each frame."""
    image = good_rgb(seed)
    return [noisy(image, 1.0, seed * 1000 + i) for i in range(count)]


def settle_sequence() -> tuple[list[np.ndarray], int]:
    """moving, still, moving, still, moving: two still fields."""
    frames = panning(5, 0) + still(10, 1) + panning(5, 5) + still(10, 2) + panning(5, 10)
    return frames, 2


def write_avi(path: Path, frames: list[np.ndarray]) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG AVI here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_sequence(folder: Path, frames: list[np.ndarray]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        assert cv2.imwrite(str(folder / f"img_{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return str(folder / "img_%04d.png")


@contextlib.contextmanager
def streaming(settings) -> Iterator[StreamCapture]:
    service = StreamCapture(settings)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(timeout=10)
        assert not thread.is_alive() and not errors, errors


def counters() -> dict[tuple[str, str], float]:
    """This process's live-source counters (daemon.telemetry), by name and reason, rig-1 only."""
    out: dict[tuple[str, str], float] = {}
    for family in telemetry.LOCAL.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("rig") == "rig-1":
                key = (sample.name, sample.labels.get("reason", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def test_settle_gate_captures_once_per_still_field():
    frames, fields = settle_sequence()
    gate = Gate("settle", settle_seconds=0.3)
    captured = [i for i, f in enumerate(frames) if gate.decide(f, i / FPS)]
    # Still fields are frames 5-14 and 20-29 (frame 5 still differs from frame 4, so the
    # field counts as still from frame 6); each is taken once, 0.3 s after it settled.
    assert captured == [9, 24]
    # A stream that opens on a still field captures it as well.
    gate = Gate("settle", settle_seconds=0.3)
    assert [i for i, f in enumerate(still(6, 3)) if gate.decide(f, i / FPS)] == [3]
    # Waiting for focus: a still field is not captured while it is blurred.
    sharp = still(5, 4)[3]
    stream = [cv2.GaussianBlur(sharp, (0, 0), 3)] * 3 + [sharp]
    gate = Gate("settle", 1.0, 0.1, focus_ok=lambda rgb: rgb is sharp)
    assert [i for i, f in enumerate(stream) if gate.decide(f, i / FPS)] == [3]


def test_interval_and_every():
    frames = still(30, 5)
    gate = Gate("interval", interval_seconds=1.0)
    assert [i for i, f in enumerate(frames) if gate.decide(f, i / FPS)] == [0, 10, 20]
    gate = Gate("every")
    assert all(gate.decide(f, i / FPS) for i, f in enumerate(frames))


def test_mjpg_avi_through_gating_one_capture_per_field(client, make_settings, tmp_path):
    frames, fields = settle_sequence()
    video = write_avi(tmp_path / "live.avi", frames)
    settings = make_settings(source="opencv", opencv={
        "uri": str(video), "specimen_id": "LIVE-1", "reconnect_min_seconds": 30.0},
        gating={"mode": "settle", "settle_seconds": 0.3})
    with streaming(settings) as service:
        wait_for(lambda: service.camera.reconnects["ended"] >= 1, what="the video to end")
        # While it waits to reopen, /status (the capture registry) shows it disconnected.
        wait_for(lambda: json.loads(client.hget(keys.CAPTURES_KEY, "rig-1") or "{}"
                                    ).get("state") == "disconnected", what="disconnected state")
        wait_for(lambda: service.counts["seen"] == len(frames), what="all frames seen")
    queued = entries(client)
    assert len(queued) == fields
    assert {e["specimen_id"] for e in queued} == {"LIVE-1"}
    for entry in queued:
        image = cv2.imdecode(np.frombuffer(entry["data"], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (224, 224, 3) and entry["data"].startswith(b"\x89PNG")
    c = counters()
    assert c[("leukoscope_stream_frames_seen_total", "")] == len(frames)
    assert c[("leukoscope_stream_frames_captured_total", "")] == fields
    assert c[("leukoscope_stream_frames_gated_total", "")] == len(frames) - fields
    assert c[("leukoscope_camera_reconnects_total", "ended")] >= 1


def test_image_sequence_that_ends_is_reopened(client, make_settings, tmp_path):
    uri = write_sequence(tmp_path / "seq", still(4, 6))
    settings = make_settings(source="opencv", opencv={
        "uri": uri, "reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.1},
        gating={"mode": "every"})
    with streaming(settings) as service:
        wait_for(lambda: service.camera.reconnects["ended"] >= 2, what="two reconnects")
        # Wait on what is asserted below: the service's own count, not the reader thread's
        # (which reads ahead: on a loaded machine it was 8 while the service had seen 7).
        wait_for(lambda: service.counts["seen"] >= 8, what="the sequence replayed")
    # Every frame was taken (mode: every) and queued, replays included.
    assert service.counts["captured"] == service.counts["seen"] >= 8
    assert len(entries(client)) == service.counts["queued"] == service.counts["captured"]


def test_stalled_stream_is_released_and_reopened(client, make_settings, tmp_path):
    frozen = good_rgb(7)
    frames = panning(3, 0) + [frozen] * 30  # the source freezes: 3 s of one identical frame
    video = write_avi(tmp_path / "stall.avi", frames)
    settings = make_settings(source="opencv", opencv={
        "uri": str(video), "stall_seconds": 1.0, "reconnect_min_seconds": 0.05},
        gating={"mode": "every"}, qc={"enabled": False})
    with streaming(settings) as service:
        wait_for(lambda: service.camera.reconnects["stalled"] >= 1, what="a stall")
    # Frozen for 1 s of stream time (10 frames) after the first copy, then released.
    assert service.camera.reconnects["ended"] == 0
    assert counters()[("leukoscope_camera_reconnects_total", "stalled")] >= 1


@pytest.mark.parametrize("uri", ["/nonexistent/video.avi", "9"])
def test_source_that_cannot_open_keeps_retrying(client, make_settings, uri):
    settings = make_settings(source="opencv", opencv={
        "uri": uri, "reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.1})
    with streaming(settings) as service:
        wait_for(lambda: service.camera.reconnects["open_failed"] >= 2, what="retries")
        assert service.camera.state == "disconnected"


def test_live_capture_and_pushes_together_never_pass_max_backlog(client, make_settings,
                                                                 tmp_path):
    """max_backlog 3 and an HTTP push holding room for 2 (its admission, taken while its
    file is decoded): live capture reserves each frame by the same script, so it queues one
    and pauses; the push's 2 frames then fill the queue to 3. Counting only the stream, it
    queued 3 before pausing, 5 in all."""
    from daemon.store.queue import FrameQueue

    uri = write_sequence(tmp_path / "seq", still(4, 8))
    settings = make_settings(max_backlog=3, source="opencv", opencv={
        "uri": uri, "reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.1},
        gating={"mode": "every"}, qc={"enabled": False})
    push = FrameQueue(client)
    with push.admission(2, 3) as (admitted, _):
        assert admitted
        with streaming(settings) as service:
            wait_for(lambda: service.state == "paused_backpressure", what="capture pauses")
            assert len(entries(client)) == 1
            for i in range(2):  # the push's frames, as intake.offer queues them
                push.enqueue(f"push-{i}", "P-1", f"upload:P-1/p{i}.jpg", "rig-push", b"x")
    assert len(entries(client)) == 3


def test_a_nearly_full_data_disk_stops_live_frames_being_queued(client, make_settings,
                                                                 tmp_path):
    """Below queue.min_free_bytes the camera's frames are not queued (state
    paused_disk_low); with room again they are."""
    import shutil

    from daemon.store.disk import IntakeRoom

    uri = write_sequence(tmp_path / "seq", still(4, 8))
    settings = make_settings(source="opencv", opencv={
        "uri": uri, "reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.1},
        gating={"mode": "every"}, qc={"enabled": False})
    settings.queue.min_free_bytes = shutil.disk_usage(tmp_path).free * 4
    with streaming(settings) as service:
        wait_for(lambda: service.state == "paused_disk_low", what="capture pauses")
        time.sleep(0.5)  # several ticks while paused: a frame would have been queued by now
        assert entries(client) == []
        service.intake.disk_room = IntakeRoom(settings.data_dir, 1)
        wait_for(lambda: len(entries(client)) >= 1, what="frames queued with room again")

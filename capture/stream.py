"""``capture.source: opencv``: a live stream (or a video file / image sequence) through
field gating and quality control onto the queue.

Frames the gate lets through are encoded (PNG, lossless, or JPEG quality 95 as
``capture.opencv.encoding`` says) and offered like any other frame; they are named
``<rig>-<unix ms>-<seq>.<ext>`` in ``capture.opencv.specimen_id``. /status shows the rig's
state: ``connecting``, ``watching``, ``disconnected`` (reconnecting with backoff) or
``paused_backpressure``. /metrics counts frames seen, gated (dropped by the gate) and
captured, and reconnects by reason.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2
import redis

from capture.camera import Camera
from capture.gating import Gate
from capture.intake import Intake, SourceFrame
from daemon import telemetry
from daemon.imaging.frames import frame_id_for
from daemon.imaging.quality import focus_score, grey
from daemon.settings import Settings
from daemon.shutdown import on_stop_signals
from daemon.store import counters, heartbeats, keys
from daemon.store.connection import Outage, connect
from daemon.store.queue import FrameQueue

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
FLUSH_SECONDS = 0.5


class StreamCapture:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.rig_id = settings.capture.rig_id
        self.config = settings.capture.opencv
        self.client = client if client is not None else connect(settings)
        self.queue = FrameQueue.for_settings(self.client, settings)
        self.intake = Intake(settings, self.client, self.queue)
        self.camera = Camera(self.config)
        min_focus = settings.capture.qc.min_focus
        self.gate = Gate.from_settings(
            settings.capture.gating, lambda rgb: focus_score(grey(rgb)) >= min_focus)
        self.stopping = threading.Event()
        self.state = "starting"
        self.counts = {"seen": 0, "gated": 0, "captured": 0, "queued": 0, "rejected": 0}
        self._flushed = dict(self.counts)
        self._reconnects_flushed: dict[str, int] = {}
        self.started_at = time.time()
        self.heart = heartbeats.Heartbeat(
            self.client, keys.CAPTURES_KEY, self.rig_id, HEARTBEAT_SECONDS
        )
        self._last_flush = 0.0
        self._rig_label: str | None = None

    def stop(self) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        on_stop_signals(self.stop, "capture")

    def run(self) -> None:
        log.info("stream capture started", extra={
            "rig": self.rig_id, "uri": self.config.uri, "gating": self.settings.capture.gating.mode,
            "file": self.camera.file_mode, "latest_only": self.camera.latest_only})
        self.camera.start()
        try:
            Outage("stream capture", rig=self.rig_id).run(self.stopping, self.tick)
        finally:
            self.camera.stop()
            self.state = "stopped"
            try:
                self.flush(force=True)
                self.heartbeat(force=True)
            except redis.RedisError:
                pass
            log.info("stream capture stopped", extra={"rig": self.rig_id, **self.counts})

    def tick(self) -> float:
        """One turn of the loop: heartbeat, metrics, then one frame (or a pause)."""
        self.heartbeat()
        self.flush()
        if not self.intake.disk_room.check().ok:  # a camera cannot wait: frames go unqueued
            self._set_state("paused_disk_low")
            return 0.25
        # Room for the next frame, reserved by the script HTTP pushes use (queue.admission)
        # while it is grabbed, gated and queued, so camera and pushes never pass the bound.
        with self.queue.admission(1, self.settings.queue.max_backlog) as (admitted, _):
            if not admitted:
                self._set_state("paused_backpressure")
                return 0.25
            grab = self.camera.get(0.25)  # waits for the next frame, 0.25 s at most
            self._set_state("watching" if self.camera.state == "connected"
                            else self.camera.state)
            if grab is not None:
                self.handle(grab.seq, grab.t, grab.rgb)
        return 0.0

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("capture state", extra={"state": state})
            self.state = state
            self.heartbeat(force=True)

    def handle(self, seq: int, t: float, rgb) -> str | None:
        """Gate one frame; capture it (QC, queue) when the gate opens."""
        self.counts["seen"] += 1
        if not self.gate.decide(rgb, t):
            self.counts["gated"] += 1
            return None
        self.counts["captured"] += 1
        ext = ".png" if self.config.encoding == "png" else ".jpg"
        params = [] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 95]
        ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            log.error("could not encode a captured frame", extra={"seq": seq})
            return None
        data = buffer.tobytes()
        specimen = self.config.specimen_id
        name = f"{self.rig_id}-{int(time.time() * 1000)}-{seq:06d}{ext}"
        frame_id = frame_id_for(specimen, name, data)
        offer = self.intake.offer(SourceFrame(rgb, data), frame_id, specimen,
                                  f"opencv:{self.config.uri}#{seq}",
                                  metadata={"stream_time": f"{t:.3f}", "seq": str(seq)})
        if offer.outcome == "new":
            self.queue.forget(frame_id)  # no file behind it for an archiver to finish
            self.counts["queued"] += 1
        elif offer.outcome == "rejected":
            self.counts["rejected"] += 1
        return offer.outcome

    def flush(self, force: bool = False) -> None:
        """Add the counters' growth since the last flush to this process's metrics
        (``daemon.telemetry``), under the rig's capped label (``counters.RigLabels``)."""
        now = time.monotonic()
        if not force and now - self._last_flush < FLUSH_SECONDS:
            return
        self._last_flush = now
        if self._rig_label is None:  # Redis admits the rig once; it may be away at start
            self._rig_label = counters.RigLabels(self.client).label(self.rig_id)
        rig = {"rig": self._rig_label}
        for key in ("seen", "gated", "captured"):
            delta = self.counts[key] - self._flushed[key]
            if delta:
                telemetry.count(f"leukoscope_stream_frames_{key}_total", rig, delta)
                self._flushed[key] = self.counts[key]
        for reason, count in list(self.camera.reconnects.items()):
            delta = count - self._reconnects_flushed.get(reason, 0)
            if delta:
                telemetry.count("leukoscope_camera_reconnects_total", {**rig, "reason": reason},
                                delta)
                self._reconnects_flushed[reason] = count

    def heartbeat(self, force: bool = False) -> None:
        self.heart.beat(lambda: {
            "state": self.state, "source": "opencv", "uri": self.config.uri,
            "camera": self.camera.state, "reconnects": dict(self.camera.reconnects),
            "frames_queued": self.counts["queued"], "frames_rejected": self.counts["rejected"],
            "frames_seen": self.counts["seen"], "frames_gated": self.counts["gated"],
            "frames_captured": self.counts["captured"], "started_at": self.started_at,
        }, force)

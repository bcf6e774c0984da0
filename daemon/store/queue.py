"""The frame queue: a Redis stream with one consumer group shared by all workers.

Capture adds a frame's original encoded bytes with its metadata (bytes above
``queue.inline_max_bytes`` go to the frame store, store/frames.py, and the entry carries
their reference, so Redis memory per queued frame is bounded whatever the camera); a worker reads entries with
XREADGROUP, and the entry stays pending until the worker's result store acknowledges and
deletes it, so the stream's length is the backlog. Entries left pending by a dead worker are
taken over with XAUTOCLAIM. ``lks:inflight`` maps each queued frame to its source, which
dedupes re-queueing after a restart and tells capture which file to archive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from daemon.settings import Settings
from daemon.store import counters, scripts
from daemon.store.frames import FrameStore, MissingFrame
from daemon.store.keys import (
    ADMISSION_KEY,
    GROUP,
    INFLIGHT_KEY,
    METRICS_KEY,
    RESULT_KEY,
    SOLO_KEY,
    STREAM_KEY,
)

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One queue entry as a worker receives it."""

    entry_id: str
    frame_id: str
    specimen_id: str
    source: str
    rig_id: str
    captured_at: float
    data: bytes  # empty when the bytes are in the frame store (``data_ref``)
    deliveries: int = 1
    um_per_pixel: float | None = None  # pixel size of the frame as captured, when known
    metadata: dict[str, str] | None = None  # field metadata (HTTP push, CZI scene/tile)
    data_ref: str | None = None  # the frame's bytes in the frame store (store/frames.py)
    qc_done: bool = False  # quality control ran before queueing (HTTP push, live camera)
    # The frame's red-cell diameter is already in its rig's shared history (the API measured
    # and appended it): the worker, measuring it again, must not append it a second time.
    scale_shared: bool = False


@dataclass(frozen=True)
class Inflight:
    frame_id: str
    path: str
    rig_id: str
    specimen_id: str


@dataclass(frozen=True)
class Held:
    """A delivered, unacknowledged entry: who holds it and how often it was delivered."""

    frame_id: str
    source: str
    consumer: str
    deliveries: int


class FrameQueue:
    def __init__(self, client: redis.Redis, frames: FrameStore | None = None,
                 inline_max_bytes: int | None = None) -> None:
        """``frames`` and ``inline_max_bytes``: frames larger than that are written to the
        frame store and queued by reference; without a store every frame is inline."""
        self.client = client
        self.frames = frames
        self.inline_max_bytes = inline_max_bytes
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._admit = client.register_script(scripts.ADMIT)
        #: the stream's length right after this queue's last 'new' frame (``enqueue``)
        self.backlog_seen = 0
        self.ensure_group()

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> FrameQueue:
        """The queue with this installation's frame store and inline bound."""
        return cls(client, FrameStore(settings.frames_dir), settings.queue.inline_max_bytes)

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- capture side -------------------------------------------------------------------
    def enqueue(
        self,
        frame_id: str,
        specimen_id: str,
        source: str,
        rig_id: str,
        data: bytes,
        captured_at: float | None = None,
        um_per_pixel: float | None = None,
        metadata: dict[str, str] | None = None,
        qc_done: bool = False,
        scale_shared: bool = False,
    ) -> str:
        """Queue a frame once: returns 'new', 'queued' (already waiting) or 'stored'.
        After 'new', ``backlog_seen`` is the backlog that includes it.

        ``qc_done``: quality control already ran (the worker then skips it).
        ``scale_shared``: the frame's red-cell diameter is already in its rig's shared history
        (the worker then does not append it again). Bytes above
        ``inline_max_bytes`` are written to the frame store first (OSError), before the entry
        that names them exists: a worker that reads the entry finds the file.
        """
        captured = time.time() if captured_at is None else captured_at
        inflight = json.dumps({"path": source, "rig": rig_id, "specimen": specimen_id})
        ((field_name, _),) = counters.counter("leukoscope_frames_captured_total", {"rig": rig_id})
        fields = {
            "frame_id": frame_id,
            "specimen_id": specimen_id,
            "source": source,
            "rig_id": rig_id,
            "captured_at": repr(captured),
        }
        ref = None
        if (self.frames is not None and self.inline_max_bytes is not None
                and len(data) > self.inline_max_bytes):
            ref = self.frames.put(frame_id, data)
            fields["data_ref"] = ref
        else:
            fields["data"] = data
        if qc_done:
            fields["qc"] = "done"
        if scale_shared:
            fields["rbc"] = "shared"
        if um_per_pixel is not None:
            fields["um_per_pixel"] = repr(float(um_per_pixel))
        if metadata:
            fields["metadata"] = json.dumps(metadata, sort_keys=True)
        args: list = [frame_id, inflight, field_name]
        for key, value in fields.items():
            args.extend((key, value))
        keys = [RESULT_KEY.format(frame_id), INFLIGHT_KEY, STREAM_KEY, METRICS_KEY]
        try:
            (reply,) = scripts.run_many(self.client, [(self._enqueue, keys, args)])
        except BaseException:
            if ref is not None:  # nothing names it (or, at worst, the janitor decides)
                self._drop(ref, frame_id)
            raise
        if isinstance(reply, list):  # 'new', and the backlog with it
            outcome, self.backlog_seen = reply[0].decode(), int(reply[1])
        else:
            outcome = reply.decode()
        if ref is not None and outcome == "stored":
            # The frame has its result; its worker deleted (or will delete) the bytes.
            try:
                self.frames.delete(ref)  # type: ignore[union-attr]
            except OSError:  # the janitor's (store/frames.py sweep), as in release()
                log.warning("could not delete a stored frame; housekeeping will",
                            extra={"frame_id": frame_id, "ref": ref})
        return outcome

    def _drop(self, ref: str, frame_id: str) -> None:
        """Delete a stored frame that no queue entry may name. Redis failed mid-enqueue: the
        entry may have been added after all; leave the file to the janitor unless it is
        sure (a failure before the script ran leaves no record)."""
        try:
            if not self.client.hexists(INFLIGHT_KEY, frame_id):
                self.frames.delete(ref)  # type: ignore[union-attr]
        except redis.RedisError:
            pass

    def load(self, delivery: Delivery) -> bytes:
        """The frame's encoded bytes: inline, or from the frame store (MissingFrame)."""
        if delivery.data_ref is None:
            return delivery.data
        if self.frames is None:
            raise MissingFrame("a frame store reference, and this queue has no frame store")
        return self.frames.read(delivery.data_ref)

    def release(self, deliveries: list[Delivery]) -> None:
        """Delete the stored bytes of frames whose results are stored (never before)."""
        if self.frames is None:
            return
        for d in deliveries:
            if d.data_ref is not None:
                try:
                    self.frames.delete(d.data_ref)
                except OSError:
                    # Results are stored and acknowledged: a file left behind is the
                    # janitor's (store/frames.py sweep), never a reason to fail the batch.
                    log.warning("could not delete a stored frame; housekeeping will",
                                extra={"frame_id": d.frame_id, "ref": d.data_ref})

    @contextlib.contextmanager
    def admission(self, frames: int, max_backlog: int, seconds: float = 300.0
                  ) -> Iterator[tuple[bool, int]]:
        """Reserve room for ``frames`` frames (a file's pages) against ``max_backlog``, in one
        Redis script: concurrent pushes see each other's reservations, so they cannot all
        find room and overshoot. Yields (admitted, backlog incl. reservations); the
        reservation is released on exit (or expires after ``seconds`` if this process
        dies), by which time the frames it stood for are in the stream."""
        token = secrets.token_hex(8)
        admitted, backlog = self._admit(
            keys=[STREAM_KEY, ADMISSION_KEY],
            args=[token, int(frames), int(max_backlog), float(seconds)])
        try:
            yield bool(admitted), int(backlog)
        finally:
            if admitted:
                self.client.hdel(ADMISSION_KEY, token)

    def inflight(self, rig_id: str | None = None) -> list[Inflight]:
        out = []
        for frame_id, raw in self.client.hgetall(INFLIGHT_KEY).items():
            info = json.loads(raw)
            if rig_id is None or info["rig"] == rig_id:
                out.append(Inflight(frame_id.decode(), info["path"], info["rig"], info["specimen"]))
        return out

    def inflight_of(self, frame_id: str) -> Inflight | None:
        raw = self.client.hget(INFLIGHT_KEY, frame_id)
        if raw is None:
            return None
        info = json.loads(raw)
        return Inflight(frame_id, info["path"], info["rig"], info["specimen"])

    def inflight_many(self, frame_ids: list[str]) -> list[Inflight | None]:
        """``inflight_of`` for many frames in one round trip, in order."""
        if not frame_ids:
            return []
        out: list[Inflight | None] = []
        for frame_id, raw in zip(frame_ids, self.client.hmget(INFLIGHT_KEY, frame_ids),
                                 strict=True):
            info = None if raw is None else json.loads(raw)
            out.append(None if info is None else
                       Inflight(frame_id, info["path"], info["rig"], info["specimen"]))
        return out

    def forget_many(self, frame_ids: list[str]) -> None:
        """Drop the in-flight records of originals capture has finished, in one round trip."""
        if frame_ids:
            self.client.hdel(INFLIGHT_KEY, *frame_ids)

    def forget(self, frame_id: str) -> None:
        """Drop the in-flight record once the original file is archived or quarantined."""
        self.client.hdel(INFLIGHT_KEY, frame_id)

    def backlog(self) -> int:
        """Frames queued and not yet stored (waiting + being processed)."""
        return int(self.client.xlen(STREAM_KEY))

    def pending(self) -> int:
        """Frames delivered to a worker and not yet acknowledged."""
        try:
            return int(self.client.xpending(STREAM_KEY, GROUP)["pending"])
        except redis.ResponseError:
            return 0

    # --- worker side --------------------------------------------------------------------
    @staticmethod
    def _parse(entry_id: bytes, fields: dict[bytes, bytes]) -> Delivery:
        return Delivery(
            entry_id=entry_id.decode(),
            frame_id=fields[b"frame_id"].decode(),
            specimen_id=fields[b"specimen_id"].decode(),
            source=fields[b"source"].decode(),
            rig_id=fields[b"rig_id"].decode(),
            captured_at=float(fields[b"captured_at"]),
            data=fields.get(b"data", b""),
            um_per_pixel=float(fields[b"um_per_pixel"]) if b"um_per_pixel" in fields else None,
            metadata=json.loads(fields[b"metadata"]) if b"metadata" in fields else None,
            data_ref=fields[b"data_ref"].decode() if b"data_ref" in fields else None,
            qc_done=fields.get(b"qc") == b"done",
            scale_shared=fields.get(b"rbc") == b"shared",
        )

    def read(
        self, consumer: str, count: int, block_ms: int, own_pending: bool = False
    ) -> list[Delivery]:
        """New entries for ``consumer`` (or, with own_pending, the ones it already holds)."""
        reply = self.client.xreadgroup(
            GROUP,
            consumer,
            {STREAM_KEY: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending else block_ms,
        )
        if not reply:
            return []
        entries = [(eid, fields) for eid, fields in reply[0][1] if fields]
        deliveries = [self._parse(eid, fields) for eid, fields in entries]
        if own_pending:
            self._count_deliveries(deliveries)
        return deliveries

    def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over entries idle for ``min_idle_ms`` on other (dead) consumers."""
        reply = self.client.xautoclaim(
            STREAM_KEY, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        entries = reply[1] if reply else []
        deliveries = [self._parse(eid, fields) for eid, fields in entries if fields]
        self._count_deliveries(deliveries)
        return deliveries

    def _count_deliveries(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            info = self.client.xpending_range(
                STREAM_KEY, GROUP, min=delivery.entry_id, max=delivery.entry_id, count=1
            )
            if info:
                delivery.deliveries = int(info[0]["times_delivered"])

    # --- poison isolation -------------------------------------------------------------
    def solo_attempt(self, frame_id: str) -> int:
        """Count one more attempt to analyse ``frame_id`` alone; returns the count so far.

        Kept in Redis because the worker that makes the attempt may be the one it kills.
        """
        return int(self.client.hincrby(SOLO_KEY, frame_id, 1))

    def clear_solo(self, frame_ids: list[str]) -> None:
        if frame_ids:
            self.client.hdel(SOLO_KEY, *frame_ids)

    def solo_attempts(self, frame_id: str) -> int:
        """How often ``frame_id`` was analysed alone so far (read only)."""
        return int(self.client.hget(SOLO_KEY, frame_id) or 0)

    def held(self, count: int = 10_000) -> list[Held]:
        """Entries delivered to a worker and not acknowledged (XPENDING), oldest first, with
        their frame and holder: what ``leukoscope reliability`` checks before it kills a
        worker, so a kill is known to take frames with it."""
        try:
            pending = self.client.xpending_range(STREAM_KEY, GROUP, min="-", max="+",
                                                 count=count)
        except redis.ResponseError:  # no group yet
            return []
        pipe = self.client.pipeline(transaction=False)
        for p in pending:
            pipe.xrange(STREAM_KEY, min=p["message_id"], max=p["message_id"], count=1)
        held = []
        for p, entry in zip(pending, pipe.execute() if pending else [], strict=True):
            fields = entry[0][1] if entry else {}
            held.append(Held(fields.get(b"frame_id", b"").decode(),
                             fields.get(b"source", b"").decode(), p["consumer"].decode(),
                             int(p["times_delivered"])))
        return held

    def consumers(self) -> list[dict]:
        try:
            return self.client.xinfo_consumers(STREAM_KEY, GROUP)
        except redis.ResponseError:
            return []

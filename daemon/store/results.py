"""Stored results: one value per frame_id, plus an append-only log for cursor polling.

A result is written once (SET NX): a frame processed twice, after a worker died between
storing and acknowledging, keeps its first result. Storing, counting and acknowledging the
queue entry happen in one Redis script, so the three can never disagree. The one later write
is capture's, setting ``archived_path`` once it has moved the original (``record_moved``).

The value is the result's JSON, deflated with a preset dictionary (``encode_result``): a
result is about 1.6 KB of JSON, most of it field names, class names and enum values that
every result repeats, and a single result is too short for plain deflate to find them (it
halves it; with the dictionary it is about a quarter). ``decode_result`` reads both that and
the plain JSON values written before, so an upgraded installation needs no migration.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from daemon.domain.results import FRAME_REVIEW_REASONS, FrameResult
from daemon.store import counters, paging, scripts, specimens
from daemon.store.keys import (
    LOG_KEY,
    METRICS_KEY,
    NO_STREAM_KEY,
    RESULT_KEY,
    SPECIMEN_FRAMES_KEY,
    STORED_AT_KEY,
    UNASSIGNED_LOG,
)


@dataclass(frozen=True)
class LogEntry:
    cursor: str
    frame_id: str
    status: str
    rig: str


def outcome_increments(result: FrameResult) -> list[counters.Increment]:
    """The counters and histograms a newly stored result adds.

    Besides outcomes and latency, the drift measures of an analysed frame, per rig: its scale
    and scale source, its background (brightness, hue, a*/b*), its cells' classes and
    confidences, and whether and why it needs review. Rig ids are capped at scrape time
    (``counters.RigLabels``).
    """
    rig = result.rig_id or ""
    by_rig = {"rig": rig}
    inc = counters.counter(
        "leukoscope_frames_processed_total", {"rig": rig, "outcome": result.status}
    )
    if result.status == "rejected":
        inc += counters.counter(
            "leukoscope_frames_rejected_total", {"rig": rig, "reason": result.reason or "other"}
        )
    for cell in result.cells:
        inc += counters.counter(
            "leukoscope_cells_classified_total", {"rig": rig, "class": cell.class_}
        )
        if cell.confidence is not None:
            inc += counters.histogram("leukoscope_cell_confidence", cell.confidence, by_rig)
    latency = max(0.0, result.completed_at - result.captured_at)
    inc += counters.histogram("leukoscope_frame_latency_seconds", latency, by_rig)
    if result.needs_review:
        inc += counters.counter("leukoscope_frames_review_total", by_rig)
        for reason in dict.fromkeys(result.review_reasons):  # each reason once, bounded
            known = reason if reason in FRAME_REVIEW_REASONS else counters.OTHER
            inc += counters.counter(
                "leukoscope_frame_review_reasons_total", {"rig": rig, "reason": known}
            )
    if result.status != "done":
        return inc
    scale = result.scale
    if scale is not None:
        source = {"rig": rig, "source": scale.source}
        inc += counters.counter("leukoscope_frames_scale_source_total", source)
        if scale.um_per_pixel is not None:
            inc += counters.histogram("leukoscope_frame_scale_um_per_pixel", scale.um_per_pixel,
                                      source)
        if scale.source != "assumed":
            inc += counters.histogram("leukoscope_frame_scale_factor", scale.factor, by_rig)
    background = result.acquisition
    if background is not None:
        inc += counters.histogram("leukoscope_frame_background_brightness",
                                  background.brightness, by_rig)
        inc += counters.histogram("leukoscope_frame_background_hue_degrees",
                                  background.hue_deg, by_rig)
        if background.stain_hue_deg is not None:
            inc += counters.histogram("leukoscope_frame_stain_hue_degrees",
                                      background.stain_hue_deg % 360.0, by_rig)
        a, b = counters.chromaticity(background.hue_deg, background.chroma)
        for axis, value in (("a", a), ("b", b)):
            inc += counters.histogram("leukoscope_frame_background_chromaticity", value,
                                      {"rig": rig, "axis": axis})
    return inc


# --- the stored form of a result ------------------------------------------------------
# A value starting with this byte is raw deflate (RFC 1951) of the result's JSON with
# _ZDICT_V1 as preset dictionary; one starting with '{' is plain JSON (written before).
_DEFLATE_V1 = b"\x01"
# Never edit: every value written with it is read with it. A better dictionary is a new
# version byte beside this one. Fragments every result repeats (field names, enum values),
# the most frequent last: deflate reaches the end of a dictionary with the shortest codes.
_ZDICT_V1 = (
    b'"status":"rejected","reason":"too_large","undecodable","truncated","empty_file",'
    b'"unreadable","not_an_image","bad_name","bad_scale","overexposed","underexposed",'
    b'"empty_field","out_of_focus","quality":{"focus":,"saturated_fraction":0.,'
    b'"dark_fraction":0.,"mean_brightness":,"stained_fraction":0.},"status":"failed",'
    b'"configured","file","assumed","scale_unknown","acquisition_out_of_range","no_cells",'
    b'"scale_uncertain","cut_off","metadata":{"seq":"","stream_time":"'
    b'{"frame_id":"","specimen_id":"","source":"upload:","archived_path":null,"rig_id":"",'
    b'"status":"done","error":null,"reason":null,"captured_at":17,"completed_at":17,'
    b'"frame_class":"unidentified","frame_probabilities":{},"cells":[],'
    b'"models":{"segmenter":{"name":"leukoscope-segmenter","version":"","sha256":""},'
    b'"classifier":{"name":"leukoscope-classifier","version":"","sha256":""}},'
    b'"timings_ms":{"queue_wait":,"decode":0.,"rescale":,"qc":0.,"segment":,"crop":0.,'
    b'"classify":0.},"worker":"","quality":null,"um_per_pixel":null,"metadata":null,'
    b'"scale":{"um_per_pixel":0.,"source":"estimated","factor":,"rbc_diameter_px":,'
    b'"reliable":true},"acquisition":{"background_rgb":[.0,.0,.0],"brightness":,'
    b'"hue_deg":,"chroma":,"gain":[1.0},"needs_review":true,'
    b'"review_reasons":["unidentified_cells"]}'
    b'{"frame_id":"","specimen_id":"","source":"/var/lib/leukoscope/inbox/'
    b'"cells":[{"bbox":[,"area_px":,"class":"benign","probabilities":{"benign":0.0,'
    b'"early_pre_b":0.00,"pre_b":0.00,"pro_b":0.00,"unidentified":0.0},"confidence":0.9,'
    b'"needs_review":false,"review_reasons":["unidentified","low_confidence"]},{"bbox":['
)


def _deflate(json_text: bytes) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_ZDICT_V1)
    return _DEFLATE_V1 + deflate.compress(json_text) + deflate.flush()


def _inflate(raw: bytes) -> bytes:
    """The JSON of a stored value (deflated, or plain JSON as stored before)."""
    if raw[:1] != _DEFLATE_V1:
        return raw
    inflate = zlib.decompressobj(-15, zdict=_ZDICT_V1)
    text = inflate.decompress(raw[1:]) + inflate.flush()
    if not inflate.eof:
        raise ValueError("a stored result is cut short")
    return text


def encode_result(result: FrameResult) -> bytes:
    """The value stored for ``result`` (see ``_DEFLATE_V1``)."""
    return _deflate(result.to_json().encode())


def decode_result(raw: bytes) -> FrameResult:
    """A stored result, deflated (``encode_result``) or plain JSON (stored before)."""
    return FrameResult.model_validate_json(_inflate(raw))


class ResultStore:
    def __init__(
        self,
        client: redis.Redis,
        frames_stream: str = "",
        group: str = "",
        low_confidence: float = 0.6,
    ) -> None:
        self.client = client
        self.frames_stream = frames_stream
        self.group = group
        self.low_confidence = low_confidence  # specimens count cells below this confidence
        self._store = client.register_script(scripts.STORE_RESULT)

    def store(
        self,
        result: FrameResult,
        ack_entry: str | None = None,
        extra: Iterable[counters.Increment] = (),
    ) -> bool:
        """Store ``result`` unless one exists; ack ``ack_entry`` either way. True if new."""
        keys, args = self._script_call(result, ack_entry, extra)
        return bool(self._store(keys=keys, args=args))

    def store_many(self, items: list[tuple[FrameResult, str | None]]) -> list[bool]:
        """``store`` for a worker's batch in one round trip: [(result, ack_entry)]."""
        calls = [(self._store, *self._script_call(result, ack_entry, ()))
                 for result, ack_entry in items]
        return [bool(stored) for stored in scripts.run_many(self.client, calls)]

    def ack(self, entry_id: str) -> None:
        """Acknowledge and drop a queue entry whose frame already has a result."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.frames_stream, self.group, entry_id)
        pipe.xdel(self.frames_stream, entry_id)
        pipe.execute()

    def existing(self, frame_ids: list[str]) -> set[str]:
        """Which of ``frame_ids`` already have a result (one round trip; none for none)."""
        if not frame_ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for frame_id in frame_ids:
            pipe.exists(RESULT_KEY.format(frame_id))
        return {f for f, hit in zip(frame_ids, pipe.execute(), strict=True) if hit}

    def _script_call(
        self, result: FrameResult, ack_entry: str | None, extra: Iterable[counters.Increment]
    ) -> tuple[list, list]:
        increments = outcome_increments(result) + list(extra)
        args = [
            encode_result(result),
            result.frame_id,
            result.status,
            result.rig_id or "",
            self.group,
            ack_entry or "",
            specimens.store_payload(result, self.low_confidence),
            *counters.flatten(increments),
        ]
        keys = [
            RESULT_KEY.format(result.frame_id),
            LOG_KEY,
            METRICS_KEY,
            self.frames_stream or NO_STREAM_KEY,
            *specimens.store_keys(result.specimen_id),
            UNASSIGNED_LOG,
        ]
        return keys, args

    def exists(self, frame_id: str) -> bool:
        return bool(self.client.exists(RESULT_KEY.format(frame_id)))

    def get(self, frame_id: str) -> FrameResult | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(RESULT_KEY.format(frame_id))
        pipe.hget(STORED_AT_KEY, frame_id)
        raw, moved_to = pipe.execute()
        if not raw:
            return None
        result = decode_result(raw)
        if moved_to:  # recorded before archived_path went into the value (record_moved)
            result.archived_path = moved_to.decode()
        return result

    def record_moved(self, moved: list[tuple[str, str]]) -> None:
        """Capture moved these frames' originals, [(frame_id, path)]: each path becomes the
        stored result's ``archived_path``. In the value itself, where deflate finds most of
        the path in ``source`` (a few bytes), rather than an entry of its own in
        ``STORED_AT_KEY`` (about 130 bytes a result). Rewritten as JSON, not through this
        process's model, so fields only a newer worker knows are kept. Only capture writes a
        stored result again, once, after the worker's SET NX; XX leaves a result trimmed
        meanwhile gone. Two round trips for a whole batch of the archiver."""
        if not moved:
            return
        keys = [RESULT_KEY.format(frame_id) for frame_id, _ in moved]
        values = self.client.mget(keys)
        pipe = self.client.pipeline(transaction=False)
        for key, (frame_id, path), raw in zip(keys, moved, values, strict=True):
            if raw is None:
                continue  # trimmed (retention) before its original was moved
            if raw[:1] != _DEFLATE_V1:  # plain JSON, stored before: located as it was then
                pipe.hset(STORED_AT_KEY, frame_id, path)
                continue
            data = json.loads(_inflate(raw))
            data["archived_path"] = path
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
            pipe.set(key, _deflate(text), xx=True)
        pipe.execute()

    def count(self) -> int:
        return int(self.client.xlen(LOG_KEY))

    def log_after(self, after: str | None, limit: int) -> list[LogEntry]:
        """Log entries strictly after cursor ``after`` (None: from the oldest), oldest first."""
        entries = paging.entries_after(self.client, LOG_KEY, after, limit)
        return [
            LogEntry(
                cursor=entry_id.decode(),
                frame_id=fields[b"frame_id"].decode(),
                status=fields[b"status"].decode(),
                rig=fields.get(b"rig", b"").decode(),
            )
            for entry_id, fields in entries
        ]

    def page(self, after: str | None, limit: int) -> tuple[list[FrameResult], str]:
        """Results after ``after`` in storage order and the cursor to continue from."""
        return self._results(self.log_after(after, limit), after)

    def unassigned_page(self, after: str | None, limit: int) -> tuple[list[FrameResult], str]:
        """``page`` for the results of frames with no specimen (``UNASSIGNED_LOG``)."""
        entries = paging.entries_after(self.client, UNASSIGNED_LOG, after, limit)
        return self._results([LogEntry(i.decode(), f[b"frame_id"].decode(), "", "")
                              for i, f in entries], after)

    def unassigned_count(self) -> int:
        return int(self.client.xlen(UNASSIGNED_LOG))

    def _results(self, entries: list[LogEntry], after: str | None
                 ) -> tuple[list[FrameResult], str]:
        if not entries:
            return [], paging.next_cursor([], after)
        raws = self.client.mget([RESULT_KEY.format(e.frame_id) for e in entries])
        moved = self.client.hmget(STORED_AT_KEY, [e.frame_id for e in entries])
        items = []
        for raw, moved_to in zip(raws, moved, strict=True):
            if raw:
                item = decode_result(raw)
                if moved_to:  # recorded before archived_path went into the value
                    item.archived_path = moved_to.decode()
                items.append(item)
        return items, entries[-1].cursor

    def last_cursor(self) -> str:
        return paging.last_cursor(self.client, LOG_KEY)

    def wait_after(self, cursor: str, block_ms: int, count: int = 100) -> list[LogEntry]:
        """Block up to ``block_ms`` for log entries after ``cursor`` (capture's archiver)."""
        reply = self.client.xread({LOG_KEY: cursor}, count=count, block=block_ms)
        if not reply:
            return []
        return [
            LogEntry(
                entry_id.decode(),
                fields[b"frame_id"].decode(),
                fields[b"status"].decode(),
                fields.get(b"rig", b"").decode(),
            )
            for entry_id, fields in reply[0][1]
        ]


def trim_results(client: redis.Redis, older_than: float, batch: int = 500) -> int:
    """Delete frames' results (keys and log entries) stored before ``older_than`` (Unix s).

    The unassigned log (frames with no specimen) is trimmed to the same time, and each frame
    leaves its specimen's frame index (the review station's list: it would only point at
    nothing). Specimens, their counts and reports, and the audit trail stay.
    """
    removed = 0
    for entries in paging.batches_before(client, LOG_KEY, older_than, batch):
        frame_ids = [fields[b"frame_id"].decode() for _, fields in entries]
        raws = client.mget([RESULT_KEY.format(f) for f in frame_ids])
        pipe = client.pipeline(transaction=False)
        for frame_id, raw in zip(frame_ids, raws, strict=True):
            specimen_id = _specimen_of(raw)
            if specimen_id:
                pipe.zrem(SPECIMEN_FRAMES_KEY.format(specimen_id), frame_id)
        for entry_id, fields in entries:
            pipe.delete(RESULT_KEY.format(fields[b"frame_id"].decode()))
            pipe.hdel(STORED_AT_KEY, fields[b"frame_id"].decode())
            pipe.xdel(LOG_KEY, entry_id)
        pipe.execute()
        removed += len(entries)
    client.xtrim(UNASSIGNED_LOG, minid=f"{int(older_than * 1000)}-0", approximate=False)
    return removed


def _specimen_of(raw: bytes | None) -> str | None:
    """The specimen id of a stored result (None: gone, or unreadable: nothing to unindex)."""
    if not raw:
        return None
    try:
        return json.loads(_inflate(raw)).get("specimen_id")
    except (ValueError, zlib.error):
        return None

"""Specimens: the per-specimen aggregate of frame results, and its lifecycle.

A specimen is one Redis hash (``lks:specimen:<id>``) of counters. It is updated inside the
result-store script (:data:`STORE_LUA` is spliced into ``daemon.store.results``), which runs its
body only when a frame's result is new, so a frame re-processed after a worker crash is never
counted twice. The specimen opens with its first stored result; it completes once, by a
request (API or marker file), or after an idle time. A result stored for a complete specimen
is a *late frame*: kept with the frame's result, counted and listed on the specimen, never
folded into the final figures.

Two append-only streams make cursor polling exact: ``lks:specimens:opened`` gets one entry
when a specimen opens, ``lks:specimens:completed`` one entry when it completes (in the same
script that completes it), so a LIS paging ``status=complete`` with the ``next`` cursor sees
every completed specimen once, across restarts of the daemon and of Redis (AOF).

``unassigned`` (frames straight in the inbox or misplaced) is not a specimen.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Literal

import redis
from pydantic import BaseModel, Field

from daemon import CLASS_CODES
from daemon.domain.results import FrameResult, ModelRef

log = logging.getLogger(__name__)

SPECIMEN_KEY = "lks:specimen:{}"
LATE_KEY = "lks:specimen:{}:late"
OPENED_LOG = "lks:specimens:opened"
COMPLETED_LOG = "lks:specimens:completed"
OPEN_SET = "lks:specimens:open"  # zset: open specimen -> last activity (idle completion)
REQUESTED_SET = "lks:specimens:requested"  # zset: completion requested -> request time
CONTROL_COUNTER = "lks:lis:control"
OUTBOX_KEY = "lks:outbox"  # zset: specimen -> next attempt time

SPECIMEN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNASSIGNED = "unassigned"
BLAST_CLASSES = ("early_pre_b", "pre_b", "pro_b")

# Runs inside daemon.store.results' store script, only for a newly stored result.
# KEYS[5] specimen hash, KEYS[6] opened log, KEYS[7] open zset, KEYS[8] late set
# ARGV[7] JSON: {id, at, now, threshold, frame_id, incr: {field: n}, set: {field: value}}
STORE_LUA = """
local spec = cjson.decode(ARGV[7])
local skey = KEYS[5]
local sstatus = redis.call('HGET', skey, 'status')
if not sstatus then
  redis.call('HSET', skey, 'specimen_id', spec.id, 'status', 'open', 'opened_at', spec.now,
    'first_frame_at', spec.at, 'last_frame_at', spec.at,
    'low_confidence_threshold', spec.threshold)
  redis.call('XADD', KEYS[6], '*', 'specimen_id', spec.id)
  sstatus = 'open'
end
if sstatus == 'open' then
  for f, v in pairs(spec.incr) do redis.call('HINCRBYFLOAT', skey, f, v) end
  for f, v in pairs(spec.set) do redis.call('HSET', skey, f, v) end
  if tonumber(spec.at) < tonumber(redis.call('HGET', skey, 'first_frame_at')) then
    redis.call('HSET', skey, 'first_frame_at', spec.at)
  end
  if tonumber(spec.at) > tonumber(redis.call('HGET', skey, 'last_frame_at')) then
    redis.call('HSET', skey, 'last_frame_at', spec.at)
  end
  redis.call('HSET', skey, 'last_activity_at', spec.now)
  redis.call('ZADD', KEYS[7], spec.now, spec.id)
else
  redis.call('HINCRBY', skey, 'late_frames', 1)
  redis.call('SADD', KEYS[8], spec.frame_id)
end
"""

# KEYS: specimen hash, completed log, open zset, requested zset, outbox zset, control counter
# ARGV: specimen id, now, completed_by, '1' to queue for MLLP
_COMPLETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'complete' then return 'already' end
local control = 'LKS' .. redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'status', 'complete', 'completed_at', ARGV[2],
  'completed_by', ARGV[3], 'control_id', control)
redis.call('XADD', KEYS[2], '*', 'specimen_id', ARGV[1], 'control_id', control)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'outbox_state', 'pending', 'outbox_attempts', 0)
end
return 'completed'
"""


def valid_specimen_id(value: str) -> bool:
    return bool(SPECIMEN_ID.match(value)) and ".." not in value


def store_payload(result: FrameResult, low_confidence: float) -> str:
    """The ARGV JSON that folds ``result`` into its specimen ('' when it has none)."""
    if result.specimen_id == UNASSIGNED or not valid_specimen_id(result.specimen_id):
        return ""
    incr: dict[str, float] = {f"frames_{result.status}": 1}
    if result.status == "rejected":
        incr[f"reject:{result.reason or 'other'}"] = 1
    for cell in result.cells:
        confidence = max(cell.probabilities.values(), default=0.0)
        incr[f"cells:{cell.class_}"] = incr.get(f"cells:{cell.class_}", 0) + 1
        incr["cells_total"] = incr.get("cells_total", 0) + 1
        incr["confidence_sum"] = incr.get("confidence_sum", 0.0) + confidence
        if confidence < low_confidence:
            incr["low_confidence"] = incr.get("low_confidence", 0) + 1
    models = {
        f"model:{kind}:{ref.sha256}": json.dumps({"kind": kind, **ref.model_dump()})
        for kind, ref in result.models.items()
    }
    return json.dumps(
        {
            "id": result.specimen_id,
            "at": repr(float(result.captured_at)),
            "now": repr(time.time()),
            "threshold": repr(float(low_confidence)),
            "frame_id": result.frame_id,
            "incr": incr,
            "set": models,
        }
    )


def store_keys(specimen_id: str) -> list[str]:
    return [SPECIMEN_KEY.format(specimen_id), OPENED_LOG, OPEN_SET, LATE_KEY.format(specimen_id)]


# --- the report -----------------------------------------------------------------------
class SpecimenModel(ModelRef):
    kind: str


class Specimen(BaseModel):
    specimen_id: str
    status: Literal["open", "complete"]
    result_status: Literal["preliminary", "final"] = Field(
        description="preliminary while open, final once complete"
    )
    opened_at: float
    completed_at: float | None = None
    completed_by: str | None = Field(default=None, description="api, marker or idle")
    completion_requested_at: float | None = None
    control_id: str | None = Field(default=None, description="HL7 message control id")
    first_frame_at: float
    last_frame_at: float
    last_activity_at: float | None = None
    frames_done: int = 0
    frames_rejected: int = 0
    frames_failed: int = 0
    late_frames: int = Field(default=0, description="results stored after completion")
    late_frame_ids: list[str] = []
    cells_classified: int = 0
    cells: dict[str, int] = {}
    percent: dict[str, float] = {}
    blast_share_percent: float | None = Field(
        default=None, description="early_pre_b + pre_b + pro_b over all classified cells, %"
    )
    mean_confidence: float | None = None
    low_confidence_cells: int = 0
    low_confidence_threshold: float | None = None
    rejections: dict[str, int] = {}
    models: list[SpecimenModel] = []
    delivery: dict[str, str | int | float | None] | None = Field(
        default=None, description="MLLP delivery state, when MLLP push is configured"
    )
    statement: str = ""


class SpecimenEvent(BaseModel):
    cursor: str
    specimen: Specimen


class SpecimenPage(BaseModel):
    items: list[Specimen]
    next: str = Field(description="cursor for the next call's `after`")


def _f(raw: dict[str, str], name: str, default: float = 0.0) -> float:
    value = raw.get(name)
    return float(value) if value not in (None, "") else default


def build(raw: dict[str, str], late: list[str], statement: str) -> Specimen:
    total = int(_f(raw, "cells_total"))
    cells = {c: int(_f(raw, f"cells:{c}")) for c in CLASS_CODES}
    for field, value in raw.items():
        if field.startswith("cells:") and field[6:] not in cells:
            cells[field[6:]] = int(float(value))
    percent = {c: round(100.0 * n / total, 2) for c, n in cells.items()} if total else {}
    blasts = sum(cells.get(c, 0) for c in BLAST_CLASSES)
    delivery = None
    if "outbox_state" in raw:
        delivery = {
            "state": raw["outbox_state"],
            "attempts": int(_f(raw, "outbox_attempts")),
            "last_error": raw.get("outbox_last_error"),
            "delivered_at": _f(raw, "delivered_at") or None,
            "next_attempt_at": _f(raw, "outbox_next_at") or None,
        }
    return Specimen(
        specimen_id=raw["specimen_id"],
        status=raw["status"],
        result_status="final" if raw["status"] == "complete" else "preliminary",
        opened_at=_f(raw, "opened_at"),
        completed_at=_f(raw, "completed_at") or None,
        completed_by=raw.get("completed_by"),
        completion_requested_at=_f(raw, "completion_requested_at") or None,
        control_id=raw.get("control_id"),
        first_frame_at=_f(raw, "first_frame_at"),
        last_frame_at=_f(raw, "last_frame_at"),
        last_activity_at=_f(raw, "last_activity_at") or None,
        frames_done=int(_f(raw, "frames_done")),
        frames_rejected=int(_f(raw, "frames_rejected")),
        frames_failed=int(_f(raw, "frames_failed")),
        late_frames=int(_f(raw, "late_frames")),
        late_frame_ids=sorted(late),
        cells_classified=total,
        cells=cells,
        percent=percent,
        blast_share_percent=round(100.0 * blasts / total, 2) if total else None,
        mean_confidence=round(_f(raw, "confidence_sum") / total, 4) if total else None,
        low_confidence_cells=int(_f(raw, "low_confidence")),
        low_confidence_threshold=_f(raw, "low_confidence_threshold") or None,
        rejections={
            field[7:]: int(float(value))
            for field, value in sorted(raw.items())
            if field.startswith("reject:")
        },
        models=sorted(
            (
                SpecimenModel.model_validate_json(value)
                for field, value in raw.items()
                if field.startswith("model:")
            ),
            key=lambda m: (m.kind, m.version, m.sha256),
        ),
        delivery=delivery,
        statement=statement,
    )


class BadCursor(ValueError):
    pass


CURSOR = re.compile(r"^\d{1,20}-\d{1,20}$")


class SpecimenStore:
    """Reads specimens and drives their lifecycle (completion, idle, requests)."""

    def __init__(
        self, client: redis.Redis, statement: str = "", mllp_enabled: bool = False
    ) -> None:
        self.client = client
        self.statement = statement
        self.mllp_enabled = mllp_enabled
        self._complete = client.register_script(_COMPLETE)

    # --- reads ------------------------------------------------------------------------
    def get(self, specimen_id: str) -> Specimen | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(SPECIMEN_KEY.format(specimen_id))
        pipe.smembers(LATE_KEY.format(specimen_id))
        raw, late = pipe.execute()
        if not raw:
            return None
        decoded = {k.decode(): v.decode() for k, v in raw.items()}
        return build(decoded, [m.decode() for m in late], self.statement)

    def page(self, status: str | None, after: str | None, limit: int) -> tuple[list[Specimen], str]:
        """Specimens after cursor ``after``.

        ``status=complete`` pages the completion log: each specimen once, in completion
        order. Otherwise the opened log is paged (each specimen once, in order of its first
        frame), filtered to open specimens for ``status=open``.
        """
        if after is not None and not CURSOR.match(after):
            raise BadCursor(f"malformed cursor {after!r}: expected the 'next' value of a page")
        stream = COMPLETED_LOG if status == "complete" else OPENED_LOG
        start = "-" if after is None else f"({after}"
        entries = self.client.xrange(stream, min=start, max="+", count=limit)
        if not entries:
            return [], after or "0-0"
        items = []
        for _entry_id, fields in entries:
            specimen = self.get(fields[b"specimen_id"].decode())
            if specimen is None:
                continue
            if status == "open" and specimen.status != "open":
                continue
            items.append(specimen)
        return items, entries[-1][0].decode()

    # --- lifecycle --------------------------------------------------------------------
    def complete(self, specimen_id: str, by: str, now: float | None = None) -> str:
        """Complete now: 'completed', 'already' or 'missing'."""
        keys = [
            SPECIMEN_KEY.format(specimen_id),
            COMPLETED_LOG,
            OPEN_SET,
            REQUESTED_SET,
            OUTBOX_KEY,
            CONTROL_COUNTER,
        ]
        args = [specimen_id, repr(now or time.time()), by, "1" if self.mllp_enabled else ""]
        outcome = self._complete(keys=keys, args=args).decode()
        if outcome == "completed":
            log.info("specimen complete", extra={"specimen_id": specimen_id, "by": by})
        return outcome

    def in_flight(self, specimen_id: str) -> int:
        """Frames of the specimen queued or being processed (not yet archived)."""
        from daemon.store.queue import INFLIGHT_KEY

        count = 0
        for _frame, raw in self.client.hscan_iter(INFLIGHT_KEY):
            info = json.loads(raw)
            if info.get("specimen") == specimen_id:
                count += 1
        return count

    def request_complete(self, specimen_id: str, by: str) -> tuple[str, int]:
        """Complete once no frame of the specimen is in flight; else defer (the ticker
        completes it when drained or after ``complete_grace_seconds``).

        Returns (outcome, frames in flight): 'completed', 'already', 'missing', 'deferred'.
        """
        key = SPECIMEN_KEY.format(specimen_id)
        status = self.client.hget(key, "status")
        if status is None:
            return "missing", 0
        if status == b"complete":
            return "already", 0
        pending = self.in_flight(specimen_id)
        if pending == 0:
            return self.complete(specimen_id, by), 0
        now = time.time()
        self.client.hsetnx(key, "completion_requested_at", repr(now))
        self.client.hsetnx(key, "completion_requested_by", by)
        self.client.zadd(REQUESTED_SET, {specimen_id: now}, nx=True)
        return "deferred", pending

    def tick(self, idle_seconds: float | None, grace_seconds: float) -> list[str]:
        """Complete drained/overdue requests and idle specimens; returns those completed."""
        now = time.time()
        done = []
        for member, requested in self.client.zrange(REQUESTED_SET, 0, 99, withscores=True):
            specimen_id = member.decode()
            if self.in_flight(specimen_id) == 0 or now - requested >= grace_seconds:
                by = self.client.hget(SPECIMEN_KEY.format(specimen_id), "completion_requested_by")
                outcome = self.complete(specimen_id, by.decode() if by else "api", now)
                if outcome == "completed":
                    done.append(specimen_id)
                else:
                    self.client.zrem(REQUESTED_SET, specimen_id)
        if idle_seconds is not None:
            for member in self.client.zrangebyscore(OPEN_SET, "-inf", now - idle_seconds, 0, 100):
                specimen_id = member.decode()
                if self.in_flight(specimen_id):
                    continue
                if self.complete(specimen_id, "idle", now) == "completed":
                    done.append(specimen_id)
        return done

    def last_completed_cursor(self) -> str:
        info = (
            self.client.xinfo_stream(COMPLETED_LOG) if self.client.exists(COMPLETED_LOG) else None
        )
        return info["last-generated-id"].decode() if info else "0-0"

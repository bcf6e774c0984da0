"""Specimens: the per-specimen aggregate of frame results, and its lifecycle.

A specimen is one Redis hash (``lks:specimen:<id>``) of counters. It is updated inside the
result-store script (``scripts/fold_specimen.lua`` is spliced into ``store_result.lua``), which
runs its body only when a frame's result is new, so a frame re-processed after a worker crash is never
counted twice. The specimen opens with its first stored result; it completes once, by a
request (API or marker file), or after an idle time. A result stored for a complete specimen
is a *late frame*: kept with the frame's result, counted and listed on the specimen, never
folded into the final figures.

Two append-only streams make cursor polling exact: ``lks:specimens:opened`` gets one entry
when a specimen opens, ``lks:specimens:completed`` one entry when it completes (in the same
script that completes it), so a LIS paging ``status=complete`` with the ``next`` cursor sees
every completed specimen once, across restarts of the daemon and of Redis (AOF).

``unassigned`` (frames straight in the inbox or misplaced) is not a specimen: such results are
logged apart (``UNASSIGNED_LOG``, ``ResultStore.unassigned_page``), listed at
``GET /specimens/unassigned`` and never reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import redis

from daemon.domain.classes import BLAST_CLASSES, CLASS_CODES, UNIDENTIFIED
from daemon.domain.ids import UNASSIGNED, valid_specimen_id
from daemon.domain.results import FrameResult
from daemon.domain.specimens import Specimen, SpecimenModel
from daemon.store import paging, scripts
from daemon.store.keys import (
    CELL_REVIEW_KEY,
    COMPLETED_LOG,
    CONTROL_COUNTER,
    INFLIGHT_KEY,
    LATE_KEY,
    NO_STREAM_KEY,
    OPEN_SET,
    OPENED_LOG,
    ORDER_KEY,
    OUTBOX_KEY,
    PARKED_KEY,
    REQUESTED_SET,
    SPECIMEN_FRAMES_KEY,
    SPECIMEN_KEY,
    SPECIMEN_ORDER_KEY,
)
from daemon.store.orders import OrderStore

log = logging.getLogger(__name__)

SCAN_BOUND = 5000  # log entries one filtered page reads at most

def store_payload(result: FrameResult, low_confidence: float) -> str:
    """The ARGV JSON of ``scripts/fold_specimen.lua`` for ``result`` ('' when it has none;
    'unassigned' for a frame with no specimen: store_result.lua logs it apart)."""
    if result.specimen_id == UNASSIGNED:
        return UNASSIGNED
    if not valid_specimen_id(result.specimen_id):
        return ""
    incr: dict[str, float] = {f"frames_{result.status}": 1}
    if result.status == "rejected":
        incr[f"reject:{result.reason or 'other'}"] = 1
    if result.needs_review:
        incr["frames_review"] = 1
    for cell in result.cells:
        incr[f"cells:{cell.class_}"] = incr.get(f"cells:{cell.class_}", 0) + 1
        if cell.needs_review:
            incr["cells_review"] = incr.get("cells_review", 0) + 1
        if cell.class_ == UNIDENTIFIED:
            continue  # counted and shown, never part of the differential
        confidence = (cell.confidence if cell.confidence is not None
                      else max(cell.probabilities.values(), default=0.0))
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
    """KEYS[5..9] of ``scripts/store_result.lua``: what folding a result into a specimen touches."""
    return [SPECIMEN_KEY.format(specimen_id), OPENED_LOG, OPEN_SET, LATE_KEY.format(specimen_id),
            SPECIMEN_FRAMES_KEY.format(specimen_id)]


# --- the report: the specimen hash read back ------------------------------------------
def _f(raw: dict[str, str], name: str, default: float = 0.0) -> float:
    value = raw.get(name)
    return float(value) if value not in (None, "") else default


def build(raw: dict[str, str], late: list[str], statement: str) -> Specimen:
    total = int(_f(raw, "cells_total"))
    cells = {c: int(_f(raw, f"cells:{c}")) for c in CLASS_CODES}
    for field, value in raw.items():
        if field.startswith("cells:") and field[6:] not in cells and field[6:] != UNIDENTIFIED:
            cells[field[6:]] = int(float(value))
    frames_review, cells_review = int(_f(raw, "frames_review")), int(_f(raw, "cells_review"))
    unidentified = int(_f(raw, f"cells:{UNIDENTIFIED}"))
    verified = bool(raw.get("verified_at"))
    model_cells = None
    if verified:  # a reviewer's counts replace the models' (store/review.py)
        model_cells = cells
        cells = {c: int(_f(raw, f"reviewed:cells:{c}")) for c in CLASS_CODES}
        total = int(_f(raw, "reviewed:cells_total"))
        unidentified = int(_f(raw, f"reviewed:cells:{UNIDENTIFIED}"))
        frames_review = cells_review = 0
    signatures = json.loads(raw.get("signatures") or "[]")
    needs_review = bool(frames_review or cells_review)
    percent = {c: round(100.0 * n / total, 2) for c, n in cells.items()} if total else {}
    blasts = sum(cells.get(c, 0) for c in BLAST_CLASSES)
    top = sorted(cells.items(), key=lambda kv: -kv[1])
    predominant = top[0][0] if total and (len(top) == 1 or top[0][1] > top[1][1]) else None
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
        result_status="final" if raw["status"] == "complete" and verified else "preliminary",
        review_status="verified" if verified else "signed" if signatures else "unverified",
        verified_by=raw.get("verified_by"),
        verified_at=_f(raw, "verified_at") or None,
        signatures=signatures,
        reclassified_cells=int(_f(raw, "reclassified")),
        model_cells=model_cells,
        needs_review=needs_review,
        frames_needing_review=frames_review,
        cells_needing_review=cells_review,
        unidentified_cells=unidentified,
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
        predominant_class=predominant,
        predominant_share_percent=round(100.0 * cells[predominant] / total, 2)
        if predominant else None,
        identified_share_percent=round(100.0 * total / (total + unidentified), 2)
        if total + unidentified else None,
        # over the cells the models classified (confidence is the models'; a reviewer's
        # counts replace cells/total once verified, not the confidence sum)
        mean_confidence=(round(_f(raw, "confidence_sum") / _f(raw, "cells_total"), 4)
                         if _f(raw, "cells_total") else None),
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


class SpecimenStore:
    """Reads specimens and drives their lifecycle (completion, idle, requests)."""

    def __init__(
        self, client: redis.Redis, statement: str = "", mllp_enabled: bool = False
    ) -> None:
        self.client = client
        self.statement = statement
        self.mllp_enabled = mllp_enabled
        self._complete = client.register_script(scripts.COMPLETE_SPECIMEN)

    # --- reads ------------------------------------------------------------------------
    def get(self, specimen_id: str) -> Specimen | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(SPECIMEN_KEY.format(specimen_id))
        pipe.smembers(LATE_KEY.format(specimen_id))
        raw, late = pipe.execute()
        if not raw:
            return None
        decoded = {k.decode(): v.decode() for k, v in raw.items()}
        specimen = build(decoded, [m.decode() for m in late], self.statement)
        order = OrderStore(self.client).for_specimen(specimen_id)
        if order is not None:
            specimen.order, specimen.ordered = order, True
        return specimen

    def page(self, status: str | None, after: str | None, limit: int,
             ordered: bool | None = None) -> tuple[list[Specimen], str]:
        """Specimens after cursor ``after``.

        ``status=complete`` pages the completion log: each specimen once, in completion
        order. Otherwise the opened log is paged (each specimen once, in order of its first
        frame), filtered to open specimens for ``status=open``.
        """
        stream = COMPLETED_LOG if status == "complete" else OPENED_LOG
        items: list[Specimen] = []
        cursor = after
        scanned = 0
        # Filters apply before the limit: read on until ``limit`` specimens match, the log
        # ends, or SCAN_BOUND entries were read (then the page is short and ``next`` resumes
        # after the last entry read, so nothing is skipped).
        while len(items) < limit and scanned < SCAN_BOUND:
            entries = paging.entries_after(self.client, stream, cursor, min(limit * 4, 500))
            if not entries:
                break
            for entry_id, fields in entries:
                scanned += 1
                cursor = entry_id.decode()
                specimen = self.get(fields[b"specimen_id"].decode())
                if specimen is not None and (status != "open" or specimen.status == "open") \
                        and (ordered is None or specimen.ordered == ordered):
                    items.append(specimen)
                    if len(items) == limit:
                        break
        return items, cursor or paging.START

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
        return paging.last_cursor(self.client, COMPLETED_LOG)


# --- retention: complete specimens leave Redis (specimens.retention_days) ---------------
@dataclasses.dataclass
class Forgotten:
    """What one :func:`forget_completed` pass did."""

    specimen_ids: list[str] = dataclasses.field(default_factory=list)  # forgotten, oldest completion first
    owed: int = 0  # past the cutoff but kept: their LIS message is in the outbox or parked


def forget_completed(client: redis.Redis, older_than: float, batch: int = 100) -> Forgotten:
    """Delete the specimens that completed before ``older_than`` (Unix s): the hash, its
    late frames, frame index, reviewed cells, and its order while the order still names it.

    The completion log is read oldest first up to the cutoff (its entry ids are completion
    times), each specimen forgotten atomically (``scripts/forget_specimen.lua``) with its log
    entry; one whose message to the LIS is still owed (in the outbox, or parked) stays,
    entry and all, until it is delivered. Its entry in the opened log goes too. Frames' results are trimmed on
    their own clock (``results.retention_days``).
    """
    script = client.register_script(scripts.FORGET_SPECIMEN)
    out = Forgotten()
    for entries in paging.batches_before(client, COMPLETED_LOG, older_than, batch):
        ids = [fields[b"specimen_id"].decode() for _, fields in entries]
        placers = client.mget([SPECIMEN_ORDER_KEY.format(s) for s in ids])
        calls = []
        for (entry_id, _), specimen_id, placer in zip(entries, ids, placers, strict=True):
            order_key = ORDER_KEY.format(placer.decode()) if placer else NO_STREAM_KEY
            keys = [SPECIMEN_KEY.format(specimen_id), LATE_KEY.format(specimen_id),
                    SPECIMEN_FRAMES_KEY.format(specimen_id), CELL_REVIEW_KEY.format(specimen_id),
                    SPECIMEN_ORDER_KEY.format(specimen_id), OUTBOX_KEY, PARKED_KEY,
                    COMPLETED_LOG, order_key]
            args = [specimen_id, entry_id.decode(), repr(float(older_than)),
                    placer.decode() if placer else ""]
            calls.append((script, keys, args))
        for specimen_id, outcome in zip(ids, scripts.run_many(client, calls), strict=True):
            if outcome == b"forgotten":
                out.specimen_ids.append(specimen_id)
            elif outcome == b"owed":
                out.owed += 1
    _drop_opened_entries(client, older_than, batch)  # every pass: one cut short left some
    return out


def _drop_opened_entries(client: redis.Redis, older_than: float, batch: int) -> None:
    """XDEL the opened-log entries before the cutoff whose specimen is gone (a forgotten
    specimen opened before it completed, so before the cutoff)."""
    for entries in paging.batches_before(client, OPENED_LOG, older_than, batch):
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.exists(SPECIMEN_KEY.format(fields[b"specimen_id"].decode()))
        gone = [entry_id for (entry_id, _), exists in zip(entries, pipe.execute(), strict=True)
                if not exists]
        if gone:
            client.xdel(OPENED_LOG, *gone)

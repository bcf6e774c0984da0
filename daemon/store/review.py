"""The review station's state (issue 13): a specimen's frames, reviewers' classes, sign-off.

- ``lks:specimen:<id>:frames``: every frame folded into the specimen (written by the result
  store script, ``fold_specimen.lua``), scored by capture time: the gallery's frames.
- ``lks:specimen:<id>:cells``: one entry per reviewed cell, ``<frame_id>:<index>`` -> JSON
  ``{class, model, by, at}`` (the model's class kept beside the reviewer's). Accepting a call
  records the same class; a verified specimen takes no more changes (``review_cell.lua``).
- Signing (``verify_specimen.lua``) appends a signature to the specimen hash; the last
  required one (``review.signatures``, 1 or 2 distinct keys) verifies it: the reviewed counts
  (``reviewed:cells:<class>``, ``reviewed:cells_total``) and ``verified_by``/``verified_at``
  are written in the same script, so the report turns final with the verified figures at once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import redis

from daemon.domain.classes import CELL_OUTCOMES, UNIDENTIFIED
from daemon.domain.results import FrameResult
from daemon.store import scripts
from daemon.store.keys import (
    CELL_REVIEW_KEY,
    CONTROL_COUNTER,
    LOG_KEY,
    OUTBOX_KEY,
    RESULT_KEY,
    SPECIMEN_FRAMES_KEY,
    SPECIMEN_KEY,
    UI_SECRET_KEY,
)
from daemon.store.results import decode_result


def cell_key(frame_id: str, index: int) -> str:
    return f"{frame_id}:{index}"


@dataclass(frozen=True)
class Reviewed:
    """A reviewer's class for one cell."""

    class_: str
    model: str
    by: str
    at: float


class ReviewError(Exception):
    """'missing' (no such specimen), 'verified' (no more changes), 'open', 'same_signer'."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ReviewStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._review = client.register_script(scripts.REVIEW_CELL)
        self._verify = client.register_script(scripts.VERIFY_SPECIMEN)

    # --- reads ------------------------------------------------------------------------
    def frame_ids(self, specimen_id: str, limit: int = 5000) -> list[str]:
        members = self.client.zrange(SPECIMEN_FRAMES_KEY.format(specimen_id), 0, limit - 1)
        return [m.decode() for m in members]

    def frames(self, specimen_id: str, limit: int = 5000) -> list[FrameResult]:
        """The specimen's stored results in capture order (trimmed ones are left out)."""
        ids = self.frame_ids(specimen_id, limit)
        if not ids:
            return []
        raws = self.client.mget([RESULT_KEY.format(f) for f in ids])
        return [decode_result(raw) for raw in raws if raw]

    def reviewed(self, specimen_id: str) -> dict[str, Reviewed]:
        raw = self.client.hgetall(CELL_REVIEW_KEY.format(specimen_id))
        out = {}
        for field, value in raw.items():
            data = json.loads(value)
            out[field.decode()] = Reviewed(data["class"], data["model"], data["by"], data["at"])
        return out

    # --- changes ----------------------------------------------------------------------
    def reclassify(self, specimen_id: str, frame_id: str, index: int, new_class: str,
                   model_class: str, by: str) -> str:
        """Record ``new_class`` for a cell; returns the class it had before this change
        (the reviewer's previous class, else the model's). Raises ReviewError."""
        if new_class not in CELL_OUTCOMES:
            raise ValueError(f"class must be one of {', '.join(CELL_OUTCOMES)}")
        entry = json.dumps({"class": new_class, "model": model_class, "by": by,
                            "at": time.time()})
        reply = self._review(
            keys=[SPECIMEN_KEY.format(specimen_id), CELL_REVIEW_KEY.format(specimen_id)],
            args=[cell_key(frame_id, index), entry],
        )
        if reply[0] != b"ok":
            raise ReviewError(reply[0].decode())
        return json.loads(reply[1])["class"] if reply[1] else model_class

    def reviewed_counts(self, specimen_id: str) -> tuple[dict[str, str], int]:
        """The specimen's counts with reviewers' classes applied (as hash fields) and how
        many cells a reviewer changed."""
        overrides = self.reviewed(specimen_id)
        counts: Counter[str] = Counter()
        changed = 0
        for result in self.frames(specimen_id):
            for index, cell in enumerate(result.cells):
                review = overrides.get(cell_key(result.frame_id, index))
                final = review.class_ if review else cell.class_
                changed += final != cell.class_
                counts[final] += 1
        fields = {f"reviewed:cells:{c}": str(counts.get(c, 0)) for c in CELL_OUTCOMES}
        fields["reviewed:cells_total"] = str(
            sum(n for c, n in counts.items() if c != UNIDENTIFIED))
        fields["reclassified"] = str(changed)
        return fields, changed

    def sign(self, specimen_id: str, by: str, role: str, required: int,
             queue_for_mllp: bool) -> str:
        """'verified' or 'signed' (more signatures needed). Raises ReviewError.

        The counts are made from the reviewed cells as of ``review_version``; a cell reviewed
        meanwhile makes the script answer 'stale' and the counts are made again."""
        key = SPECIMEN_KEY.format(specimen_id)
        for _attempt in range(20):
            version = (self.client.hget(key, "review_version") or b"0").decode()
            fields, _changed = self.reviewed_counts(specimen_id)
            outcome = self._verify(
                keys=[key, OUTBOX_KEY, CONTROL_COUNTER],
                args=[by, role, repr(time.time()), str(required), json.dumps(fields),
                      "1" if queue_for_mllp else "", version],
            ).decode()
            if outcome != "stale":
                break
        if outcome not in ("verified", "signed"):
            raise ReviewError(outcome)
        return outcome


def session_secret(client: redis.Redis, candidate: bytes) -> bytes:
    """The session-signing secret all API replicas share: the first one stored wins."""
    client.set(UI_SECRET_KEY, candidate, nx=True)
    stored = client.get(UI_SECRET_KEY)
    return stored or candidate


def latest_results(client: redis.Redis, count: int) -> list[tuple[float, FrameResult]]:
    """The newest ``count`` stored results, newest first, with their storage time (the live
    view)."""
    entries = client.xrevrange(LOG_KEY, count=count)
    if not entries:
        return []
    ids = [fields[b"frame_id"].decode() for _entry, fields in entries]
    raws = client.mget([RESULT_KEY.format(f) for f in ids])
    out = []
    for (entry_id, _fields), raw in zip(entries, raws, strict=True):
        if raw:
            stored_at = int(entry_id.split(b"-")[0]) / 1000.0
            out.append((stored_at, decode_result(raw)))
    return out

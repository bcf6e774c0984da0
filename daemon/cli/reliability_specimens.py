"""``leukoscope reliability --scenarios specimen-memory``: what a specimen costs Redis once
its frames' results are trimmed, and that ``specimens.retention_days`` gives it all back.

In a Redis of its own (nothing else moves its ``used_memory``): ``specimens`` specimens of
``frames`` analysed frames each (six classified cells a frame, both models' versions), each
with an order from the LIS and two cells reclassified by a reviewer, completed; then the
results trimmed as ``results.retention_days`` does, then the specimens and their orders
forgotten as ``specimens.retention_days`` does.
"""

from __future__ import annotations

import time
from pathlib import Path

from daemon.domain.classes import CLASS_CODES
from daemon.domain.ids import UNASSIGNED
from daemon.domain.orders import Order
from daemon.domain.results import CellResult, FrameResult, ModelRef
from daemon.store.connection import (
    memory_by_key,
    socket_client,
    start_embedded,
    stop_embedded,
    used_memory_bytes,
)
from daemon.store.orders import OrderStore, forget_unmatched
from daemon.store.results import ResultStore, trim_results
from daemon.store.review import ReviewStore
from daemon.store.specimens import SpecimenStore, forget_completed

MODELS = {"segmenter": ModelRef(name="unet-wbc", version="2.0.1", sha256="a" * 64),
          "classifier": ModelRef(name="mobilenetv2-all", version="2.1.0", sha256="b" * 64)}


def _frame(specimen_id: str, index: int, now: float) -> FrameResult:
    cells = []
    for c in range(6):
        top = CLASS_CODES[(index + c) % len(CLASS_CODES)]
        probabilities = {k: 0.9 if k == top else 0.1 / (len(CLASS_CODES) - 1) for k in CLASS_CODES}
        cells.append(CellResult(bbox=[40 * c, 30, 40 * c + 36, 66], area_px=1017,
                                class_=top, probabilities=probabilities, confidence=0.9))
    return FrameResult(frame_id=f"{specimen_id}-{index:04d}", specimen_id=specimen_id,
                       source=f"/srv/leukoscope/inbox/{specimen_id}/field-{index:04d}.jpg",
                       rig_id="rig-1", status="done", captured_at=now, completed_at=now,
                       models=MODELS, cells=cells)


def specimen_memory(root: Path, specimens: int = 100, frames: int = 100) -> dict:
    directory = root / "specimen-redis"
    sock, _ = start_embedded(directory)
    client = socket_client(sock)
    try:
        results, store = ResultStore(client), SpecimenStore(client)
        orders, review = OrderStore(client), ReviewStore(client)
        results.store(_frame(UNASSIGNED, 0, time.time()))  # the counters hash, the logs
        before = used_memory_bytes(client)
        for s in range(specimens):
            specimen_id = f"SPEC-{s:05d}"
            now = time.time()
            orders.save(Order(placer_order_number=f"PL-{s:05d}", filler_order_number=specimen_id,
                              specimen_id=specimen_id, source="hl7-oml", received_at=now))
            for i in range(frames):
                results.store(_frame(specimen_id, i, now))
            store.complete(specimen_id, "api")
            for cell in range(2):
                review.reclassify(specimen_id, f"{specimen_id}-0000", cell, "benign",
                                  CLASS_CODES[cell % len(CLASS_CODES)], "reviewer")
        stored = used_memory_bytes(client)
        stored_by_key = memory_by_key(client)
        cutoff = time.time() + 1
        trimmed = trim_results(client, cutoff)
        kept = used_memory_bytes(client)
        by_key = memory_by_key(client)
        forgotten = forget_completed(client, cutoff).specimen_ids
        orders_forgotten = forget_unmatched(client, cutoff)
        after = used_memory_bytes(client)
        left_by_key = memory_by_key(client)
    finally:
        client.close()
        stop_embedded(directory)

    def per_specimen(by_key: dict[str, int]) -> dict[str, int]:
        return {name: round(used / specimens) for name, used in sorted(by_key.items())}

    return {"specimens": specimens, "frames_per_specimen": frames,
            "redis_bytes_per_specimen_with_results": round((stored - before) / specimens),
            "bytes_per_specimen_by_key_with_results": per_specimen(stored_by_key),
            "results_trimmed": trimmed,
            "redis_bytes_per_specimen_kept": round((kept - before) / specimens),
            "bytes_per_specimen_by_key_kept": per_specimen(by_key),
            "specimens_forgotten": len(forgotten), "orders_forgotten": len(orders_forgotten),
            "redis_bytes_left": after - before,
            "bytes_by_key_left": dict(sorted(left_by_key.items()))}

"""Completion markers: an empty ``.complete`` file in ``<inbox>/<specimen_id>/``.

The rig drops the marker after its last frame. The specimen completes once the folder holds
no frame any more (every frame was stored and archived or quarantined, so none arrives
"late" just because it was still settling), or once the marker is older than
``specimens.complete_grace_seconds``. The marker is then removed. The watcher never takes it
(hidden names are ignored), so it is not quarantined.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from daemon.domain.ids import valid_specimen_id
from daemon.store.specimens import SpecimenStore

log = logging.getLogger(__name__)

MARKER = ".complete"


class MarkerScanner:
    def __init__(
        self, inbox: Path, store: SpecimenStore, grace_seconds: float, every_seconds: float
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.grace_seconds = grace_seconds
        self.every_seconds = every_seconds
        self._next = 0.0

    def maybe_scan(self) -> list[str]:
        if time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every_seconds
        return self.scan()

    def scan(self) -> list[str]:
        """Handle every marker whose folder is drained; returns the specimens completed."""
        completed = []
        try:
            folders = [e for e in os.scandir(self.inbox) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        for folder in folders:
            marker = Path(folder.path) / MARKER
            if not valid_specimen_id(folder.name):
                continue
            try:
                age = time.time() - marker.stat().st_mtime
            except OSError:
                continue
            try:
                waiting = [n for n in os.listdir(folder.path) if not n.startswith(".")]
            except OSError:
                continue
            overdue = age >= self.grace_seconds
            if waiting and not overdue:
                continue
            outcome, in_flight = self.store.request_complete(folder.name, "marker")
            extra = {"specimen_id": folder.name, "outcome": outcome, "in_flight": in_flight}
            if outcome == "missing" and not overdue:
                continue  # no result stored yet: wait for the first one (or the grace time)
            if outcome == "missing":
                log.warning("completion marker for a specimen without frames; removed", extra=extra)
            elif outcome == "completed":
                completed.append(folder.name)
                log.info("specimen completed by marker", extra=extra)
            try:
                marker.unlink()
            except OSError as exc:
                log.error("cannot remove completion marker", extra={**extra, "error": str(exc)})
        return completed

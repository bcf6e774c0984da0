"""Room on the data directory's filesystem for new frames (``queue.min_free_bytes``).

Everything the daemon writes lands under ``data_dir``: large frames in the frame store,
originals in the archive, Redis's append-only file, the audit files. A full disk makes
Redis refuse writes, and then no result can be stored at all. So intake stops first, while
there is still room: folder capture pauses (the microscope's files wait in the inbox, nothing
is lost), a live camera's frames are not queued, and ``POST /frames`` answers 507; frames
already queued are analysed and stored in the room kept back. Nothing is deleted to make
room: that is ``archive.max_bytes`` and ``audit.files_max_bytes``, a lab's own choice.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: statvfs is cheap, but capture asks before every file: an answer is reused this long.
CHECK_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Room:
    ok: bool  # at least the configured free bytes (or no floor, or the size unknown)
    free_bytes: int | None  # free on the filesystem of the data directory; None: unknown
    min_free_bytes: int | None

    def reason(self) -> str:
        return (f"the data disk is nearly full: {self.free_bytes} bytes free, "
                f"queue.min_free_bytes is {self.min_free_bytes}; intake resumes when there is "
                "room (move archive/ or audit/ files away, or bound them)")


def free_bytes(path: Path) -> int | None:
    """Bytes free to this process on the filesystem of ``path`` (of its nearest existing
    folder, before the daemon has made it); None when it cannot be read."""
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


class IntakeRoom:
    """Whether new frames may be taken in, by the data directory's free bytes."""

    def __init__(self, data_dir: Path, min_free_bytes: int | None) -> None:
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self._room = Room(True, None, min_free_bytes)
        self._checked_at = float("-inf")

    def check(self) -> Room:
        """The room now (at most ``CHECK_EVERY_SECONDS`` old), logged when it changes (a
        warning naming the setting, then an info line when there is room again). A
        filesystem that cannot be read does not stop intake: the writes will say why."""
        if self.min_free_bytes is None:
            return self._room
        now = time.monotonic()
        if now - self._checked_at >= CHECK_EVERY_SECONDS:
            free = free_bytes(self.data_dir)
            room = Room(free is None or free >= self.min_free_bytes, free, self.min_free_bytes)
            extra = {"free_bytes": free, "min_free_bytes": self.min_free_bytes}
            if self._room.ok and not room.ok:
                log.warning("intake stopped: " + room.reason(), extra=extra)
            elif room.ok and not self._room.ok:
                log.info("intake resumed: the data disk has room again", extra=extra)
            self._room, self._checked_at = room, now
        return self._room

"""Moving originals out of the inbox into the archive or quarantine, never overwriting."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from daemon.imaging.frames import printable_name
from daemon.settings import REASON_SUFFIX


def free_name(directory: Path, name: str, companion: str = "") -> Path:
    """``directory/name``, or ``stem-1.ext``, ``stem-2.ext``... when taken.

    With ``companion`` (e.g. ``.reason.txt``) the name is free only if ``name + companion``
    is free too, so a file and its note always pair up.
    """
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    candidate = name
    counter = 0
    while (directory / candidate).exists() or (
        companion and (directory / (candidate + companion)).exists()
    ):
        counter += 1
        candidate = f"{stem}-{counter}.{suffix}" if suffix else f"{stem}-{counter}"
    return directory / candidate


def move_file(
    source: Path, directory: Path, name: str, companion: str = "", before=None
) -> Path:
    """Move ``source`` into ``directory`` under a free name; returns where it went.

    ``before(target)``, if given, runs once the name is chosen and before the file appears
    there (quarantine writes the reason note first, so a file is never seen without it).

    Same filesystem: an atomic rename. Across filesystems: copy, fsync, then remove the
    source, so the original exists somewhere at every moment.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = free_name(directory, name, companion)
    if before is not None:
        before(target)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = directory / f".{target.name}.{os.getpid()}.part"
        shutil.copy2(source, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        source.unlink()
    return target


def write_reason(target: Path, reason: str, message: str, source: str, frame_id: str) -> Path:
    """Write ``<target>.reason.txt`` saying why ``target`` was quarantined."""
    source, message = printable_name(source), printable_name(message)
    note = target.with_name(target.name + REASON_SUFFIX)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    partial = note.with_name(f".{note.name}.part")
    partial.write_text(
        f"reason: {reason}\n"
        f"message: {message}\n"
        f"original: {source}\n"
        f"frame_id: {frame_id}\n"
        f"quarantined_at: {stamp}\n"
    )
    os.replace(partial, note)
    return note

"""Inbox layout: which files are frames, and which specimen a frame belongs to.

Frames live at ``<inbox>/<specimen_id>/<name>.<image suffix>``; a file straight in the inbox
belongs to specimen ``unassigned``. Anything else that is not ignored (hidden names,
``.part``/``.tmp`` files) is misplaced: capture quarantines it rather than ignore it forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.domain.ids import UNASSIGNED, valid_specimen_id
from daemon.imaging.frames import IMAGE_SUFFIXES

TEMP_SUFFIXES = (".part", ".tmp")

# Capture's own reason codes, beside daemon.imaging.frames.REJECT_REASONS.
BAD_LOCATION = "bad_location"


def is_ignored_name(name: str) -> bool:
    """Hidden names and files still being delivered (``.part``/``.tmp``) are never taken."""
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Placement:
    """Where a file sits in the inbox: its specimen and name, or why that is wrong."""

    path: Path
    specimen_id: str
    name: str
    problem: str | None = None  # a message when the file is misplaced


def place(inbox: Path, path: Path) -> Placement | None:
    """Classify ``path`` (a file under ``inbox``); None when it is to be ignored."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return None
    if not parts or any(is_ignored_name(part) for part in parts):
        return None
    name = parts[-1]
    if len(parts) == 1:
        return Placement(path, UNASSIGNED, name)
    folder = parts[0]
    if len(parts) > 2:
        where = "/".join(parts[:-1])
        return Placement(
            path, UNASSIGNED, name,
            f"file is nested too deep ({where}/); frames belong in <inbox>/<specimen_id>/",
        )
    if not valid_specimen_id(folder):
        return Placement(
            path, UNASSIGNED, name,
            f"folder name {folder!r} is not a valid specimen id "
            f"(letters, digits, '.', '_', '-'; at most 64; no '..')",
        )
    return Placement(path, folder, name)

"""Ids and names, and the one pattern each is checked against.

A specimen id, a rig id and an API key's name share one shape: 1-64 of letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit. A specimen id is also a folder name
(inbox, archive, quarantine), so it may not hold ``..``. Frame ids are made by
``daemon.imaging.frames.frame_id_for`` (hex digests); the API accepts their shape only.
"""

from __future__ import annotations

import re

# The patterns below are for pydantic and OpenAPI (Rust regex: ``$`` is the end of the text).
# Python's ``re`` lets ``$`` match before a final line feed, so every check in Python uses
# ``fullmatch`` on the pattern's body: "S1\n" is never an id (it would split HL7 segments).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_RULE = "1-64 of [A-Za-z0-9._-], starting with a letter or digit"
SPECIMEN_ID_PATTERN = NAME_PATTERN
RIG_ID_PATTERN = NAME_PATTERN
KEY_NAME_PATTERN = NAME_PATTERN
FRAME_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
UPLOAD_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a pushed frame's file name

UNASSIGNED = "unassigned"  # frames with no specimen folder; not a specimen

CURSOR_PATTERN = r"^\d{1,20}-\d{1,20}$"  # a Redis stream id as the API's paging cursor
MAX_STREAM_PART = 2**64 - 1  # each part of a stream id is an unsigned 64-bit integer


def _body(pattern: str) -> re.Pattern[str]:
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return re.compile(pattern[1:-1])


_NAME = _body(NAME_PATTERN)
_FRAME_ID = _body(FRAME_ID_PATTERN)
_UPLOAD_NAME = _body(UPLOAD_NAME_PATTERN)
_CURSOR = _body(CURSOR_PATTERN)


def valid_name(value: str) -> bool:
    """A rig id or an API key's name."""
    return bool(_NAME.fullmatch(value))


def valid_specimen_id(value: str) -> bool:
    return bool(_NAME.fullmatch(value)) and ".." not in value


def valid_frame_id(value: str) -> bool:
    return bool(_FRAME_ID.fullmatch(value))


def valid_upload_name(value: str) -> bool:
    return bool(_UPLOAD_NAME.fullmatch(value)) and ".." not in value


def valid_cursor(value: str) -> bool:
    """A stream id ``<ms>-<seq>`` whose parts Redis accepts (each below 2**64)."""
    if not _CURSOR.fullmatch(value):
        return False
    ms, seq = (int(part) for part in value.split("-"))
    # nothing comes after the largest id, and Redis refuses an exclusive range from it
    return ms <= MAX_STREAM_PART and seq <= MAX_STREAM_PART and (ms, seq) != (
        MAX_STREAM_PART, MAX_STREAM_PART)

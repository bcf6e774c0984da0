"""Ids and names, and the one pattern each is checked against.

A specimen id, a rig id and an API key's name share one shape: 1-64 of letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit. A specimen id is also a folder name
(inbox, archive, quarantine), so it may not hold ``..``. Frame ids are made by
``daemon.imaging.frames.frame_id_for`` (hex digests); the API accepts their shape only.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_RULE = "1-64 of [A-Za-z0-9._-], starting with a letter or digit"
SPECIMEN_ID_PATTERN = NAME_PATTERN
RIG_ID_PATTERN = NAME_PATTERN
KEY_NAME_PATTERN = NAME_PATTERN
FRAME_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
UPLOAD_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a pushed frame's file name

UNASSIGNED = "unassigned"  # frames with no specimen folder; not a specimen

_NAME = re.compile(NAME_PATTERN)
_FRAME_ID = re.compile(FRAME_ID_PATTERN)
_UPLOAD_NAME = re.compile(UPLOAD_NAME_PATTERN)


def valid_name(value: str) -> bool:
    """A rig id or an API key's name."""
    return bool(_NAME.match(value))


def valid_specimen_id(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


def valid_frame_id(value: str) -> bool:
    return bool(_FRAME_ID.match(value))


def valid_upload_name(value: str) -> bool:
    return bool(_UPLOAD_NAME.match(value)) and ".." not in value

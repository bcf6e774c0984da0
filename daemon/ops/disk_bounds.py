"""Disk bounds of ``data_dir`` (issue 16): the archive of originals, the quarantine and the
audit files.

Each grows with every frame or request and nothing else removes them, so each may be
bounded by age and by bytes (``archive.retention_days``/``archive.max_bytes``,
``quarantine.retention_days``/``quarantine.max_bytes``,
``audit.files_retention_days``/``audit.files_max_bytes``; null: no bound). The oldest go
first; each deletion is logged and counted (``leukoscope_archive_originals_deleted_total``,
``leukoscope_quarantine_files_deleted_total``, ``leukoscope_audit_files_deleted_total``, by
reason ``age`` or ``size``).

An original is deleted only once its result is stored: capture moves a file into the
archive after its result is stored, but ``POST /frames`` keeps its copy there when the
frame is queued, so every specimen with a frame still in flight (an ``lks:inflight``
record, capture's or a push's, which lives until the result is stored) keeps all its
originals this time round. A quarantined file already has its ``rejected`` result stored
(capture and the archiver store it first), so it goes with its ``<name>.reason.txt``, the
file first: a file is never seen without its note. The audit file of the current day is
never deleted: entries are still appended to it.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon import telemetry
from daemon.settings import REASON_SUFFIX

log = logging.getLogger(__name__)

AUDIT_FILE_PREFIX = "audit-"
AUDIT_FILE_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Pruned:
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    age_key: float  # seconds since the epoch: the older, the sooner it goes
    companions: tuple[Path, ...] = ()  # deleted with it, after it (size includes theirs)


def _select(files: list[_File], retention_days: float | None, max_bytes: int | None,
            now: float, keep: frozenset[Path] = frozenset()) -> list[tuple[_File, str]]:
    """The files to delete, oldest first, each with why: older than ``retention_days``
    (``age``), then the oldest of the rest while all together (kept ones included) hold
    more than ``max_bytes`` (``size``). Files in ``keep`` are never chosen."""
    cutoff = None if retention_days is None else now - retention_days * 86400
    doomed: list[tuple[_File, str]] = []
    total = 0
    candidates = []
    for f in sorted(files, key=lambda f: (f.age_key, str(f.path))):
        if f.path not in keep and cutoff is not None and f.age_key < cutoff:
            doomed.append((f, "age"))
            continue
        total += f.size
        if f.path not in keep:
            candidates.append(f)
    if max_bytes is not None:
        for f in candidates:
            if total <= max_bytes:
                break
            doomed.append((f, "size"))
            total -= f.size
    return doomed


def _delete(doomed: Iterable[tuple[_File, str]], metric: str, what: str) -> Pruned:
    files = size = 0
    for f, reason in doomed:
        try:
            f.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning(f"{what} could not be deleted", extra={"path": str(f.path),
                                                              "error": str(exc)})
            continue
        for companion in f.companions:
            try:
                companion.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning(f"{what}'s companion could not be deleted", extra={
                    "path": str(companion), "error": str(exc)})
        files += 1
        size += f.size
        telemetry.count(metric, {"reason": reason})
        log.info(f"{what} deleted", extra={"path": str(f.path), "bytes": f.size,
                                           "reason": reason})
    return Pruned(files, size)


def _audit_day(path: Path) -> float | None:
    """The end of the UTC day an audit file holds (``audit-YYYY-MM-DD.jsonl``): its age is
    its day's, not its mtime (a late trim appends old entries to it)."""
    stem = path.name.removeprefix(AUDIT_FILE_PREFIX).removesuffix(AUDIT_FILE_SUFFIX)
    try:
        day = datetime.datetime.strptime(stem, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return (day + datetime.timedelta(days=1)).timestamp()


def prune_audit_files(folder: Path, retention_days: float | None, max_bytes: int | None,
                      now: float | None = None) -> Pruned:
    """Delete whole audit files, oldest day first, past ``retention_days`` (the day ended
    that long ago) or while the files hold more than ``max_bytes``; today's file stays."""
    if retention_days is None and max_bytes is None:
        return Pruned()
    now = time.time() if now is None else now
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")
    files = []
    current = folder / f"{AUDIT_FILE_PREFIX}{today}{AUDIT_FILE_SUFFIX}"
    for path in folder.glob(f"{AUDIT_FILE_PREFIX}*{AUDIT_FILE_SUFFIX}"):
        ends = _audit_day(path)
        if ends is None:
            continue
        try:
            files.append(_File(path, path.stat().st_size, ends))
        except FileNotFoundError:
            continue
    # today's file counts towards the bytes but is never deleted
    return _delete(_select(files, retention_days, max_bytes, now, frozenset({current})),
                   "leukoscope_audit_files_deleted_total", "audit file")


def prune_archive(folder: Path, retention_days: float | None, max_bytes: int | None,
                  busy_specimens: set[str], now: float | None = None) -> Pruned:
    """Delete archived originals (``<folder>/<specimen>/<file>``), oldest (mtime) first,
    older than ``retention_days`` or while the archive holds more than ``max_bytes``.
    Specimens in ``busy_specimens`` (a frame in flight: its result not stored yet) keep
    every file, and count towards the bytes. Emptied specimen folders are removed."""
    if retention_days is None and max_bytes is None:
        return Pruned()
    now = time.time() if now is None else now
    files: list[_File] = []
    busy: set[Path] = set()
    for specimen, stats in _specimen_files(folder):
        for name, stat in stats.items():
            item = _File(specimen / name, stat.st_size, stat.st_mtime)
            files.append(item)
            if specimen.name in busy_specimens:
                busy.add(item.path)
    doomed = _select(files, retention_days, max_bytes, now, frozenset(busy))
    return _delete_emptying(doomed, "leukoscope_archive_originals_deleted_total",
                            "archived original")


def prune_quarantine(folder: Path, retention_days: float | None, max_bytes: int | None,
                     now: float | None = None) -> Pruned:
    """Delete quarantined files (``<folder>/<specimen>/<file>``), each with its
    ``<file>.reason.txt``, oldest first, quarantined longer ago than ``retention_days`` or
    while the quarantine holds more than ``max_bytes``. A file's age is its note's mtime
    (when it was quarantined; a moved file keeps the mtime the rig gave it); a note whose
    file is gone is a unit of its own. Emptied specimen folders are removed."""
    if retention_days is None and max_bytes is None:
        return Pruned()
    now = time.time() if now is None else now
    units: list[_File] = []
    for specimen, stats in _specimen_files(folder):
        for name, stat in stats.items():
            note = name + REASON_SUFFIX
            if name.endswith(REASON_SUFFIX) and name.removesuffix(REASON_SUFFIX) in stats:
                continue  # deleted with its file
            if note in stats:
                units.append(_File(specimen / name, stat.st_size + stats[note].st_size,
                                   stats[note].st_mtime, (specimen / note,)))
            else:
                units.append(_File(specimen / name, stat.st_size, stat.st_mtime))
    doomed = _select(units, retention_days, max_bytes, now)
    return _delete_emptying(doomed, "leukoscope_quarantine_files_deleted_total",
                            "quarantined file")


def _specimen_files(folder: Path) -> Iterator[tuple[Path, dict[str, os.stat_result]]]:
    """Each specimen folder of ``folder`` with the stats of its plain files, by name. Files
    being written (``.name.part``: write, then rename) are left out, so never deleted."""
    for specimen in _entries(folder):
        if not specimen.is_dir(follow_symlinks=False):
            continue
        stats: dict[str, os.stat_result] = {}
        for entry in _entries(Path(specimen.path)):
            try:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                stats[entry.name] = entry.stat(follow_symlinks=False)
            except OSError:
                continue
        yield Path(specimen.path), stats


def _delete_emptying(doomed: list[tuple[_File, str]], metric: str, what: str) -> Pruned:
    """:func:`_delete`, then remove the specimen folders it emptied."""
    pruned = _delete(doomed, metric, what)
    for parent in {f.path.parent for f, _ in doomed}:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            pass
    return pruned


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []

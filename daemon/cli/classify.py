"""``leukoscope classify``: the pipeline in-process on files, no Redis; JSON Lines out."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from daemon.domain.ids import UNASSIGNED, valid_specimen_id
from daemon.domain.results import FrameResult
from daemon.imaging.frames import IMAGE_SUFFIXES, FrameRejected, decode_rgb, frame_id_for
from daemon.inference.analyzer import Analyzer


def image_files(paths: list[Path]) -> Iterator[Path]:
    """Files given, and image files under folders given (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if (
                    file.is_file()
                    and file.suffix.lower() in IMAGE_SUFFIXES
                    and not file.name.startswith(".")
                ):
                    yield file
        else:
            yield path


def classify_files(
    analyzer: Analyzer, paths: list[Path], out: TextIO = sys.stdout, batch: int = 8,
    um_per_pixel: float | None = None,
) -> tuple[int, int]:
    """Print one FrameResult JSON line per file; returns (done, not_done).

    The files are treated as one rig: without ``um_per_pixel`` their scale is estimated from
    their red cells, with a running estimate over the files (as a worker does per rig).
    """
    done = failed = 0
    pending: list[tuple] = []

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        analyses = analyzer.analyze([item[3] for item in pending])
        for (path, frame_id, captured, _, scale, acquisition), analysis in zip(
                pending, analyses, strict=True):
            result = FrameResult(
                frame_id=frame_id,
                specimen_id=_specimen(path),
                source=str(path),
                status="done",
                captured_at=captured,
                completed_at=time.time(),
                models=analyzer.model_refs(),
                timings_ms={k: round(v, 3) for k, v in analysis.timings_ms.items()},
                um_per_pixel=um_per_pixel,
                **analyzer.describe(analysis, scale, acquisition),
            )
            result.cells = analyzer.rescaler.to_frame(result.cells, scale.factor)
            out.write(result.to_json() + "\n")
            done += 1
        pending.clear()

    for path in image_files(paths):
        captured = time.time()
        try:
            data = path.read_bytes()
            image = decode_rgb(data)
        except (OSError, FrameRejected) as exc:
            reason = exc.reason if isinstance(exc, FrameRejected) else "unreadable"
            message = exc.message if isinstance(exc, FrameRejected) else str(exc)
            out.write(
                FrameResult(
                    frame_id=frame_id_for(_specimen(path), path.name, b""),
                    specimen_id=_specimen(path),
                    source=str(path),
                    status="rejected",
                    reason=reason,
                    error=message,
                    captured_at=captured,
                    completed_at=time.time(),
                ).to_json()
                + "\n"
            )
            failed += 1
            continue
        scale = analyzer.rescaler.resolve(image, um_per_pixel, "configured", "classify")
        prepared, acquisition = analyzer.prepare(image, scale)
        pending.append((path, frame_id_for(_specimen(path), path.name, data), captured, prepared,
                        scale, acquisition))
        if len(pending) >= batch:
            flush()
    flush()
    return done, failed


def _specimen(path: Path) -> str:
    parent = path.resolve().parent.name
    return parent if valid_specimen_id(parent) else UNASSIGNED

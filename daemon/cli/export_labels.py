"""``leukoscope export-labels``: reviewers' verified cells as training data (issue 13).

For every verified specimen, each cell's crop (cut from the archived original with the
classifier's crop recipe, at the frame's own scale) is written under the class the reviewer
gave it, in the folder layout ``leukoscope train`` reads (``--data DIR``):
``DIR/original/<Benign|Early|Pre|Pro>/<specimen>_<frame>_<cell>_<n>.png``; cells the reviewer
called unidentified go to ``DIR/negatives/unidentified/`` (``--negatives``). ``labels.csv``
lists every file with its reviewed and model class. Cells whose original is no longer
available are counted and skipped.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import redis

from daemon.domain.classes import UNIDENTIFIED
from daemon.settings import Settings

log = logging.getLogger(__name__)

FOLDERS = {"benign": "Benign", "early_pre_b": "Early", "pre_b": "Pre", "pro_b": "Pro"}


def _completed(store) -> Iterator[str]:
    """Every completed specimen's id, following the completion log's cursor (one page reads
    at most ``SCAN_BOUND`` entries, so a single large page would stop short)."""
    cursor = None
    while True:
        items, after = store.page("complete", cursor, 1000)
        yield from (s.specimen_id for s in items)
        if after == cursor:
            return
        cursor = after


def export_labels(settings: Settings, client: redis.Redis, out: Path,
                  specimens: list[str] | None = None) -> int:
    """Write the crops; returns how many were written."""
    from daemon.api.images import FrameImages, NoImage, png
    from daemon.store.review import ReviewStore, cell_key
    from daemon.store.specimens import SpecimenStore

    store = SpecimenStore(client)
    reviews = ReviewStore(client)
    images = FrameImages(settings)
    ids = specimens or list(_completed(store))
    out.mkdir(parents=True, exist_ok=True)
    written = missing = 0
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        rows = csv.writer(handle)
        rows.writerow(["file", "class", "model_class", "specimen_id", "frame_id", "index",
                       "verified_by"])
        for specimen_id in ids:
            specimen = store.get(specimen_id)
            if specimen is None or specimen.review_status != "verified":
                continue
            overrides = reviews.reviewed(specimen_id)
            for result in reviews.frames(specimen_id):
                for index, cell in enumerate(result.cells):
                    review = overrides.get(cell_key(result.frame_id, index))
                    code = review.class_ if review else cell.class_
                    folder = (Path("negatives") / UNIDENTIFIED if code == UNIDENTIFIED
                              else Path("original") / FOLDERS.get(code, code))
                    try:
                        data = png(images.crop(result, index))
                    except NoImage:
                        missing += 1
                        continue
                    name = f"{specimen_id}_{result.frame_id[:16]}_{index}_{written:06d}.png"
                    (out / folder).mkdir(parents=True, exist_ok=True)
                    (out / folder / name).write_bytes(data)
                    rows.writerow([str(folder / name), code, cell.class_, specimen_id,
                                   result.frame_id, index, specimen.verified_by])
                    written += 1
    log.info("labels exported", extra={"written": written, "missing_originals": missing,
                                       "out": str(out)})
    return written

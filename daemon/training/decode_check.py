"""Does decoding JPEGs reduced in the DCT change any answer? (``leukoscope evaluate-decode``)

The worker decodes a JPEG at 1/2, 1/4 or 1/8 of its size when it knows the frame will be
shrunk at least that much (``workers.reduced_decode``, ``imaging.frames.decode_reduced``).
This check runs the daemon's own path twice over the same block-split test fields, enlarged
as a camera behind a stronger objective would give them and saved as JPEG: once decoded in
full, once reduced; with the scale given, and with the scale estimated by one rig's running
red-cell estimate. It reports, per way, field accuracy, agreement of the field classes, the
quality-control verdicts, the reductions used and the decode time (torch-free).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from daemon.imaging.frames import decode_reduced
from daemon.imaging.quality import assess
from daemon.imaging.scale import Rescaler
from daemon.imaging.synthetic import encode
from daemon.inference.analyzer import Analyzer
from daemon.settings import Settings
from daemon.training import shifts
from daemon.training.data import block_split, list_fields, read_rgb


def _analyse(analyzer: Analyzer, settings: Settings, rescaler: Rescaler, data: bytes,
             um_per_pixel: float | None, reduced: bool) -> tuple[str | None, bool, int, float]:
    """One frame through decode -> scale -> QC -> models: (frame class, QC passed, reduction,
    decode ms)."""
    started = time.perf_counter()
    factor = rescaler.planned_factor(um_per_pixel, "rig") if reduced else None
    decoded = decode_reduced(data, factor)
    decode_ms = (time.perf_counter() - started) * 1000
    image, scale = rescaler.to_models(decoded, um_per_pixel, "configured", "rig")
    if image is None:  # the estimate moved past the reduction: decode in full, as the worker
        decoded = decode_reduced(data, None)
        image = rescaler.apply(decoded.image, scale.factor)
    quality = assess(image, settings.capture.qc)
    prepared, acquisition = analyzer.balance(image)
    described = analyzer.describe(analyzer.analyze([prepared])[0], scale, acquisition)
    return described["frame_class"], quality.ok, decoded.reduction, decode_ms


def check_reduced_decode(settings: Settings, data_dir: str, fields: int = 200,
                         enlargement: float = 3.0, quality: int = 90) -> dict:
    """Full vs reduced decode on ``fields`` test fields (evenly spread over the block-split
    test part), each enlarged ``enlargement`` times and JPEG-encoded at ``quality``."""
    analyzer = Analyzer.from_settings(settings)
    if analyzer.rescaler.model_um is None:
        raise ValueError("the models' manifests state no scale: nothing to reduce against")
    test = block_split(list_fields(Path(data_dir)))["test"]
    chosen = [test[i] for i in np.linspace(0, len(test) - 1, min(fields, len(test)))
              .round().astype(int)]
    magnify = shifts.magnify(enlargement)
    encoded = [encode(magnify(read_rgb(r.image)), quality=quality) for r in chosen]
    truth = [analyzer.classes[r.label] for r in chosen]
    report: dict = {"fields": len(chosen), "enlargement": enlargement, "jpeg_quality": quality}
    for mode, um in (("scale_given", analyzer.rescaler.model_um / enlargement),
                     ("scale_estimated", None)):
        calls: dict[str, list] = {}
        for way in ("full", "reduced"):
            rescaler = Rescaler(analyzer.rescaler.model_scale)  # one rig, from its first frame
            rows = [_analyse(analyzer, settings, rescaler, data, um, way == "reduced")
                    for data in encoded]
            calls[way] = [r[0] for r in rows]
            report[f"{mode}_{way}"] = {
                "accuracy": float(np.mean([c == t for c, t in zip(calls[way], truth,
                                                                   strict=True)])),
                "qc_failed": sum(not r[1] for r in rows),
                "reductions": {str(k): int(v) for k, v in
                               zip(*np.unique([r[2] for r in rows], return_counts=True),
                                   strict=True)},
                "decode_ms_mean": float(np.mean([r[3] for r in rows])),
            }
        report[f"{mode}_agreement"] = float(np.mean(
            [a == b for a, b in zip(calls["full"], calls["reduced"], strict=True)]))
    return report

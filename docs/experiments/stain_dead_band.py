"""The stain dead band (decision-2026-11-27d.txt): how far a rig's running median stain hue wanders
from the models' reference on the models' own TRAIN blocks, in file order as one rig's stream, background
balanced as the daemon does (no train field is over-exposed, so keeping such frames out changes nothing here). Prints the 99th percentile of |offset| from the
MIN_FRAMES-th frame on, rounded up to 0.5 degrees. ``--order slides``: the train blocks' slides in a seeded
random order (``data.slide_order``, as ``rig-suite`` streams), not file order (sorted by class). Run from the
repository root:
    .venv/bin/python docs/experiments/stain_dead_band.py [--order file|slides]"""
import json
import math
import sys
from pathlib import Path

import numpy as np

from daemon.domain.manifest import load_manifest
from daemon.imaging import stain
from daemon.imaging.acquisition import normalise_background
from daemon.imaging.ruler import MAX_CLIPPED_SHARE, clipped_share
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import (
    block_split,
    list_fields,
    read_rgb,
    reference_background,
    slide_order,
)
from daemon.training.evaluate import stain_reference

order = sys.argv[sys.argv.index("--order") + 1] if "--order" in sys.argv else "file"
records = block_split(list_fields(Path("../shared/data/all-taleqani")))["train"]
if order == "slides":
    records = [records[i] for i in slide_order(records)]
fields = [read_rgb(r.image) for r in records]
acquisition = load_manifest(Path("models/segmenter.json")).acquisition
# The reference exactly as rig-suite and evaluate take it: over the train fields brought to
# the training background (load_splits), without reading their masks.
white = tuple(reference_background(fields))
reference = stain_reference(np.stack([normalise_background(im, white) for im in fields]), acquisition)
analyzer = Analyzer(Segmenter(Path("models/segmenter.onnx"), "cpu", 1),
                    Classifier(Path("models/classifier.onnx"), "cpu", 1))
# The candidate's memory; the offset is reported whether or not it is past the dead band.
HISTORY, MIN_FRAMES = 256, 64
analyzer.stain = stain.StainCalibrator(reference, history=HISTORY, min_frames=MIN_FRAMES)
offsets, clipped = [], 0
for image in fields:
    clipped += clipped_share(image) >= MAX_CLIPPED_SHARE
    _, info = analyzer.balance(image, "train")
    if info is not None and info.rig_stain_offset_deg is not None:
        offsets.append(abs(info.rig_stain_offset_deg))
p99 = float(np.percentile(offsets, 99))
print(json.dumps({"order": order, "train_fields": len(fields), "overexposed": int(clipped), "reference_deg": reference,
                  "history": HISTORY, "min_frames": MIN_FRAMES, "offsets": len(offsets),
                  "abs_offset_p50_p90_p99_max": [round(float(np.percentile(offsets, q)), 2) for q in (50, 90, 99, 100)],
                  "dead_band_deg": math.ceil(p99 * 2) / 2}))

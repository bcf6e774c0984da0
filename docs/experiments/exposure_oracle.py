"""What clipping costs once the exposure itself is undone: an upper bound for a per-rig
exposure correction. Validation fields at the configured right scale (no ruler), each
analysed (a) as captured, (b) 25 % over-exposed (clipped) as the daemon does now, (c) the same
over-exposed field with the exposure the background gain could not see undone after the gain
(per channel: the unshifted field's own gain / (1.25 x the clipped field's gain)), (d) the same
with pixels clipped white in every channel kept at the reference white (glass stays glass):
what is left in (d) is what clipping erased. Run from the repository root:
    .venv/bin/python docs/experiments/exposure_oracle.py [val|test] [variant ...]"""
import json
import sys
from pathlib import Path

import numpy as np

from daemon.domain.classes import CLASS_CODES
from daemon.imaging.acquisition import apply_gain, background_gain
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import block_split, list_fields, read_rgb
from daemon.training.shifts import exposure

split = sys.argv[1] if len(sys.argv) > 1 else "val"
records = block_split(list_fields(Path("../shared/data/all-taleqani")))[split]
analyzer = Analyzer(Segmenter(Path("models/segmenter.onnx"), "cpu", 1),
                    Classifier(Path("models/classifier.onnx"), "cpu", 1))
assert analyzer.acquisition is not None
reference = analyzer.acquisition.background_rgb
truth = [CLASS_CODES[r.label] for r in records]
fields = [read_rgb(r.image) for r in records]
over = exposure(1.25)


def variant(name: str, image: np.ndarray) -> np.ndarray:
    if name == "none":
        return analyzer.balance(image)[0]
    shifted = over(image)
    balanced = analyzer.balance(shifted)[0]
    if name == "x1.25":
        return balanced
    undone = apply_gain(balanced, background_gain(image, reference)
                        / (1.25 * background_gain(shifted, reference)))
    if name == "x1.25_undone":
        return undone
    clipped = (shifted == 255).all(axis=2)  # white glass stays the reference white
    undone[clipped] = balanced[clipped]
    return undone


rows = {}
for name in sys.argv[2:] or ("none", "x1.25", "x1.25_undone", "x1.25_undone_glass_kept"):
    calls = []
    for start in range(0, len(fields), 16):
        prepared = [variant(name, image) for image in fields[start:start + 16]]
        for analysis in analyzer.analyze(prepared):
            calls.append(analyzer.describe(analysis, None, None)["frame_class"])
    right = sum(c == t for c, t in zip(calls, truth, strict=True))
    rows[name] = round(right / len(truth), 4)
    print(f"{name}: {right}/{len(truth)}", flush=True)
print(json.dumps({"split": split, "n": len(truth), "accuracy": rows}))

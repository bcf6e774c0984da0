"""How many field pixels the classifier's crops are cut from: the side of the square window
the daemon cuts around each white cell (``daemon.imaging.pipeline.crop_side``: the cell's box
plus the manifest's margin, at least ``min_side_px``) before it is resized to the classifier's
input. 200 fields drawn at random (seed 0) from the ALL set, at the models' scale (as stored),
the shipped segmenter and cell filter. A window smaller than the input is enlarged: a larger
input then adds no pixel of the cell, only a larger picture of the same ones. Run from the
repository root:
    .venv/bin/python docs/experiments/crop_sides.py [DATA]"""
import sys
from pathlib import Path

import cv2
import numpy as np

from daemon.domain.manifest import load_manifest
from daemon.imaging.pipeline import crop_side, find_cells
from daemon.inference.sessions import Segmenter

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/all-taleqani")
segmenter = Segmenter(Path("models/segmenter.onnx"), "cpu", 2)
crop = load_manifest(Path("models/classifier.json")).crop
files = sorted((data / "original").glob("*/*.jpg"))
picked = [files[i] for i in np.random.default_rng(0).choice(len(files), 200, replace=False)]
sides = []
for path in picked:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    mask = segmenter.compute([image])[0]
    sides += [crop_side(box, crop) for box in find_cells(mask, segmenter.manifest.cells)]
sides_px = np.asarray(sides)
print(f"{len(picked)} fields, {len(sides_px)} crops; window side px p10/p50/p90:",
      np.percentile(sides_px, [10, 50, 90]).round(1).tolist())
for size in (64, 96, 128):
    print(f"windows of at most {size} px (enlarged, or kept, at a {size}-px input): "
          f"{(sides_px <= size).mean():.1%}")

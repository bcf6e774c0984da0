"""The shipped models' wrong fields on one split, each with its cells' calls: where the errors
sit (fields as stored, at the models' scale; the cells, crops, temperature and aggregation of
``leukoscope evaluate``). Describes the shipped models; chooses nothing. Run from the
repository root:
    .venv/bin/python docs/experiments/field_errors.py val|test [MODELS]"""
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.manifest import load_manifest
from daemon.imaging.pipeline import calibrate
from daemon.training.data import load_splits
from daemon.training.evaluate import (
    _session,
    classify,
    fields_from_cells,
    pipeline_cells,
    segment,
)

split = sys.argv[1]
models = Path(sys.argv[2] if len(sys.argv) > 2 else "models")
seg_path, cls_path = models / "segmenter.onnx", models / "classifier.onnx"
seg_manifest, cls_manifest = load_manifest(seg_path), load_manifest(cls_path)
fields = load_splits("../shared/data/all-taleqani", 40, 0, 0, Path("runs/cache"))[split]
probs = segment(_session(seg_path, 2), seg_manifest, fields["images"])
crops, owners = pipeline_cells(fields["images"], probs, seg_manifest.cells, cls_manifest.crop,
                               cls_manifest.input.size[0])
cells = calibrate(classify(_session(cls_path, 2), cls_manifest, crops), cls_manifest.temperature)
labels = fields["labels"]
field_probs = fields_from_cells(cells, owners, len(labels), cls_manifest.aggregation or "mean")
called = np.nan_to_num(field_probs, nan=-1).argmax(axis=1)
wrong = np.flatnonzero(called != labels)
print(f"{split}: {len(labels) - len(wrong)} of {len(labels)} fields right")
blocks = Counter()
for index in wrong:
    name = fields["names"][index]
    blocks[(name.split("/")[0], int(name.rsplit("-", 1)[1].split(".")[0]) // 40)] += 1
    calls = Counter(CELL_OUTCOMES[k] for k in cells[owners == index].argmax(axis=1))
    print(f"  {name}: {CELL_OUTCOMES[labels[index]]} called {CELL_OUTCOMES[called[index]]}; "
          f"cells {dict(calls)}")
print("wrong fields per block (class folder, file number // 40):",
      {f"{folder} {block * 40}-{block * 40 + 39}": n for (folder, block), n in blocks.items()})

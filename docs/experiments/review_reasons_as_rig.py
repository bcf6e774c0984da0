"""Review reasons of the unshifted test (or validation) fields, as one rig and each alone (model card, "Stain
calibration per rig" and "The scale flag follows the models' tolerance").
Run from the repository root: .venv/bin/python docs/experiments/review_reasons_as_rig.py [test|val]"""
import sys
from collections import Counter
from pathlib import Path

from daemon.domain.classes import CLASS_CODES
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import block_split, list_fields, read_rgb
from daemon.training.evaluate import daemon_results

recs = block_split(list_fields(Path('../shared/data/all-taleqani')))[sys.argv[1] if len(sys.argv) > 1 else 'test']
an = Analyzer(Segmenter(Path('models/segmenter.onnx'), 'cpu', 0), Classifier(Path('models/classifier.onnx'), 'cpu', 0))
raw = [read_rgb(r.image) for r in recs]
for rig in ("none", None):
    res = daemon_results(an, raw, rig=rig)
    c = Counter(x for r in res for x in r["review_reasons"])
    wrong = [r["frame_class"] != CLASS_CODES[x.label] for r, x in zip(res, recs, strict=True)]
    flagged = [r["needs_review"] for r in res]
    print(rig, sum(flagged), dict(c), "flagged and wrong",
          sum(f and w for f, w in zip(flagged, wrong, strict=True)), "wrong, not flagged",
          sum(w and not f for f, w in zip(flagged, wrong, strict=True)))

"""How much a wrong pixel scale costs: validation fields analysed with a configured µm/px wrong by f
(deploy/gpu/decision-2026-11-27c.txt). Run from the repository root:
    .venv/bin/python docs/experiments/scale_tolerance.py [val|test]"""
import json
import sys
from pathlib import Path

import numpy as np

from daemon.domain.classes import CLASS_CODES
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import block_split, list_fields, read_rgb

split = sys.argv[1] if len(sys.argv) > 1 else "val"
records = block_split(list_fields(Path("../shared/data/all-taleqani")))[split]
analyzer = Analyzer(Segmenter(Path("models/segmenter.onnx"), "cpu", 1),
                    Classifier(Path("models/classifier.onnx"), "cpu", 1))
model_um = analyzer.rescaler.model_um
truth = [CLASS_CODES[r.label] for r in records]
fields = [read_rgb(r.image) for r in records]
rows = {}
for f in (1 / 1.5, 1 / 1.4, 1 / 1.33, 1 / 1.25, 1.0, 1.25, 1.33, 1.4, 1.5):
    calls = []
    for start in range(0, len(fields), 16):
        prepared, infos = [], []
        for image in fields[start:start + 16]:
            scale = analyzer.rescaler.resolve(image, model_um * f)
            frame, acquisition = analyzer.prepare(image, scale, None)
            prepared.append(frame)
            infos.append((scale, acquisition))
        for analysis, (scale, acquisition) in zip(analyzer.analyze(prepared), infos, strict=True):
            calls.append(analyzer.describe(analysis, scale, acquisition)["frame_class"])
    accuracy = float(np.mean([c == t for c, t in zip(calls, truth, strict=True)]))
    rows[f"{f:.3f}"] = round(accuracy, 4)
    print(f"f={f:.3f} accuracy {accuracy:.4f} ({sum(c == t for c, t in zip(calls, truth, strict=True))}/{len(truth)})",
          flush=True)
print(json.dumps({"split": split, "n": len(truth), "accuracy_by_factor": rows}))

"""Print the validation figures of evaluated model folders, and nothing of the test blocks
(the decision rules read test figures only after their verdict). Run from the repository root:
    .venv/bin/python deploy/gpu/val_summary.py runs/m_A [runs/m_B ...]   (each with eval.json)"""
import json
import sys
from pathlib import Path

import numpy as np

for folder in sys.argv[1:]:
    e = json.loads((Path(folder) / "eval.json").read_text())
    acc = {k: r["accuracy"] for k, r in e["val_shift_suite"].items()}
    print(folder, json.dumps(acc))
    print(folder, "mean", round(float(np.mean(list(acc.values()))), 4),
          "lowest", min(acc.items(), key=lambda kv: kv[1]),
          "unshifted", acc["none"], "val_field_accuracy", e.get("val_field_accuracy"))
    alone = e["foreign_normal_test"]["each_alone"]
    print(folder, "foreign each alone", json.dumps({k: v for k, v in alone.items() if k != "per_class"}))

#!/bin/bash
# E3' by deploy/gpu/decision-2026-11-27b.txt: export seed 3, average with 2.1.0's two members, judge on validation.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
L=.venv/bin/leukoscope
rm -rf runs/m_s3 runs/m_E3
$L export runs/classifier_s3/best.pt --out runs/m_s3 --version 2.2.0
$L ensemble models runs/m_s3 --out runs/m_E3 --version 2.2.0 --segmenter models
$L evaluate --models runs/m_E3 --json runs/m_E3/eval.json --val-shifts --no-shifts --no-update > runs/m_E3/evaluate.log 2>&1
# validation only (test figures are read after the decision)
.venv/bin/python - <<'PY'
import json, numpy as np
e = json.load(open("runs/m_E3/eval.json"))
v = e["val_shift_suite"]
acc = {k: r["accuracy"] for k, r in v.items()}
print(json.dumps(acc))
print("mean", round(float(np.mean(list(acc.values()))), 4), "lowest", min(acc.items(), key=lambda kv: kv[1]),
      "unshifted", acc["none"], "val_field_accuracy", e.get("val_field_accuracy"))
f = e["foreign_normal_test"]["each_alone"]
print("foreign each alone", json.dumps({k: v for k, v in f.items() if k != "per_class"}))
PY

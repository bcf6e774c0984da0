#!/bin/bash
# deploy/gpu/decision-2026-11-27i.txt, step 2: 2.1.0 with its two members' BatchNorm statistics re-estimated on the
# plain training crops, evaluated on the validation suite; prints validation only (test read after the verdict).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
L=.venv/bin/leukoscope
rm -rf runs/m_bn
$L recalibrate-bn models --out runs/m_bn --version 2.2.0 --threads 2 > runs/recalibrate_bn.log 2>&1
$L evaluate --models runs/m_bn --json runs/m_bn/eval.json --val-shifts --no-shifts --no-update \
  > runs/m_bn/evaluate.log 2>&1
.venv/bin/python deploy/gpu/val_summary.py runs/m_bn

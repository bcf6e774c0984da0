#!/bin/bash
# deploy/gpu/decision-2026-11-27i.txt step 1 (MIX 0, NAME s3bn) and decision-2026-11-27j.txt step 1' (MIX 0.5, NAME
# s3mix): seed 3 with re-estimated BatchNorm statistics, exported with the shipped segmenter, evaluated on the validation
# suite; prints validation only (test read after the verdict).
#   deploy/gpu/bn_step1.sh NAME MIX
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
NAME=$1 MIX=$2
L=.venv/bin/leukoscope
.venv/bin/python docs/experiments/s3bn.py runs/classifier_s3/best.pt runs/classifier_$NAME/best.pt --mix "$MIX"
rm -rf runs/m_$NAME
$L export runs/classifier_$NAME/best.pt --out runs/m_$NAME --version 2.2.0-$NAME
cp models/segmenter.json models/segmenter.onnx models/segmenter_fp16.onnx runs/m_$NAME/
$L evaluate --models runs/m_$NAME --json runs/m_$NAME/eval.json --val-shifts --no-shifts --no-update \
  > runs/m_$NAME/evaluate.log 2>&1
.venv/bin/python deploy/gpu/val_summary.py runs/m_$NAME

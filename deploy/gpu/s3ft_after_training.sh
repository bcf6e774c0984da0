#!/bin/bash
# deploy/gpu/decision-2026-11-27f.txt: after B (96 px) has trained, train A (the 64-px control), export both,
# evaluate both on the validation suite side by side, print validation only.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
L=.venv/bin/leukoscope
$L train classifier --width 1.0 --size 64 --epochs 4 --lr 0.0006 --train-seed 3 --threads 2 \
  --init runs/classifier_s3/best.pt --out runs/classifier_s3ft64 > runs/train_s3ft64.log 2>&1
for n in 96 64; do
  rm -rf runs/m_s3ft$n
  $L export runs/classifier_s3ft$n/best.pt --out runs/m_s3ft$n --version 2.2.0
  cp models/segmenter.json models/segmenter.onnx models/segmenter_fp16.onnx runs/m_s3ft$n/
done
for n in 96 64; do
  $L evaluate --models runs/m_s3ft$n --json runs/m_s3ft$n/eval.json --val-shifts --no-shifts --no-update \
    > runs/m_s3ft$n/evaluate.log 2>&1 &
done
wait
# validation only (test figures are read after the decision)
.venv/bin/python deploy/gpu/val_summary.py runs/m_s3ft96 runs/m_s3ft64

#!/bin/bash
# deploy/gpu/decision-2026-11-27h.txt: after D96 (96 px from scratch, seed 3) has trained, export it with the shipped
# segmenter, evaluate it on the validation suite, print validation only (test figures are read after the verdict).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
L=.venv/bin/leukoscope
rm -rf runs/m_d96
$L export runs/classifier_d96/best.pt --out runs/m_d96 --version 2.2.0-d96
cp models/segmenter.json models/segmenter.onnx models/segmenter_fp16.onnx runs/m_d96/
$L evaluate --models runs/m_d96 --json runs/m_d96/eval.json --val-shifts --no-shifts --no-update \
  > runs/m_d96/evaluate.log 2>&1
.venv/bin/python deploy/gpu/val_summary.py runs/m_d96

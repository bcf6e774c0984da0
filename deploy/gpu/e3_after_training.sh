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
.venv/bin/python deploy/gpu/val_summary.py runs/m_E3

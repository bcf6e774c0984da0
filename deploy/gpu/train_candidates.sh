#!/usr/bin/env bash
# Train classifier candidates side by side on a lent GPU machine, from a training pack
# (`leukoscope train-pack`), and leave each candidate's best.pt and the logs in OUT.
# Candidates are then chosen between at home by `leukoscope evaluate --val-shifts` (the
# validation blocks only; README "Models" gives the rule).
#
#   deploy/gpu/train_candidates.sh LIST PACK WHEELS OUT BUDGET_S [LIMIT_FIELDS] [DEVICE]
#
# LIST: one candidate a line, "NAME train-classifier-options..." (deploy/gpu/candidates-*.txt);
# WHEELS: a folder of wheels the GPU machine's Python lacks (pydantic and its needs);
# BUDGET_S: seconds of training per candidate after its data is loaded (--time-budget).
# PY and TIMEOUT (environment): the Python to use (default python3) and each candidate's
# limit in seconds (default BUDGET_S + 110: data loading, the last epoch, saving).
# WORKERS (environment): each candidate's --workers, the processes that augment its batches
# (the single-threaded augmentation, not the GPU, limited an epoch); default: the cores
# shared by the candidates, less one each for its main process, at least 1.
# Carrying it to a lent machine (2026-11-27): the repository (33 MB, 30 of them models/*.onnx,
# which training does not read), a pack (56 MB) and the wheels (3 MB) exceed the 64 MiB one
# device call carries, so move models/*.onnx out of the tree for the call and back after;
# carry [".pack", ".whl"] with both folders ignored in .git/info/exclude.
set -u
LIST=$1 PACK=$2 WHEELS=$3 OUT=$4 BUDGET=$5 LIMIT=${6:-0} DEVICE=${7:-cuda}
PY=${PY:-python3}
N_CANDIDATES=$(grep -cvE '^[[:space:]]*(#|$)' "$LIST")
WORKERS=${WORKERS:-$(( $(nproc) / (N_CANDIDATES > 0 ? N_CANDIDATES : 1) - 1 ))}
[ "$WORKERS" -ge 1 ] || WORKERS=1
mkdir -p "$OUT" /tmp/lk-runs
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/lk-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/lk-site:$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; "$PY" -c \
  'import torch, onnxruntime as o; print(torch.__version__, torch.cuda.is_available(), o.__version__, o.get_available_providers())'
} >"/tmp/lk-runs/machine.txt" 2>&1
# The models' GPU ceiling while the candidates load their data (the GPU is idle then):
# through ONNX Runtime where it has CUDA, else through torch (same architectures).
{ if grep -q CUDAExecutionProvider /tmp/lk-runs/machine.txt; then
    "$PY" deploy/gpu/ort_probe.py 1.5
  else
    "$PY" deploy/gpu/torch_probe.py
  fi; } >"/tmp/lk-runs/probe.txt" 2>&1 &
PROBE=$!

# A machine lent for minutes may be taken back mid-run: keep OUT up to date as we go.
collect() {
  for run in /tmp/lk-runs/*/; do
    [ -f "$run/best.pt" ] || continue
    name=$(basename "$run")
    cp "$run/best.pt" "$OUT/$name.tmp" && mv "$OUT/$name.tmp" "$OUT/$name.pt"
  done
}
( while sleep 30; do collect; done ) &
COLLECTOR=$!

# --threads 1: torch's intra-op threads on a batch of small crops cost more than they give
# when cores are shared (one epoch's augmentation, 2 loaded cores: 101 s at 2 threads, 4.1 s
# at 1); a list line's own --threads comes later and wins.
candidate() {  # NAME ARGS...
  local name=$1; shift
  timeout "${TIMEOUT:-$((BUDGET + 110))}" "$PY" -m daemon.training.cli train classifier \
    --data "$PACK" --negatives "$PACK/negatives" --out "/tmp/lk-runs/$name" --threads 1 \
    --workers "$WORKERS" --device "$DEVICE" --limit-fields "$LIMIT" --epochs 200 \
    --time-budget "$BUDGET" "$@" \
    >"/tmp/lk-runs/$name.log" 2>&1
  echo "$name exit $?" >>/tmp/lk-runs/exits.txt
}
CANDIDATES=()
while read -r name args; do
  case $name in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086 # ARGS are options, split on purpose
  candidate "$name" $args &
  CANDIDATES+=($!)
done <"$LIST"
wait "${CANDIDATES[@]}"
kill "$COLLECTOR" 2>/dev/null
wait "$PROBE"
collect
for run in /tmp/lk-runs/*/; do
  cp "$run/log.jsonl" "/tmp/lk-runs/$(basename "$run").jsonl" 2>/dev/null
done
tar -czf "$OUT/logs.tar.gz" -C /tmp/lk-runs \
  $(cd /tmp/lk-runs && ls *.log *.jsonl *.txt)
cat /tmp/lk-runs/machine.txt /tmp/lk-runs/exits.txt /tmp/lk-runs/probe.txt
for f in /tmp/lk-runs/*.jsonl; do echo "$(basename "$f") $(tail -1 "$f")"; done

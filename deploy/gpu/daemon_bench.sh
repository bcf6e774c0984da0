#!/usr/bin/env bash
# The daemon's GPU path measured on a lent GPU machine (issue 15): ONNX Runtime's CUDA
# provider, fp16 models, I/O binding, dynamic batching, several workers on one card.
#
#   deploy/gpu/daemon_bench.sh STAGE OUT [CONFIG]
#
# STAGE: a folder made by deploy/gpu/stage_ort.sh: onnxruntime-gpu unpacked (CUDA 13 build,
# whose cuBLAS, cuDNN and runtime the machine's PyTorch already brings) and wheels of the
# daemon's packages that the machine's Python lacks. OUT: where the reports go, step by step
# (a machine lent for minutes may be taken back mid-run).
# Steps: the provider really runs on CUDA; the session differences (session_diag.py) and the
# configuration they point to; leukoscope bench on 224x224 fields; on 1920x1280 camera fields
# (cells 3x the models' scale, no um/px); open loop at 80 % of that rate. The models' ceiling
# alone: deploy/gpu/ort_probe.py (measured on the second lease, README).
# CAMERA_ONLY=1 (environment): CONFIG as it is, camera fields only (no session differences, no
# 224x224 bench); with a CONFIG that sets capture.um_per_pixel it measures a rig whose scale is
# configured, so the red-cell ruler is skipped (the fourth lease: the ruler was the limit).
set -u
STAGE=$1 OUT=$2 CONFIG=${3:-deploy/gpu/h100.yaml}
PY=${PY:-python3}
mkdir -p "$OUT" /tmp/lk-site
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/lk-site "$STAGE"/whl/*.whl || exit 1
cp -r "$STAGE"/onnxruntime "$STAGE"/onnxruntime_gpu-*.dist-info /tmp/lk-site/ || exit 1
export PYTHONPATH=/tmp/lk-site:$PWD PYTHONUNBUFFERED=1
# cuBLAS, cuDNN, cuFFT and the CUDA runtime as the machine's PyTorch installed them (pip).
NV=$("$PY" -c 'import nvidia; print(list(nvidia.__path__)[0])')
LD_LIBRARY_PATH=$(find "$NV" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
step() { echo "== $1 $(date -u +%T)"; }

step machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  grep -m1 'model name' /proc/cpuinfo; } | tee "$OUT/machine.txt"
step providers
timeout 120 "$PY" - <<'PY' 2>&1 | tee "$OUT/providers.txt"
import numpy as np, onnxruntime as ort
print(ort.__file__, ort.__version__, ort.get_available_providers())
for name in ("segmenter_fp16", "classifier_fp16"):
    s = ort.InferenceSession(f"models/{name}.onnx", providers=["CUDAExecutionProvider"])
    shape = [1 if isinstance(d, str) else d for d in s.get_inputs()[0].shape]
    shape[-1] = shape[-2] = 64 if name.startswith("classifier") else 224
    out = s.run(None, {s.get_inputs()[0].name: np.random.rand(*shape).astype(np.float32)})
    print(name, s.get_providers(), [o.shape for o in out], bool(np.isfinite(out[0]).all()))
PY
grep -q "'CUDAExecutionProvider'" "$OUT/providers.txt" || { echo "CUDA provider not running"; exit 1; }

bench() {  # NAME ARGS...
  local name=$1; shift
  step "bench $name"
  timeout "${BENCH_LIMIT:-150}" "$PY" -m daemon bench --device cuda --rounds 1 --warmup 256 --json "$@" \
    >"$OUT/bench-$name.json" 2>"$OUT/bench-$name.err"
  echo "exit $?"; cat "$OUT/bench-$name.json"; tail -3 "$OUT/bench-$name.err"
}

if [ "${CAMERA_ONLY:-0}" = 1 ]; then cp "$CONFIG" /tmp/chosen.yaml; else
# Each session difference alone, side by side (a minute at most): on the third lease none was
# slow (the seconds were cuDNN planning new shapes, now fixed); kept to catch another card's.
step "session differences"
timeout 120 "$PY" deploy/gpu/session_diag.py 75 2>&1 | grep '^{' | tee "$OUT/session_diag.jsonl"

# The configuration to bench: CONFIG when the daemon's own Classifier is fast, else CONFIG with
# the first single change (workers.*) that made it fast; none: stop here, the diagnosis is it.
step "configuration"
rm -f /tmp/chosen.yaml
"$PY" - "$OUT/session_diag.jsonl" "$CONFIG" /tmp/chosen.yaml <<'PY' | tee "$OUT/chosen.txt" || exit 0
import json, sys, yaml
cases = {c["case"]: c for c in map(json.loads, open(sys.argv[1]))}
fast = lambda name: cases.get(name, {}).get("median_ms", 1e9) < 100
changes = {"daemon_classifier": {}, "daemon_no_io_binding": {"io_binding": False},
           "daemon_threads_auto": {"threads": 0}, "daemon_heuristic":
           {"cudnn_conv_algo_search": "HEURISTIC"}, "daemon_fp32": {"fp16": False}}
chosen = next((name for name in changes if fast(name)), None)
if chosen is None:
    print("no daemon variant is fast:", sorted(n for n in cases if fast(n))); sys.exit(1)
config = yaml.safe_load(open(sys.argv[2]))
config["workers"].update(changes[chosen])
yaml.safe_dump(config, open(sys.argv[3], "w"))
print(chosen, changes[chosen])
PY
[ -s /tmp/chosen.yaml ] || exit 0
bench 224 --config /tmp/chosen.yaml --frames 1000
fi
cp /tmp/chosen.yaml "$OUT/chosen.yaml"

step "camera frames"  # made once, in parallel: 0.1 s each on one core
timeout 120 "$PY" - <<'PY'
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from daemon.cli.bench import bench_frames
def part(seed):  # 50 camera fields of the bench's own making, one seed each
    for i, data in enumerate(bench_frames(50, None, (1280, 1920), 3.0, seed=seed)):
        Path(f"/tmp/cam/{seed:02d}-{i:02d}.jpg").write_bytes(data)
Path("/tmp/cam").mkdir(exist_ok=True)
with ProcessPoolExecutor() as pool:
    list(pool.map(part, range(8)))
PY
ls /tmp/cam | wc -l
bench camera --config /tmp/chosen.yaml --images /tmp/cam --frames 300
RATE=$("$PY" -c "import json; print(round(0.8 * (json.load(open('$OUT/bench-camera.json')).get('daemon_fps') or 0)))" 2>/dev/null)
[ "${RATE:-0}" -gt 0 ] || exit 0
echo "open loop at $RATE fields/s"
bench camera-open-loop --config /tmp/chosen.yaml --images /tmp/cam --frames $((RATE * 6)) --rate "$RATE"
step done

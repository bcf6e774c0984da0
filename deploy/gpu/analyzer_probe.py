"""The daemon's Analyzer on a GPU, call by call: what a model call costs the first time a shape
comes and after (the third lease found cuDNN's per-shape planning this way).

    python3 deploy/gpu/analyzer_probe.py [DEVICE]

Loads the shipped models as a worker on DEVICE (default cuda) would (2 threads, fp16, 256 crops
a classifier call), times the warm-up, then six batches of 16 synthetic 224x224 fields
(``bench_frames``): the segmenter alone, then the whole ``analyze`` of the same batch.
Prints ``load``, ``warm`` and one ``seg ... analyze ...`` line per batch, in seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from daemon.cli.bench import bench_frames
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter

MODELS = Path(__file__).resolve().parents[2] / "models"


def main(device: str) -> None:
    started = time.time()
    analyzer = Analyzer(Segmenter(MODELS / "segmenter.json", device, 2, True),  # type: ignore[arg-type]
                        Classifier(MODELS / "classifier.json", device, 2, True), 256)  # type: ignore[arg-type]
    print("load", time.time() - started)
    started = time.time()
    analyzer.warm_up()
    print("warm", time.time() - started)
    frames = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB) for b in bench_frames(96, None)]
    for start in range(0, len(frames), 16):
        batch = frames[start : start + 16]
        t0 = time.time()
        analyzer.segmenter.compute(batch)
        t1 = time.time()
        analyzer.analyze(batch)
        print("seg", round(t1 - t0, 3), "analyze", round(time.time() - t1, 3), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")

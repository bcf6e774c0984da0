"""How close the folded-graph recalibration (leukoscope recalibrate-bn) comes to the exact torch one
(deploy/gpu/decision-2026-11-27i.txt): field and cell accuracy of each models folder on the validation crops (the
training's own measure) and, for each pair, how often their crop calls agree. Run from the repository root:
    .venv/bin/python docs/experiments/bn_compare.py runs/m_s3 runs/m_s3bn runs/m_s3bnx"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from daemon.training import train as T
from daemon.training.data import load_splits

cfg = T.ClassifierConfig(data="../shared/data/all-taleqani", negatives="../shared/data/pbc-normal", width=1.0)
splits = load_splits(cfg.data, cfg.block_size, cfg.seed, 0, Path("runs/cache"))
crops = T.classifier_crops(cfg, splits["train"], splits["val"])
val = splits["val"]
out = {}
for f in sys.argv[1:]:
    man = json.load(open(f"{f}/classifier.json"))
    mean = np.array(man["input"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(man["input"]["std"], np.float32).reshape(1, 3, 1, 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(f"{f}/classifier.onnx", so, providers=["CPUExecutionProvider"])
    x = crops.val_crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    p = np.concatenate([s.run(["probabilities"], {"crop": ((x[i:i+256] - mean) / std).astype(np.float32)})[0] for i in range(0, len(x), 256)])
    out[f] = p
    cell = float((p.argmax(1) == val["labels"][crops.val_owner]).mean())
    fp = T.field_predictions(p, crops.val_owner, len(val["labels"]), "mean")
    has = ~np.isnan(fp[:, 0])
    print(f, "field", round(float((fp[has, :4].argmax(1) == val["labels"][has]).sum() / len(has)), 4), "cell", round(cell, 4), flush=True)
ks = list(out)
for a in ks:
    for b in ks:
        if a < b:
            print(a, b, "max |dp|", float(np.abs(out[a] - out[b]).max()), "agree", float((out[a].argmax(1) == out[b].argmax(1)).mean()))

"""Diagnostic (deploy/gpu/decision-2026-11-27i.txt): is the classifier's per-epoch validation noise its BatchNorm running statistics?
Validation split only. Run from the repository root: .venv/bin/python docs/experiments/bn_probe.py runs/classifier_s3"""
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from daemon.training import train as T
from daemon.training.augment import classifier_augment, normalize
from daemon.training.data import load_splits
from daemon.training.nets import MobileNetV2

run = Path(sys.argv[1])
torch.set_num_threads(2)
best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
c = best["meta"]["config"]
cfg = T.ClassifierConfig(**{f.name: c[f.name] for f in fields(T.ClassifierConfig) if f.name in c})
splits = load_splits(cfg.data, cfg.block_size, cfg.seed, 0, Path("runs/cache"))
crops = T.classifier_crops(cfg, splits["train"], splits["val"])
val = splits["val"]
mean, std = best["meta"]["mean"], best["meta"]["std"]
dev = torch.device("cpu")

def score(model):
    p = T.predict_crops(model, crops.val_crops, mean, std, dev)
    cell = float((p.argmax(1) == val["labels"][crops.val_owner]).mean())
    f = T.field_predictions(p, crops.val_owner, len(val["labels"]), "mean")
    has = ~np.isnan(f[:, 0])
    return round(float((f[has, :4].argmax(1) == val["labels"][has]).sum() / len(has)), 4), round(cell, 4)

def reestimate(model, augmented, seed=0):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(crops.crops), generator=gen).numpy()
    stain = (crops.crop_stain, crops.stain_targets, crops.stain_weights, cfg.stain_mix)
    aug = classifier_augment(cfg.augment)
    with torch.no_grad():
        for i in range(0, len(order), 256):
            idx = order[i:i + 256]
            if augmented:
                x = T.augment_batch(crops.crops, idx, *stain, aug, mean, std, gen)
            else:
                x = normalize(T._to_float(crops.crops[idx], dev), mean, std)
            model(x)
    model.eval()

for name in ["best.pt", "last.pt"]:
    ck = torch.load(run / name, map_location="cpu", weights_only=False)
    model = MobileNetV2(num_classes=5, width=cfg.width)
    model.load_state_dict(ck["model"])
    t = time.time()
    print(name, "epoch", ck["epoch"], "stored BN", score(model), flush=True)
    for aug in (False, True):
        model.load_state_dict(ck["model"])
        reestimate(model, aug)
        print(name, "BN re-estimated on", "augmented" if aug else "clean", "train crops", score(model), f"{time.time()-t:.0f}s", flush=True)

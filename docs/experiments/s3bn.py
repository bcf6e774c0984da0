"""S3bn (deploy/gpu/decision-2026-11-27i.txt, step 1): seed 3's best.pt with its BatchNorm running statistics
re-estimated on the un-augmented training crops; written as a checkpoint that leukoscope export reads.
With --mix P (decision-2026-11-27j.txt): each batch of 256 is (1 - P) plain and P augmented crops.
    .venv/bin/python docs/experiments/s3bn.py SRC.pt OUT.pt [--mix P]   (from the repository root)"""
import sys
from dataclasses import fields
from pathlib import Path

import torch

from daemon.training import train as T
from daemon.training.augment import classifier_augment, normalize
from daemon.training.data import load_splits
from daemon.training.nets import MobileNetV2

src, out = Path(sys.argv[1]), Path(sys.argv[2])
mix = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--mix" else 0.0
torch.set_num_threads(2)
ck = torch.load(src, map_location="cpu", weights_only=False)
c = ck["meta"]["config"]
cfg = T.ClassifierConfig(**{f.name: c[f.name] for f in fields(T.ClassifierConfig) if f.name in c})
splits = load_splits(cfg.data, cfg.block_size, cfg.seed, 0, Path("runs/cache"))
crops = T.classifier_crops(cfg, splits["train"], splits["val"])
model = MobileNetV2(num_classes=5, width=cfg.width)
model.load_state_dict(ck["model"])
for m in model.modules():
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.reset_running_stats()
        m.momentum = None
model.train()
mean, std = ck["meta"]["mean"], ck["meta"]["std"]
order = torch.randperm(len(crops.crops), generator=torch.Generator().manual_seed(0)).numpy()
aug = classifier_augment(cfg.augment)
stain = (crops.crop_stain, crops.stain_targets, crops.stain_weights, cfg.stain_mix)
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for i in range(0, len(order), 256):
        idx = order[i:i + 256]
        n_aug = int(round(mix * len(idx)))
        x = normalize(T._to_float(crops.crops[idx[n_aug:]], torch.device("cpu")), mean, std)
        if n_aug:
            x = torch.cat([T.augment_batch(crops.crops, idx[:n_aug], *stain, aug, mean, std, gen), x])
        model(x)
model.eval()
out.parent.mkdir(parents=True, exist_ok=True)
torch.save({**ck, "model": model.state_dict()}, out)
print("wrote", out)

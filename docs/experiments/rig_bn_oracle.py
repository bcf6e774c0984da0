"""Would BatchNorm statistics taken from a rig's own crops help? (Test-time adaptation per rig,
the model card's untried lead after "Statistics per kind of frame".)

For each named shift of the suite, the training blocks' fields are put through that shift and
the daemon's path (ruler, smoothing, rescale, gain, shipped segmenter, crops of every cell it
finds, unlabelled: what a rig with that acquisition would have sent before). 2.1.0's two
networks get new BatchNorm running statistics from those crops (beta and |gamma| read back
once, as ``leukoscope recalibrate-bn`` does), and the validation fields under the same shift go
through the daemon's path with them, each field alone, temperature and settings as shipped.
The same script on 2.1.0 unchanged gives the baseline (it reproduces ``val_shift_suite``).
Prints one line per row; chooses nothing. Run from the repository root:
    .venv/bin/python docs/experiments/rig_bn_oracle.py ROW [ROW ...]     (rows of shifts.SUITE)
"""
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from daemon.domain.manifest import load_manifest
from daemon.imaging.pipeline import crop_cells, find_cells
from daemon.imaging.scale import Rescaler
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.augment import classifier_augment
from daemon.training.batchnorm import _output_moments, batches, fold_back, members
from daemon.training.data import load_splits, read_rgb
from daemon.training.derived import write_derived_classifier
from daemon.training.evaluate import daemon_results, suite_row
from daemon.training.shifts import SUITE
from daemon.training.train import ClassifierConfig, augment_batch, classifier_crops

MODELS = Path("models")
torch.set_num_threads(2)
source = load_manifest(MODELS / "classifier.json")
graph = onnx.load(str(MODELS / source.file))
crop = source.crop
cfg = ClassifierConfig(data="../shared/data/all-taleqani", negatives="../shared/data/pbc-normal",
                       size=source.input.size[0], margin=crop.margin,
                       min_side_px=crop.min_side_px, seed=0, block_size=40)
splits = load_splits(cfg.data, cfg.block_size, cfg.seed, 0, Path("runs/cache"))
train_crops = classifier_crops(cfg, splits["train"], splits["val"])
mean, std = source.input.mean, source.input.std
augment = classifier_augment(cfg.augment)
stain = (train_crops.crop_stain, train_crops.stain_targets, train_crops.stain_weights,
         cfg.stain_mix)


def augmented(idx: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    return augment_batch(train_crops.crops, idx, *stain, augment, mean, std, generator)


# beta and |gamma| of every BatchNorm, read back once on augmented training crops
nets = members(graph, len(source.classes))
for member in nets:
    moments = _output_moments(member, batches(train_crops.crops, mean, std, augment=augmented))
    with torch.no_grad():
        for (_, bn), (m, s) in zip(member.pairs, moments, strict=True):
            bn.bias.copy_(m)
            bn.weight.copy_(s)

segmenter_path = MODELS / "segmenter.onnx"
base = Analyzer(Segmenter(segmenter_path, "cpu", 2), Classifier(MODELS / "classifier.onnx", "cpu", 2))
val_fields = [read_rgb(r.image) for r in splits["val"]["records"]]
train_fields = [read_rgb(r.image) for r in splits["train"]["records"]]


def rig_crops(shift) -> np.ndarray:
    """Every cell the daemon cuts from the training fields under ``shift``, each field alone."""
    out = []
    for image in train_fields:
        shifted = shift(image)
        scale = Rescaler(base.rescaler.model_scale).resolve(shifted, None, rig=None)
        frame, _ = base.prepare(shifted, scale)
        boxes = find_cells(base.segmenter.compute([frame])[0], base.cell_filter)
        out.append(crop_cells(frame, boxes, base.crop_spec, base.classifier.crop_size))
    return np.concatenate(out)


def row(analyzer: Analyzer, name: str) -> dict:
    shift = SUITE[name]
    results = daemon_results(analyzer, val_fields, shift=None if name == "none" else shift)
    return suite_row(results, splits["val"]["labels"])


for name in sys.argv[1:]:
    crops = rig_crops(SUITE[name])
    model = copy.deepcopy(graph)
    for member in nets:
        adapted = copy.deepcopy(member)
        with torch.no_grad():
            for _, bn in adapted.pairs:
                bn.reset_running_stats()
                bn.momentum = None
            adapted.net.train()
            for x in batches(crops, mean, std, seed=1):
                adapted.net(x)
        adapted.net.eval()
        fold_back(model, adapted)
    with tempfile.TemporaryDirectory() as folder:
        write_derived_classifier(model, source, Path(folder), "rig-bn", fp16=False)
        analyzer = Analyzer(base.segmenter, Classifier(Path(folder) / "classifier.onnx", "cpu", 2))
        for attribute in ("temperature", "aggregation", "review", "cell_filter", "rescaler"):
            setattr(analyzer, attribute, getattr(base, attribute))
        got = row(analyzer, name)
    shipped = row(base, name)
    print(f"{name}: rig crops {len(crops)}; 2.1.0 {shipped['accuracy']:.4f}, "
          f"statistics of the rig's crops {got['accuracy']:.4f} "
          f"(flagged {shipped['review_share']:.3f} / {got['review_share']:.3f})", flush=True)

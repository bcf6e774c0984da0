"""Seeded, resumable training loops for the segmenter and the classifier (torch, CPU or GPU).

A run directory holds ``last.pt`` (full state after each epoch: weights, optimizer, scheduler,
history), ``best.pt`` (weights of the best validation epoch + metadata) and ``log.jsonl``.
Re-running the same command resumes from ``last.pt``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.manifest import CropSpec
from daemon.imaging.pipeline import aggregate
from daemon.training import data as D
from daemon.training.augment import (
    SEGMENTER_AUGMENT,
    AugmentParams,
    classifier_augment,
    normalize,
    random_colour,
    random_degrade,
    random_geometry,
    stain_mix,
)
from daemon.training.confound import stain_features
from daemon.training.data import load_splits
from daemon.training.nets import MobileNetV2, UNet


@dataclass
class SegmenterConfig:
    """Segmenter training settings (sizes in frame pixels)."""

    data: str
    out: str = "runs/segmenter"
    epochs: int = 16
    batch: int = 16
    patch: int = 128  # random training patches; evaluation runs on whole fields
    base: int = 8
    levels: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    block_size: int = 40
    threads: int = 0  # 0: leave torch's default
    limit_fields: int = 0  # >0: use only this many fields per split (smoke tests)
    device: str = "auto"
    #: Foreign normal cells (``<class>/<file>``): their train part, four to a mosaic at the
    #: models' scale, joins the fields (their red cells are not white cells); "" for none.
    negatives: str = ""


@dataclass
class ClassifierConfig:
    """Classifier training settings (crop geometry as ``daemon.manifest.CropSpec``)."""

    data: str
    out: str = "runs/classifier"
    epochs: int = 30
    batch: int = 64
    size: int = 64  # crop side fed to the network, pixels
    width: float = 0.5
    margin: float = 0.25
    min_side_px: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    colour_norm: str = "none"  # "none" or "reinhard" (LAB mean/std transfer per field)
    seed: int = 0
    block_size: int = 40
    threads: int = 0
    limit_fields: int = 0
    device: str = "auto"
    augment: dict = field(default_factory=dict)
    #: Foreign normal cells (``pbc-normal`` layout ``<class>/<file>``) whose train part teaches
    #: ``unidentified``; "" for none (then only background crops of the ALL fields do).
    negatives: str = ""
    negatives_repeat: int = 3  # the foreign crops are few: each is seen this often per epoch
    init: str = ""  # start from this checkpoint's weights (fine-tuning); "" for random
    #: An ``.npz`` of ``crops`` (N, size, size, 3) uint8 and ``labels`` (N,) added to the
    #: training crops: cut by the daemon's own path from shifted fields (``daemon_crops``).
    extra_crops: str = ""
    #: Share of crops given the stain of a random training field of any class
    #: (``augment.stain_mix``): 0 leaves the data set's class-linked stain batches as a cue.
    stain_mix: float = 0.0
    #: >0: fit the schedule to the epochs that fit in this many seconds of training (at most
    #: ``epochs``; fitted after epochs ``BUDGET_FIT_AFTER``), e.g. on a GPU machine lent for
    #: minutes.
    time_budget_s: float = 0.0
    #: Seed of the weights and the augmentation only (None: ``seed``). ``seed`` also draws the
    #: block split, so a second training run of one recipe on the same split changes this one.
    train_seed: int | None = None
    #: >0: prepare the training batches in this many ``DataLoader`` worker processes
    #: (``EpochBatches``), each batch augmented from its own generator seeded from (seed, epoch,
    #: batch), so the batches are the same for any number of workers (but not those of 0).
    #: 0: prepare them inline from the epoch's generator, as earlier recipes were trained.
    workers: int = 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _log(run_dir: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with (run_dir / "log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of px/255 over (N, H, W, 3) uint8 images."""
    flat = images.reshape(-1, 3).astype(np.float64) / 255.0
    return flat.mean(axis=0).round(4).tolist(), flat.std(axis=0).round(4).tolist()


def _to_float(batch_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(batch_uint8).to(device).permute(0, 3, 1, 2).float().div_(255.0)


class WarmCosine:
    """Learning-rate factor: linear warm-up over 3% of ``steps``, then cosine decay to 1% of
    the peak. A callable object (not a closure), so ``steps`` is saved with the scheduler's
    state and may be shortened mid-run (``ClassifierConfig.time_budget_s``)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, step: int) -> float:
        warm = max(1, int(0.03 * self.steps))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, self.steps - warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """AdamW's schedule over ``steps`` (``WarmCosine``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmCosine(steps))


def fit_epochs(max_epochs: int, done: int, elapsed_s: float, epoch_s: float,
               budget_s: float) -> int:
    """Epochs (``done``..``max_epochs``) that fit in ``budget_s`` seconds when ``done`` took
    ``elapsed_s`` and each further one takes about ``epoch_s``."""
    if budget_s <= 0 or epoch_s <= 0:
        return max_epochs
    more = max(0.0, budget_s - elapsed_s) // epoch_s
    return int(min(max_epochs, max(done, 1, done + more)))


#: Epochs after which a time-budgeted run fits its schedule: after the first (whose time
#: includes warm-up, so the guess errs short), then again on the steady pace of the next two.
BUDGET_FIT_AFTER: tuple[int, ...] = (1, 3)


def _resume(run_dir: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    last = run_dir / "last.pt"
    if not last.is_file():
        return 0, {"best": -1.0, "history": []}
    state = torch.load(last, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
    return state["epoch"], state["progress"]


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _checkpoint(
    run_dir: Path, score: float, record: dict, progress: dict, model, optimizer, scheduler,
    meta: dict, epoch: int,
) -> None:
    """End of an epoch: ``best.pt`` when ``score`` beats the best so far, ``last.pt`` always
    (full state, so re-running the command resumes)."""
    if score > progress["best"]:
        progress["best"] = score
        _save(
            run_dir / "best.pt",
            {"model": model.state_dict(), "meta": meta, "epoch": epoch + 1, "val": record},
        )
    _save(
        run_dir / "last.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "progress": progress,
            "meta": meta,
        },
    )


# --- segmenter ------------------------------------------------------------------------------


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss over a batch; logits and target (N, 1, H, W)."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    return 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)


@torch.no_grad()
def predict_masks(
    model: UNet, images: np.ndarray, mean, std, device, batch: int = 32
) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 for (N, H, W, 3) uint8 fields (H, W % 16 == 0)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(_to_float(images[i : i + batch], device), mean, std)
        out.append(torch.sigmoid(model(x))[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.empty((0,) + images.shape[1:3], np.float32)


def _training_sha256(train: dict) -> str:
    """The train part's data sha256 (a training pack carries the original data set's)."""
    return train.get("training_data_sha256") or D.training_data_sha256(train["records"])


def _train_seed(cfg: SegmenterConfig | ClassifierConfig) -> int:
    """The seed of weights and augmentation (the split's ``seed`` unless set apart)."""
    own = getattr(cfg, "train_seed", None)
    return cfg.seed if own is None else own


def _start_run(cfg: SegmenterConfig | ClassifierConfig) -> tuple[torch.device, Path, dict, dict]:
    """What both trainings do first: threads, device, run directory, seed, the data splits.

    Returns (device, run directory, train split, validation split)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(_train_seed(cfg))
    splits = load_splits(
        cfg.data, cfg.block_size, cfg.seed, cfg.limit_fields, run_dir.parent / "cache"
    )
    return device, run_dir, splits["train"], splits["val"]


def _optimiser(cfg: SegmenterConfig | ClassifierConfig, model: torch.nn.Module, run_dir: Path,
               samples: int) -> tuple:
    """AdamW with the run's schedule over all epochs, resumed from ``run_dir`` if it holds a
    checkpoint: (optimizer, scheduler, steps per epoch, first epoch, progress so far)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(samples / cfg.batch)
    scheduler = _schedule(optimizer, steps_per_epoch * cfg.epochs)
    start, progress = _resume(run_dir, model, optimizer, scheduler)
    return optimizer, scheduler, steps_per_epoch, start, progress


def train_segmenter(cfg: SegmenterConfig) -> Path:
    """Train the U-Net on cleaned masks; returns the run directory (``best.pt`` inside)."""
    device, run_dir, train, val = _start_run(cfg)
    scale = D.red_cell_scale(train["images"])
    if cfg.negatives:
        pbc = D.pbc_split(Path(cfg.negatives), cfg.seed)
        mosaics, mosaic_masks = D.foreign_mosaics(
            [p for p, _ in pbc["train"]], scale["rbc_diameter_px"],
            tuple(train["reference_background"]))
        train = {**train, "images": np.concatenate([train["images"], mosaics]),
                 "masks": np.concatenate([train["masks"], mosaic_masks])}
    mean, std = _channel_stats(train["images"])
    model = UNet(cfg.base, cfg.levels).to(device)
    optimizer, scheduler, steps_per_epoch, start, progress = _optimiser(
        cfg, model, run_dir, len(train["images"]))
    meta = {
        "kind": "segmenter",
        "config": asdict(cfg),
        "mean": mean,
        "std": std,
        "arch": {"base": cfg.base, "levels": cfg.levels},
        "train_names": train["names"],
        "training_data_sha256": _training_sha256(train),
        "reference_background": train["reference_background"],
        "scale": scale,
    }
    augment = SEGMENTER_AUGMENT
    patch = min(cfg.patch, train["images"].shape[1], train["images"].shape[2])
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        torch.manual_seed(cfg.seed * 100003 + epoch)
        order = torch.randperm(len(train["images"]), generator=gen).numpy()
        model.train()
        total = 0.0
        for i in range(0, len(order), cfg.batch):
            idx = np.sort(order[i : i + cfg.batch])
            x = _to_float(train["images"][idx], device)
            y = torch.from_numpy(train["masks"][idx]).to(device)[:, None].float()
            x, y = random_geometry(x.cpu(), y.cpu(), augment, gen)
            h, w = x.shape[2:]
            oy = int(torch.randint(0, h - patch + 1, (1,), generator=gen))
            ox = int(torch.randint(0, w - patch + 1, (1,), generator=gen))
            x = x[:, :, oy : oy + patch, ox : ox + patch]
            y = y[:, :, oy : oy + patch, ox : ox + patch]
            x = random_degrade(random_colour(x, augment, gen), augment, gen)
            x = normalize(x, mean, std).to(device)
            y = y.to(device)
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        prob = predict_masks(model, val["images"], mean, std, device)
        pred = prob >= 0.5
        gt = val["masks"].astype(bool)
        dice = float(2 * (pred & gt).sum() / max(1, pred.sum() + gt.sum()))
        record = {
            "epoch": epoch + 1,
            "loss": total / len(order),
            "val_dice": round(dice, 4),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.time() - t0, 1),
        }
        progress["history"].append(record)
        _log(run_dir, record)
        _checkpoint(run_dir, dice, record, progress, model, optimizer, scheduler, meta, epoch)
    return run_dir


# --- classifier -----------------------------------------------------------------------------


def _colour_normalized(images: np.ndarray, stats: tuple | None) -> np.ndarray:
    if stats is None:
        return images
    return np.stack([D.reinhard_normalize(im, stats[0], stats[1]) for im in images])


@torch.no_grad()
def predict_crops(model: MobileNetV2, crops: np.ndarray, mean, std, device, batch: int = 256):
    """Softmax probabilities (M, C) for (M, S, S, 3) uint8 crops."""
    model.eval()
    out = []
    for i in range(0, len(crops), batch):
        x = normalize(_to_float(crops[i : i + batch], device), mean, std)
        out.append(torch.softmax(model(x), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, len(CELL_OUTCOMES)), np.float32)


def field_predictions(probs: np.ndarray, owners: np.ndarray, n_fields: int, method: str):
    """Aggregate per-crop probabilities (M, 4) into per-field (n_fields, 4); NaN rows: no cells."""
    width = probs.shape[1] if probs.ndim == 2 else len(CELL_OUTCOMES)
    out = np.full((n_fields, width), np.nan, np.float32)
    for index in np.unique(owners):
        out[index] = aggregate(probs[owners == index], method)
    return out


def augment_batch(
    crops: np.ndarray, idx: np.ndarray, crop_stain: torch.Tensor, stain_targets: torch.Tensor,
    stain_weights: torch.Tensor, stain_p: float, augment: AugmentParams, mean, std,
    generator: torch.Generator,
) -> torch.Tensor:
    """One classifier training batch: crops ``idx`` of (M, S, S, 3) uint8 ``crops``, augmented
    (geometry, ``stain_mix`` at share ``stain_p``, colour, degradations) and normalized ->
    (B, 3, S, S) float32 on the CPU. Both ways of preparing batches (inline, workers) use it."""
    x = _to_float(crops[idx], torch.device("cpu"))
    x, _ = random_geometry(x, None, augment, generator)
    x = stain_mix(x, crop_stain[idx], stain_targets, stain_weights, stain_p, generator)
    x = random_degrade(random_colour(x, augment, generator), augment, generator)
    return normalize(x, mean, std)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed of one batch's augmentation generator when workers prepare the batches."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1, np.uint64)[0])


class EpochBatches(torch.utils.data.Dataset):
    """The classifier's training batches as a map-style data set for ``DataLoader`` workers:
    item ``(epoch, k, idx)`` is the epoch's k-th batch, crops ``idx`` augmented by
    ``augment_batch`` from a generator seeded by ``batch_seed(seed, epoch, k)``, with their
    labels: ((B, 3, S, S) float32, (B,) int64). Which worker prepares a batch changes nothing.
    """

    def __init__(self, crops: np.ndarray, labels: np.ndarray, crop_stain: torch.Tensor,
                 stain_targets: torch.Tensor, stain_weights: torch.Tensor, stain_p: float,
                 augment: AugmentParams, mean, std, seed: int) -> None:
        # tensors: the workers get them through shared memory, not as pickled copies
        self.crops, self.labels = torch.from_numpy(crops), torch.from_numpy(labels)
        self.stain = (crop_stain, stain_targets, stain_weights, stain_p)
        self.augment, self.mean, self.std, self.seed = augment, mean, std, seed

    def __getitem__(self, key: tuple[int, int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k, idx = key
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, k))
        x = augment_batch(self.crops.numpy(), idx, *self.stain, self.augment, self.mean,
                          self.std, generator)
        return x, self.labels[torch.from_numpy(idx)].long()


class EpochOrder(torch.utils.data.Sampler):
    """Keys ``(epoch, k, idx)`` of ``EpochBatches`` for the epoch set by ``set_epoch``: the
    epoch's order (drawn in the main process) cut into batches of ``batch``."""

    def __init__(self, batch: int) -> None:
        self.batch, self.epoch, self.order = batch, 0, np.empty(0, np.int64)

    def set_epoch(self, epoch: int, order: np.ndarray) -> None:
        self.epoch, self.order = epoch, order

    def __iter__(self):
        for k, i in enumerate(range(0, len(self.order), self.batch)):
            yield self.epoch, k, self.order[i : i + self.batch]

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch)


def _worker_init(_worker_id: int) -> None:
    """One thread per worker: the workers, not threads within one, share the cores."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def batch_loader(dataset: EpochBatches, batch: int, workers: int,
                 pin_memory: bool = False) -> tuple[torch.utils.data.DataLoader, EpochOrder]:
    """A ``DataLoader`` over ``dataset`` with ``workers`` (> 0) processes kept across epochs,
    and its sampler: call ``sampler.set_epoch(epoch, order)`` before iterating each epoch.

    The workers are spawned, not forked: a process forked after OpenCV ran its thread pool
    (cutting the crops does) hangs in OpenCV (seen in ``cv2.setNumThreads``)."""
    sampler = EpochOrder(batch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, prefetch_factor=4,
        pin_memory=pin_memory, persistent_workers=True, worker_init_fn=_worker_init,
        multiprocessing_context="spawn")
    return loader, sampler


@dataclass
class ClassifierCrops:
    """What a classifier trains on, as ``train_classifier`` builds it from a split.

    crops (M, S, S, 3) uint8 and labels (M,) int64 (cells of the train blocks, labelled by
    their field, then the loose crops: negatives labelled ``unidentified`` and any extra
    crops); crop_stain (M, 4), stain_targets (F, 4) and stain_weights (F,) feed
    ``augment.stain_mix``; class_weight (K,) the cross-entropy; counts (K,) crops per class;
    the validation crops, their owners (field index) and the held-out foreign crops; the
    crop geometry, LAB target (or None), red-cell scale and reference background."""

    crops: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    crop_stain: torch.Tensor
    stain_targets: torch.Tensor
    stain_weights: torch.Tensor
    class_weight: torch.Tensor
    val_crops: np.ndarray
    val_owner: np.ndarray
    val_foreign: np.ndarray
    crop_spec: CropSpec
    lab: tuple | None
    scale: dict
    reference: tuple


def classifier_crops(cfg: ClassifierConfig, train: dict, val: dict) -> ClassifierCrops:
    """The classifier's training and validation crops from the ``train`` and ``val`` splits
    (``load_splits``), with the negatives, stain features and class weights of ``cfg``.
    ``train_classifier`` trains on exactly these; ``head.refit_heads`` refits on them."""
    lab = None
    if cfg.colour_norm == "reinhard":
        lab = D.lab_stats(train["images"])
    elif cfg.colour_norm != "none":
        raise ValueError(f"unknown colour_norm {cfg.colour_norm!r}")
    crop_spec = CropSpec(margin=cfg.margin, min_side_px=cfg.min_side_px)
    tr_images = _colour_normalized(train["images"], lab)
    va_images = _colour_normalized(val["images"], lab)
    tr_crops, tr_owner = D.cell_crops(tr_images, train["masks"], crop_spec, cfg.size)
    va_crops, va_owner = D.cell_crops(va_images, val["masks"], crop_spec, cfg.size)
    tr_labels = train["labels"][tr_owner]
    scale = D.red_cell_scale(train["images"])
    reference = tuple(train["reference_background"])
    negatives = [D.background_crops(train["images"], train["masks"], crop_spec, cfg.size, cfg.seed)]
    va_foreign = np.empty((0, cfg.size, cfg.size, 3), np.uint8)
    if cfg.negatives:
        pbc = D.pbc_split(Path(cfg.negatives), cfg.seed)
        foreign, _ = D.foreign_cell_crops([p for p, _ in pbc["train"]], scale["rbc_diameter_px"],
                                          reference, crop_spec, cfg.size)
        negatives += [foreign] * cfg.negatives_repeat
        mosaics, mosaic_masks = D.foreign_mosaics(
            [p for p, _ in pbc["train"]], scale["rbc_diameter_px"], reference)
        negatives.append(D.background_crops(mosaics, mosaic_masks, crop_spec, cfg.size,
                                            cfg.seed, per_field=12))
        va_foreign, _ = D.foreign_cell_crops([p for p, _ in pbc["val"]],
                                             scale["rbc_diameter_px"], reference, crop_spec,
                                             cfg.size)
    # Crops not cut from a field's cleaned mask (negatives; extra crops): each takes the stain
    # features of its own pixels, and its own label.
    loose = np.concatenate(negatives)
    loose_labels = np.full(len(loose), D.UNIDENTIFIED_LABEL, np.int64)
    if cfg.extra_crops:
        extra = np.load(cfg.extra_crops)
        if extra["crops"].shape[1:] != (cfg.size, cfg.size, 3):
            raise ValueError(f"{cfg.extra_crops}: crops of {extra['crops'].shape[1:]}, "
                             f"not ({cfg.size}, {cfg.size}, 3)")
        loose = np.concatenate([extra["crops"], loose])
        loose_labels = np.concatenate([extra["labels"].astype(np.int64), loose_labels])
    tr_crops = np.concatenate([tr_crops, loose])
    tr_labels = np.concatenate([tr_labels, loose_labels])
    field_stain = np.stack([stain_features(im) for im in tr_images])
    crop_stain = torch.from_numpy(np.concatenate(
        [field_stain[tr_owner], np.stack([stain_features(c) for c in loose])]
        if len(loose) else [field_stain[tr_owner]]))
    # Targets drawn equally per class, so that no class's stain is the common one.
    field_labels = train["labels"]
    per_class = np.bincount(field_labels, minlength=4).astype(np.float64)
    stain_weights = torch.from_numpy(1.0 / np.maximum(per_class[field_labels], 1.0))
    stain_targets = torch.from_numpy(field_stain)
    n_out = len(CELL_OUTCOMES)
    counts = np.bincount(tr_labels, minlength=n_out).astype(np.float64)
    class_weight = torch.tensor(
        np.clip(counts.sum() / (n_out * np.maximum(counts, 1)), 0.2, 5.0), dtype=torch.float32
    )
    return ClassifierCrops(
        crops=tr_crops, labels=tr_labels, counts=counts, crop_stain=crop_stain,
        stain_targets=stain_targets, stain_weights=stain_weights, class_weight=class_weight,
        val_crops=va_crops, val_owner=va_owner, val_foreign=va_foreign, crop_spec=crop_spec,
        lab=lab, scale=scale, reference=reference)


def train_classifier(cfg: ClassifierConfig) -> Path:
    """Train MobileNetV2 on crops cut from the cleaned masks; returns the run directory.

    With ``cfg.workers == 0`` (the default) the batches are prepared inline, each augmented
    from the epoch's generator after it drew the order, exactly as before workers existed, so
    earlier recipes train as they did. With ``cfg.workers > 0`` ``DataLoader`` workers prepare
    them (``EpochBatches``), each batch from its own generator (``batch_seed``): the batches
    are then the same for any number of workers, but differ from the inline ones."""
    device, run_dir, train, val = _start_run(cfg)
    crops = classifier_crops(cfg, train, val)
    lab, crop_spec, scale, reference = crops.lab, crops.crop_spec, crops.scale, crops.reference
    tr_crops, tr_labels, counts = crops.crops, crops.labels, crops.counts
    va_crops, va_owner, va_foreign = crops.val_crops, crops.val_owner, crops.val_foreign
    mean, std = _channel_stats(tr_crops)
    init = torch.load(cfg.init, map_location="cpu", weights_only=False) if cfg.init else None
    if init is not None and "mean" in init.get("meta", {}):
        # a fine-tuned network keeps the input normalisation it learned with (and an
        # ensemble of fine-tuned members keeps one input spec)
        mean, std = init["meta"]["mean"], init["meta"]["std"]
    class_weight, n_out = crops.class_weight, len(CELL_OUTCOMES)
    model = MobileNetV2(num_classes=n_out, width=cfg.width).to(device)
    if init is not None:
        model.load_state_dict(init["model"])
    optimizer, scheduler, steps_per_epoch, start, progress = _optimiser(
        cfg, model, run_dir, len(tr_crops))
    meta = {
        "kind": "classifier",
        "config": asdict(cfg),
        "mean": mean,
        "std": std,
        "arch": {"width": cfg.width, "output_stride": 16},
        "crop": crop_spec.model_dump(),
        "size": cfg.size,
        "lab_target": None if lab is None else [lab[0].tolist(), lab[1].tolist()],
        "train_names": train["names"],
        "train_crops_per_class": counts.tolist(),
        "training_data_sha256": _training_sha256(train),
        "reference_background": list(reference),
        "scale": scale,
        "negatives": cfg.negatives or None,
    }
    if start == 0:
        _log(
            run_dir,
            {
                "train_crops": len(tr_crops),
                "val_crops": len(va_crops),
                "per_class": counts.tolist(),
                "mean": mean,
                "std": std,
            },
        )
    # a resumed run keeps the schedule its time budget fitted (saved with the scheduler)
    meta["config"]["epochs"] = min(cfg.epochs, math.ceil(
        scheduler.lr_lambdas[0].steps / steps_per_epoch))
    augment = classifier_augment(cfg.augment)
    stain = (crops.crop_stain, crops.stain_targets, crops.stain_weights, cfg.stain_mix)
    loader = sampler = None
    if cfg.workers > 0:
        loader, sampler = batch_loader(
            EpochBatches(tr_crops, tr_labels, *stain, augment, mean, std, _train_seed(cfg)),
            cfg.batch, cfg.workers, pin_memory=device.type == "cuda")
    loop_start, durations = time.time(), []
    for epoch in range(start, cfg.epochs):
        if epoch >= meta["config"]["epochs"]:
            break  # the time budget shortened the schedule
        t0 = time.time()
        gen = torch.Generator().manual_seed(_train_seed(cfg) * 100003 + epoch)
        torch.manual_seed(_train_seed(cfg) * 100003 + epoch)
        order = torch.randperm(len(tr_crops), generator=gen).numpy()
        model.train()
        total = 0.0
        if loader is not None:
            sampler.set_epoch(epoch, order)
            batches = loader
        else:
            batches = (
                (augment_batch(tr_crops, idx, *stain, augment, mean, std, gen),
                 torch.from_numpy(tr_labels[idx]))
                for idx in (order[i : i + cfg.batch] for i in range(0, len(order), cfg.batch)))
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            loss = F.cross_entropy(
                model(x), y, weight=class_weight.to(device), label_smoothing=cfg.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
        probs = predict_crops(model, va_crops, mean, std, device)
        cell_acc = float((probs.argmax(1) == val["labels"][va_owner]).mean()) if len(probs) else 0
        fields = field_predictions(probs, va_owner, len(val["labels"]), "mean")
        has = ~np.isnan(fields[:, 0])
        field_acc = float((fields[has, :4].argmax(1) == val["labels"][has]).sum() / len(has))
        foreign = predict_crops(model, va_foreign, mean, std, device)
        foreign_unidentified = (
            float((foreign.argmax(1) == D.UNIDENTIFIED_LABEL).mean()) if len(foreign) else 0.0)
        nll = (
            float(
                -np.log(
                    np.clip(probs[np.arange(len(probs)), val["labels"][va_owner]], 1e-7, 1)
                ).mean()
            )
            if len(probs)
            else 0.0
        )
        record = {
            "epoch": epoch + 1,
            "loss": round(total / len(order), 4),
            "val_field_acc": round(field_acc, 4),
            "val_cell_acc": round(cell_acc, 4),
            "val_cell_nll": round(nll, 4),
            "val_foreign_unidentified": round(foreign_unidentified, 4),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.time() - t0, 1),
        }
        durations.append(time.time() - t0)
        if cfg.time_budget_s and start == 0 and epoch + 1 in BUDGET_FIT_AFTER:
            steady = durations[1:] or durations
            epochs = fit_epochs(cfg.epochs, epoch + 1, time.time() - loop_start,
                                sum(steady) / len(steady), cfg.time_budget_s)
            meta["config"]["epochs"] = epochs
            scheduler.lr_lambdas[0].steps = steps_per_epoch * epochs
            record["epochs_in_budget"] = epochs
        progress["history"].append(record)
        _log(run_dir, record)
        # Field accuracy first; cell accuracy and foreign cells called unidentified break ties.
        score = field_acc + 0.05 * cell_acc + 0.05 * foreign_unidentified
        _checkpoint(run_dir, score, record, progress, model, optimizer, scheduler, meta, epoch)
    return run_dir

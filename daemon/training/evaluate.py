"""Evaluate the exported ONNX models end to end, exactly as the daemon runs them (torch-free).

    field -> to_tensor -> segmenter.onnx -> find_cells -> crop_cells -> classifier.onnx
          -> aggregate -> field class

On the validation blocks it picks the cell filter (threshold, area bounds: best instance-count
agreement with the cleaned masks) and the aggregation (``mean`` / ``log_mean``: best field
accuracy); it then reports on the test blocks and writes both into the manifests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from daemon.domain.classes import CLASS_CODES
from daemon.domain.manifest import (
    CellFilter,
    CropSpec,
    ModelManifest,
    load_manifest,
    write_manifest,
)
from daemon.imaging.pipeline import aggregate, crop_cells, find_cells, pad_to_multiple, to_tensor
from daemon.training import metrics as M
from daemon.training.data import load_splits, reinhard_normalize

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (40, 60, 80, 100, 120, 150)
MAX_AREA = 6000


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def segment(session, manifest: ModelManifest, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Foreground probabilities (N, H, W) for (N, H, W, 3) uint8 RGB fields (padded, cropped)."""
    height, width = images.shape[1:3]
    out = []
    for i in range(0, len(images), batch):
        chunk = np.stack(
            [pad_to_multiple(im, manifest.input.size_multiple) for im in images[i : i + batch]]
        )
        mask = session.run(None, {manifest.input.name: to_tensor(chunk, manifest.input)})[0]
        out.append(mask[:, 0, :height, :width])
    return np.concatenate(out)


def classify(session, manifest: ModelManifest, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities (M, 4) for (M, S, S, 3) uint8 crops."""
    if len(crops) == 0:
        return np.empty((0, len(manifest.classes)), np.float32)
    out = []
    for i in range(0, len(crops), batch):
        x = to_tensor(crops[i : i + batch], manifest.input)
        out.append(session.run(["probabilities"], {manifest.input.name: x})[0])
    return np.concatenate(out)


def _counts(probs: np.ndarray, cell_filter: CellFilter) -> np.ndarray:
    return np.asarray([len(find_cells(p, cell_filter)) for p in probs])


def choose_cell_filter(val_probs: np.ndarray, val_masks: np.ndarray) -> tuple[CellFilter, dict]:
    """Grid search of threshold x min area minimizing cells-per-field MAE on validation."""
    reference = _counts(
        val_masks.astype(np.float32), CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9)
    )
    best, best_mae, table = None, np.inf, []
    for threshold in THRESHOLDS:
        for min_area in MIN_AREAS:
            flt = CellFilter(threshold=threshold, min_area_px=min_area, max_area_px=MAX_AREA)
            mae = float(np.abs(_counts(val_probs, flt) - reference).mean())
            table.append({"threshold": threshold, "min_area_px": min_area, "count_mae": mae})
            if mae < best_mae - 1e-9:
                best, best_mae = flt, mae
    assert best is not None
    return best, {"grid": table, "chosen": best.model_dump(), "val_count_mae": best_mae}


def pipeline_cells(
    images: np.ndarray,
    probs: np.ndarray,
    cell_filter: CellFilter,
    crop: CropSpec,
    size: int,
    lab_target: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops (M, S, S, 3) and owner field index (M,) from segmenter probabilities."""
    crops, owners = [], []
    for index, (image, prob) in enumerate(zip(images, probs, strict=True)):
        boxes = find_cells(prob, cell_filter)
        if not boxes:
            continue
        if lab_target is not None:
            image = reinhard_normalize(image, np.asarray(lab_target[0]), np.asarray(lab_target[1]))
        crops.append(crop_cells(image, boxes, crop, size))
        owners += [index] * len(boxes)
    if not crops:
        return np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64)
    return np.concatenate(crops), np.asarray(owners, np.int64)


def fields_from_cells(probs: np.ndarray, owners: np.ndarray, n: int, method: str) -> np.ndarray:
    """(n, 4) field probabilities; rows of NaN where no cell was found."""
    out = np.full((n, 4), np.nan, np.float32)
    for index in np.unique(owners):
        out[index] = aggregate(probs[owners == index], method)
    return out


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def evaluate(
    data: str,
    models_dir: Path,
    block_size: int = 40,
    seed: int = 0,
    out_json: Path | None = None,
    update_manifests: bool = True,
    threads: int = 0,
    cache_dir: Path | None = Path("runs/cache"),
    limit_fields: int = 0,
) -> dict:
    """Run the exported pipeline on val (to choose settings) and test; returns the report."""
    seg_path, cls_path = models_dir / "segmenter.onnx", models_dir / "classifier.onnx"
    seg_manifest, cls_manifest = load_manifest(seg_path), load_manifest(cls_path)
    seg, cls = _session(seg_path, threads), _session(cls_path, threads)
    size = cls_manifest.input.size[0]
    crop = cls_manifest.crop or CropSpec()
    lab_target = getattr(cls_manifest, "lab_target", None)
    splits = load_splits(data, block_size, seed, limit_fields, cache_dir)
    val, test = splits["val"], splits["test"]
    report: dict = {
        "data": str(data),
        "block_size": block_size,
        "seed": seed,
        "n_fields": {k: len(v["names"]) for k, v in splits.items()},
    }

    # --- validation: choose the cell filter and the aggregation
    val_probs = segment(seg, seg_manifest, val["images"])
    cell_filter, search = choose_cell_filter(val_probs, val["masks"])
    report["cell_filter_search"] = {k: v for k, v in search.items() if k != "grid"}
    crops, owners = pipeline_cells(val["images"], val_probs, cell_filter, crop, size, lab_target)
    cell_probs = classify(cls, cls_manifest, crops)
    agg_scores = {}
    for method in ("mean", "log_mean"):
        fields = fields_from_cells(cell_probs, owners, len(val["labels"]), method)
        agg_scores[method] = M.classification_report(val["labels"], fields, CLASS_CODES)["accuracy"]
    method = max(agg_scores, key=lambda m: (agg_scores[m], m == "mean"))
    report["aggregation_search"] = {"val_field_accuracy": agg_scores, "chosen": method}
    report["val_field_accuracy"] = agg_scores[method]

    # --- test: segmentation
    t0 = time.perf_counter()
    test_probs = segment(seg, seg_manifest, test["images"])
    seg_seconds = time.perf_counter() - t0
    dice, iou = M.dice_iou(test_probs >= cell_filter.threshold, test["masks"])
    per_field = [
        M.dice_iou(p >= cell_filter.threshold, m)
        for p, m in zip(test_probs, test["masks"], strict=True)
    ]
    reference = _counts(
        test["masks"].astype(np.float32),
        CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9),
    )
    predicted = _counts(test_probs, cell_filter)
    report["segmenter_test"] = {
        "dice_pooled": dice,
        "iou_pooled": iou,
        "dice_mean_per_field": float(np.mean([d for d, _ in per_field])),
        "iou_mean_per_field": float(np.mean([i for _, i in per_field])),
        "cell_count": M.count_agreement(predicted, reference),
        "reference": "cleaned curators' masks (see models/README.md)",
    }

    # --- test: classification through the whole pipeline
    t0 = time.perf_counter()
    crops, owners = pipeline_cells(test["images"], test_probs, cell_filter, crop, size, lab_target)
    cell_probs = classify(cls, cls_manifest, crops)
    cls_seconds = time.perf_counter() - t0
    fields = fields_from_cells(cell_probs, owners, len(test["labels"]), method)
    report["classifier_test_field"] = M.classification_report(test["labels"], fields, CLASS_CODES)
    report["classifier_test_cell_pipeline"] = M.classification_report(
        test["labels"][owners], cell_probs, CLASS_CODES
    )
    # cells cut from the cleaned reference masks (isolates the classifier from the segmenter)
    ref_filter = CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9)
    ref_crops, ref_owners = pipeline_cells(
        test["images"], test["masks"].astype(np.float32), ref_filter, crop, size, lab_target
    )
    ref_probs = classify(cls, cls_manifest, ref_crops)
    report["classifier_test_cell_reference_masks"] = M.classification_report(
        test["labels"][ref_owners], ref_probs, CLASS_CODES
    )
    ref_fields = fields_from_cells(ref_probs, ref_owners, len(test["labels"]), method)
    report["classifier_test_field_reference_masks"] = {
        "accuracy": M.classification_report(test["labels"], ref_fields, CLASS_CODES)["accuracy"]
    }
    n_test = len(test["labels"])
    report["timing_ms_per_field"] = {
        "segmenter": 1000 * seg_seconds / n_test,
        "crop_and_classify": 1000 * cls_seconds / n_test,
        "threads": threads or "ort default",
    }
    report = _round(report)
    if out_json is not None:
        out_json.write_text(json.dumps(report, indent=2) + "\n")
    if update_manifests:
        field = report["classifier_test_field"]
        seg_manifest.cells = cell_filter
        seg_manifest.metrics = {
            "test": {
                k: report["segmenter_test"][k]
                for k in ("dice_pooled", "iou_pooled", "dice_mean_per_field")
            },
            "test_cell_count": report["segmenter_test"]["cell_count"],
            "split": f"block size {block_size}, seed {seed}",
        }
        cls_manifest.aggregation = method
        cls_manifest.metrics = {
            "test_field": {
                k: field[k] for k in ("n", "no_call", "accuracy", "macro_f1", "macro_auc_ovr")
            },
            "test_field_per_class": field["per_class"],
            "test_cell_accuracy_pipeline": report["classifier_test_cell_pipeline"]["accuracy"],
            "val_field_accuracy": report["val_field_accuracy"],
            "split": f"block size {block_size}, seed {seed}",
        }
        write_manifest(seg_manifest, seg_path.with_suffix(".json"))
        write_manifest(cls_manifest, cls_path.with_suffix(".json"))
    return report

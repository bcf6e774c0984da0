"""Evaluate the exported ONNX models end to end, exactly as the daemon runs them (torch-free).

    field as captured -> red-cell scale -> rescale -> background normalisation
          -> segmenter.onnx -> find_cells -> crop_cells -> classifier.onnx (calibrated)
          -> aggregate -> field class + review flags           (daemon.analyzer.Analyzer)

On the validation blocks it picks the cell filter (threshold, area bounds: best instance-count
agreement with the cleaned masks), the views of each crop (it alone, or with its mirror
image), the aggregation (``mean`` / ``log_mean``: best field
accuracy), the calibration temperature (least negative log-likelihood of the cells, with the
validation part of the foreign normal cells as ``unidentified``) and the frame review
threshold; it writes them into the manifests. It then reports on the test blocks: unshifted
and under every shift of ``daemon.training.shifts.SUITE`` with no µm/px given, and on the
held-out part of the foreign normal cells (per class: how many are called leukemic, with and
without a review flag), and beside them a colour-only baseline (``daemon.training.confound``)
that says how much of the class the fields' colour gives away in this data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daemon.domain.classes import CLASS_CODES, UNIDENTIFIED
from daemon.domain.manifest import (
    AcquisitionSpec,
    CellFilter,
    CropSpec,
    ModelManifest,
    RedCellScale,
    ReviewSpec,
    load_manifest,
    write_manifest,
)
from daemon.imaging.acquisition import LUMA
from daemon.imaging.pipeline import (
    MAX_VIEWS,
    aggregate,
    calibrate,
    crop_cells,
    find_cells,
    merge_views,
    pad_to_multiple,
    to_tensor,
    with_views,
)
from daemon.imaging.scale import Rescaler
from daemon.imaging.stain import StainCalibrator, reference_hue
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training import metrics as M
from daemon.training.confound import colour_baseline
from daemon.training.data import (
    foreign_cell_crops,
    load_splits,
    pbc_split,
    read_rgb,
    red_cell_scale,
    reinhard_normalize,
    slide_order,
)
from daemon.training.shifts import MAGNIFICATION, SUITE

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (40, 60, 80, 100, 120, 150)
MAX_AREA = 6000
VIEWS_MIN_GAIN_FIELDS = 2


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


def classify(session, manifest: ModelManifest, crops: np.ndarray, batch: int = 256,
             views: int = 1) -> np.ndarray:
    """Probabilities (M, C) for (M, S, S, 3) uint8 crops (uncalibrated: the graph's softmax),
    merged over ``views`` of each crop as the daemon does (``imaging.pipeline.with_views``)."""
    if len(crops) == 0:
        return np.empty((0, len(manifest.classes)), np.float32)
    crops = with_views(crops, views)
    out = []
    for i in range(0, len(crops), batch):
        x = to_tensor(crops[i : i + batch], manifest.input)
        out.append(session.run(["probabilities"], {manifest.input.name: x})[0])
    return merge_views(np.concatenate(out), views)


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
    """(n, 4) field probabilities from cells' (M, C) probabilities, as the daemon aggregates:
    over the cells called one of the four classes; NaN rows where there is none."""
    out = np.full((n, len(CLASS_CODES)), np.nan, np.float32)
    known = probs.argmax(axis=1) < len(CLASS_CODES) if len(probs) else np.zeros(0, bool)
    for index in np.unique(owners[known]):
        out[index] = aggregate(probs[(owners == index) & known][:, : len(CLASS_CODES)], method)
    return out


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


# --- calibration ------------------------------------------------------------------------------


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Temperature (0.3-5) minimising the negative log-likelihood of ``labels`` (grid, 0.01)."""
    grid = np.round(np.arange(0.3, 5.0, 0.01), 2)
    return float(grid[int(np.argmin([nll(calibrate(probs, t), labels) for t in grid]))])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """ECE over ``bins`` equal-width confidence bins, with the bins for a reliability diagram."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if not inside.any():
            continue
        gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
        ece += gap * inside.mean()
        table.append({"lo": float(lo), "hi": float(hi), "n": int(inside.sum()),
                      "accuracy": float(correct[inside].mean()),
                      "confidence": float(confidence[inside].mean())})
    return {"ece": float(ece), "n": int(len(labels)), "bins": table}


def reliability_png(before: dict, after: dict, path: Path) -> None:
    """A reliability diagram (accuracy against confidence per bin, before and after) as PNG."""
    import cv2

    size, pad = 420, 50
    img = np.full((size + 2 * pad, size + 2 * pad, 3), 255, np.uint8)

    def xy(conf: float, acc: float) -> tuple[int, int]:
        return int(pad + conf * size), int(pad + (1 - acc) * size)

    cv2.rectangle(img, (pad, pad), (pad + size, pad + size), (0, 0, 0), 1)
    cv2.line(img, xy(0, 0), xy(1, 1), (160, 160, 160), 1)
    for k in range(0, 11, 2):
        v = k / 10
        cv2.putText(img, f"{v:.1f}", (xy(v, 0)[0] - 10, pad + size + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{v:.1f}", (8, xy(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1)
    for report, colour, label, row in ((before, (40, 40, 220), "before", 0),
                                       (after, (200, 90, 20), "after", 1)):
        points = [xy(b["confidence"], b["accuracy"]) for b in report["bins"]]
        for p, q in zip(points[:-1], points[1:], strict=True):
            cv2.line(img, p, q, colour, 2)
        for p in points:
            cv2.circle(img, p, 3, colour, -1)
        cv2.putText(img, f"{label}: ECE {report['ece']:.3f}", (pad + 10, pad + 20 + 18 * row),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
    cv2.putText(img, "confidence (calibrated probability of the call)", (pad + 40, size + pad + 40),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(img, "cell accuracy", (pad, pad - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


# --- the daemon's path --------------------------------------------------------------------------


def daemon_results(analyzer: Analyzer, images: list[np.ndarray], rig: str | None = None,
                   batch: int = 16, shift: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> list[dict]:
    """Describe each (H, W, 3) uint8 RGB field as a worker would, with no µm/px given.

    ``rig=None``: every field stands alone (no running estimate to lean on, no stain
    calibration); a rig name: the fields share one running red-cell estimate and one running
    stain hue, in order, as frames of one rig do (both start empty here). ``shift`` is applied
    to each field as it is analysed (an 8x field is 64x the pixels: a batch at a time, never
    the whole set in memory).
    """
    out: list[dict] = []
    shared = Rescaler(analyzer.rescaler.model_scale)
    analyzer.stain = StainCalibrator(analyzer.stain.reference_deg)  # this rig's own history
    for start in range(0, len(images), batch):
        prepared, infos = [], []
        for image in images[start : start + batch]:
            image = shift(image) if shift is not None else image
            rescaler = shared if rig is not None else Rescaler(analyzer.rescaler.model_scale)
            scale = rescaler.resolve(image, None, rig=rig)
            frame, acquisition = analyzer.prepare(image, scale, rig)
            prepared.append(frame)
            infos.append((scale, acquisition))
        for analysis, (scale, acquisition) in zip(analyzer.analyze(prepared), infos, strict=True):
            out.append(analyzer.describe(analysis, scale, acquisition))
    return out


def stain_reference(train_images: np.ndarray, acquisition: AcquisitionSpec) -> float:
    """The models' stain hue (degrees): the median over the (background-balanced) training
    fields, measured as the daemon measures a frame's (``daemon.imaging.stain``)."""
    grey = float(np.asarray(acquisition.background_rgb, np.float32) @ LUMA)
    return reference_hue(train_images, grey)


def rig_suite(analyzer: Analyzer, raw_fields: list[np.ndarray], labels: np.ndarray) -> dict:
    """The shift suite with each row's fields as the frames of one rig, in file order: the
    rig's running red-cell scale and (when the analyzer has a stain reference) its stain
    calibration build up as the fields come. Per row: ``suite_row`` plus the rig's stain
    offset at its last frame and the share of fields turned."""
    rows = {}
    for name, shift in SUITE.items():
        results = daemon_results(analyzer, raw_fields, rig=name,
                                 shift=None if name == "none" else shift)
        acquisitions = [r["acquisition"] for r in results if r["acquisition"] is not None]
        last = acquisitions[-1].rig_stain_offset_deg if acquisitions else None
        rows[name] = {**suite_row(results, labels), "rig_stain_offset_deg": last,
                      "turned_share": float(np.mean([a.stain_turned_deg != 0.0
                                                     for a in acquisitions]))
                      if acquisitions else 0.0}
    return rows


def ruler_agreement(results: list[dict], reference: list[dict], magnification: float,
                    within: float = 0.10) -> dict:
    """Per field, the red-cell diameter measured under a shift over the same field's diameter
    unshifted times ``magnification`` (1.0: the ruler read the shift right): share within
    ``within`` of 1, and the 10th/50th/90th percentiles. Fields without a reading in either
    are counted in ``n_missing``. Each field is compared with itself because red cells differ
    between fields and patients (the spread across fields is not the ruler's error)."""
    ratios = [r["scale"].rbc_diameter_px / (u["scale"].rbc_diameter_px * magnification)
              for r, u in zip(results, reference, strict=True)
              if r["scale"] is not None and u["scale"] is not None
              and r["scale"].rbc_diameter_px and u["scale"].rbc_diameter_px]
    if not ratios:
        return {"n": 0, "n_missing": len(results)}
    values = np.asarray(ratios)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"n": len(values), "n_missing": len(results) - len(values),
            f"share_within_{round(within * 100)}pct": float((np.abs(values - 1) <= within).mean()),
            "p10": float(p10), "median": float(p50), "p90": float(p90)}


def suite_row(results: list[dict], labels: np.ndarray) -> dict:
    """Field accuracy (no call and unidentified count as wrong), review share, accuracy of the
    fields not flagged, and the estimated enlargement applied (median)."""
    called = np.asarray([CLASS_CODES.index(r["frame_class"]) if r["frame_class"] in CLASS_CODES
                         else -1 for r in results])
    flagged = np.asarray([r["needs_review"] for r in results])
    factors = [r["scale"].factor for r in results if r["scale"] is not None]
    clear = ~flagged
    return {
        "n": int(len(labels)),
        "accuracy": float((called == labels).mean()),
        "no_call": int((called < 0).sum()),
        "review_share": float(flagged.mean()),
        "accuracy_not_flagged": float((called[clear] == labels[clear]).mean()) if clear.any()
        else float("nan"),
        "median_factor": float(np.median(factors)) if factors else float("nan"),
    }


def foreign_report(results: list[dict], classes: list[str]) -> dict:
    """Per class of normal cells: leukemic frame calls, with and without a review flag."""
    leukemic = {c for c in CLASS_CODES if c != "benign"}
    per_class: dict[str, dict] = {}
    for result, cls in zip(results, classes, strict=True):
        row = per_class.setdefault(cls, {"n": 0, "leukemic": 0, "leukemic_not_flagged": 0,
                                         "benign": 0, "unidentified": 0, "no_cells": 0,
                                         "flagged": 0})
        row["n"] += 1
        frame_class = result["frame_class"]
        row["flagged"] += bool(result["needs_review"])
        if frame_class in leukemic:
            row["leukemic"] += 1
            row["leukemic_not_flagged"] += not result["needs_review"]
        elif frame_class == "benign":
            row["benign"] += 1
        elif frame_class == UNIDENTIFIED:
            row["unidentified"] += 1
        else:
            row["no_cells"] += 1
    total = {k: sum(r[k] for r in per_class.values()) for k in next(iter(per_class.values()))}
    for row in [*per_class.values(), total]:
        row["leukemic_share"] = row["leukemic"] / row["n"]
        row["leukemic_not_flagged_share"] = row["leukemic_not_flagged"] / row["n"]
    return {"per_class": per_class, "total": total}


# --- the whole evaluation -------------------------------------------------------------------------


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
    negatives: str | None = None,
    shifts: bool = True,
    views_min_gain_fields: int = VIEWS_MIN_GAIN_FIELDS,
    val_shifts: bool = False,
) -> dict:
    """Choose settings on validation, write them to the manifests, report on test; returns the
    report (also written to ``out_json``). ``views_min_gain_fields``: validation fields the
    mirror view must win by to be used. ``val_shifts``: also run the shift suite on the
    validation blocks (``val_shift_suite``), the signal for choosing between trained models
    without looking at the test blocks. ``negatives``: the foreign normal-cell sample (its
    val part joins the calibration, its held-out test part is reported)."""
    seg_path, cls_path = models_dir / "segmenter.onnx", models_dir / "classifier.onnx"
    seg_manifest, cls_manifest = load_manifest(seg_path), load_manifest(cls_path)
    seg, cls = _session(seg_path, threads), _session(cls_path, threads)
    size = cls_manifest.input.size[0]
    crop = cls_manifest.crop or CropSpec()
    lab_target = getattr(cls_manifest, "lab_target", None)
    splits = load_splits(data, block_size, seed, limit_fields, cache_dir)
    val, test = splits["val"], splits["test"]
    codes = tuple(c.code for c in cls_manifest.classes)
    report: dict = {
        "data": str(data),
        "block_size": block_size,
        "seed": seed,
        "n_fields": {k: len(v["names"]) for k, v in splits.items()},
    }
    foreign = pbc_split(Path(negatives), seed) if negatives else None
    # The models' scale is a property of their training fields and of the ruler: measured here,
    # with the daemon's own estimator, on the training blocks.
    scale = RedCellScale(**red_cell_scale(splits["train"]["images"]))
    report["model_scale"] = {**scale.model_dump(),
                             "um_per_pixel": round(scale.rbc_um / scale.rbc_diameter_px, 4)}
    for manifest in (seg_manifest, cls_manifest):
        manifest.scale = scale
        manifest.um_per_pixel = report["model_scale"]["um_per_pixel"]
    model_rbc = scale.rbc_diameter_px
    reference = seg_manifest.acquisition.background_rgb if seg_manifest.acquisition else None
    # The models' stain hue: into the segmenter manifest with the rest, so a retrained model
    # keeps per-rig stain calibration (on by default, chosen on validation, model card). The
    # fields here stand alone, so none is turned; ``rig-suite`` measures it rig by rig.
    if seg_manifest.acquisition is not None:
        report["stain_reference_deg"] = stain_reference(splits["train"]["images"],
                                                        seg_manifest.acquisition)
        seg_manifest.acquisition.stain_hue_deg = report["stain_reference_deg"]

    # --- validation: cell filter, aggregation, temperature (fields as loaded: model scale)
    val_probs = segment(seg, seg_manifest, val["images"])
    cell_filter, search = choose_cell_filter(val_probs, val["masks"])
    report["cell_filter_search"] = {k: v for k, v in search.items() if k != "grid"}
    crops, owners = pipeline_cells(val["images"], val_probs, cell_filter, crop, size, lab_target)
    f_crops = np.empty((0, size, size, 3), np.uint8)
    if foreign is not None and model_rbc and reference and UNIDENTIFIED in codes:
        f_crops, _ = foreign_cell_crops([p for p, _ in foreign["val"]], model_rbc, reference,
                                        crop, size)
    cal_labels = np.concatenate([val["labels"][owners],
                                 np.full(len(f_crops), codes.index(UNIDENTIFIED), np.int64)])
    # Per number of views (the crop; the crop and its mirror): temperature, then aggregation.
    # More views cost classifier time on every frame: they must win on validation by at least
    # VIEWS_MIN_GAIN_FIELDS fields (one field either way is noise: 0.2 points of 459).
    searches: dict[int, dict] = {}
    for views in range(1, MAX_VIEWS + 1):
        raw = classify(cls, cls_manifest, crops, views=views)
        cal = np.concatenate([raw, classify(cls, cls_manifest, f_crops, views=views)])
        t = fit_temperature(cal, cal_labels)
        cells = calibrate(raw, t)
        scores = {m: M.classification_report(
            val["labels"], fields_from_cells(cells, owners, len(val["labels"]), m),
            CLASS_CODES)["accuracy"] for m in ("mean", "log_mean")}
        searches[views] = {"raw": raw, "cal": cal, "temperature": t, "scores": scores,
                           "best": max(scores.values())}
    margin = views_min_gain_fields / max(1, len(val["labels"]))
    views = max(searches, key=lambda v: (searches[v]["best"] - (v > 1) * (margin - 1e-9), -v))
    chosen = searches[views]
    raw_val, cal_probs, temperature = chosen["raw"], chosen["cal"], chosen["temperature"]
    report["views_search"] = {"val_field_accuracy": {v: s["best"] for v, s in searches.items()},
                              "min_gain_fields": views_min_gain_fields, "chosen": views}
    report["calibration"] = {
        "temperature": temperature,
        "fitted_on": f"{len(cal_labels)} validation cells (field labels"
                     + ("; foreign normal cells as unidentified)" if len(f_crops) else ")"),
        "val_nll_before": nll(cal_probs, cal_labels),
        "val_nll_after": nll(calibrate(cal_probs, temperature), cal_labels),
    }
    val_cells = calibrate(raw_val, temperature)
    agg_scores = chosen["scores"]
    method = max(agg_scores, key=lambda m: (agg_scores[m], m == "mean"))
    report["aggregation_search"] = {"val_field_accuracy": agg_scores, "chosen": method}
    report["val_field_accuracy"] = agg_scores[method]
    # Frame review threshold: the highest that flags at most 2 % of validation fields.
    val_fields = fields_from_cells(val_cells, owners, len(val["labels"]), method)
    top = np.nan_to_num(val_fields, nan=0.0).max(axis=1)
    frame_confidence = max((t for t in np.arange(0.40, 0.91, 0.05) if (top < t).mean() <= 0.02),
                           default=0.4)
    review = ReviewSpec(frame_confidence=round(float(frame_confidence), 2))
    report["review_thresholds"] = review.model_dump()

    # --- test: segmentation against the cleaned masks (fields as loaded)
    t0 = time.perf_counter()
    test_probs = segment(seg, seg_manifest, test["images"])
    seg_seconds = time.perf_counter() - t0
    dice, iou = M.dice_iou(test_probs >= cell_filter.threshold, test["masks"])
    per_field = [
        M.dice_iou(p >= cell_filter.threshold, m)
        for p, m in zip(test_probs, test["masks"], strict=True)
    ]
    reference_counts = _counts(
        test["masks"].astype(np.float32),
        CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9),
    )
    report["segmenter_test"] = {
        "dice_pooled": dice,
        "iou_pooled": iou,
        "dice_mean_per_field": float(np.mean([d for d, _ in per_field])),
        "iou_mean_per_field": float(np.mean([i for _, i in per_field])),
        "cell_count": M.count_agreement(_counts(test_probs, cell_filter), reference_counts),
        "reference": "cleaned curators' masks (see models/README.md)",
    }

    # --- the data set's colour confound: a cell-blind baseline on the same blocks
    report["colour_confound"] = colour_baseline(
        splits["train"]["images"], splits["train"]["labels"], test["images"], test["labels"],
        list(CLASS_CODES))

    # --- test: cells, and calibration (ECE) on the test cells
    t0 = time.perf_counter()
    crops, owners = pipeline_cells(test["images"], test_probs, cell_filter, crop, size, lab_target)
    raw_test = classify(cls, cls_manifest, crops, views=views)
    cls_seconds = time.perf_counter() - t0
    test_cells = calibrate(raw_test, temperature)
    cell_labels = test["labels"][owners]
    report["classifier_test_cell_pipeline"] = M.classification_report(cell_labels, test_cells,
                                                                      codes)
    before = expected_calibration_error(raw_test, cell_labels)
    after = expected_calibration_error(test_cells, cell_labels)
    report["calibration"].update(test_ece_before=before["ece"], test_ece_after=after["ece"],
                                 test_cells=after["n"], test_bins_after=after["bins"])
    fields = fields_from_cells(test_cells, owners, len(test["labels"]), method)
    field_conf = np.nan_to_num(fields, nan=0.0)
    has = ~np.isnan(fields).any(axis=1)
    report["calibration"]["test_field_ece_after"] = expected_calibration_error(
        field_conf[has], test["labels"][has])["ece"]
    ref_filter = CellFilter(threshold=0.5, min_area_px=1, max_area_px=10**9)
    ref_crops, ref_owners = pipeline_cells(
        test["images"], test["masks"].astype(np.float32), ref_filter, crop, size, lab_target
    )
    ref_probs = calibrate(classify(cls, cls_manifest, ref_crops, views=views), temperature)
    report["classifier_test_cell_reference_masks"] = M.classification_report(
        test["labels"][ref_owners], ref_probs, codes
    )
    n_test = len(test["labels"])
    report["timing_ms_per_field"] = {
        "segmenter": 1000 * seg_seconds / n_test,
        "crop_and_classify": 1000 * cls_seconds / n_test,
        "threads": threads or "ort default",
    }

    # --- settings into the manifests; the daemon's own Analyzer from here on
    if update_manifests:
        seg_manifest.cells = cell_filter
        cls_manifest.aggregation = method
        cls_manifest.temperature = temperature
        cls_manifest.views = views
        cls_manifest.review = review
        write_manifest(seg_manifest, seg_path.with_suffix(".json"))
        write_manifest(cls_manifest, cls_path.with_suffix(".json"))
    analyzer = Analyzer(Segmenter(seg_path, "cpu", threads), Classifier(cls_path, "cpu", threads))
    analyzer.cell_filter, analyzer.aggregation = cell_filter, method
    analyzer.temperature, analyzer.review = temperature, review
    analyzer.views = views
    analyzer.rescaler = Rescaler(scale)

    # --- validation through the daemon's path under each shift: for choosing between models
    if val_shifts:
        val_fields_raw = [read_rgb(r.image) for r in val["records"]]
        report["val_shift_suite"] = {
            name: suite_row(daemon_results(analyzer, val_fields_raw,
                                           shift=None if name == "none" else shift),
                            val["labels"])
            for name, shift in SUITE.items()}

    # --- test through the daemon's path: field as captured, no µm/px, under each shift
    raw_fields = [read_rgb(r.image) for r in test["records"]]
    labels = test["labels"]
    unshifted = daemon_results(analyzer, raw_fields)
    probs = np.asarray([[r["frame_probabilities"].get(c, np.nan) for c in CLASS_CODES]
                        if r["frame_class"] in CLASS_CODES else [np.nan] * len(CLASS_CODES)
                        for r in unshifted], np.float32)
    report["classifier_test_field"] = M.classification_report(labels, probs, CLASS_CODES)
    report["classifier_test_field"]["review_share"] = float(
        np.mean([r["needs_review"] for r in unshifted]))
    reasons: dict[str, int] = {}
    for r in unshifted:
        for reason in r["review_reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
    report["classifier_test_field"]["review_reasons"] = reasons
    if shifts:
        report["shift_suite"] = {}
        for name, shift in SUITE.items():
            shifted = unshifted if name == "none" else daemon_results(analyzer, raw_fields,
                                                                      shift=shift)
            report["shift_suite"][name] = {
                **suite_row(shifted, labels),
                "ruler_vs_unshifted": ruler_agreement(shifted, unshifted,
                                                      MAGNIFICATION.get(name, 1.0))}

    # --- the held-out normal cells of another lab, at their own pixels, no µm/px
    if foreign is not None:
        paths = [p for p, _ in foreign["test"]]
        kinds = [c for _, c in foreign["test"]]
        images = [read_rgb(p) for p in paths]
        report["foreign_normal_test"] = {
            "source": str(negatives),
            "part": "held-out test part (35 % per class; never trained or tuned on)",
            "one_rig": foreign_report(daemon_results(analyzer, images, rig="foreign"), kinds),
            "each_alone": foreign_report(daemon_results(analyzer, images), kinds),
        }
    report = _round(report)
    if out_json is not None:
        out_json.write_text(json.dumps(report, indent=2) + "\n")
        reliability_png(before, after, out_json.with_name("reliability.png"))
    if update_manifests:
        field = report["classifier_test_field"]
        seg_manifest.metrics = {
            "test": {
                k: report["segmenter_test"][k]
                for k in ("dice_pooled", "iou_pooled", "dice_mean_per_field")
            },
            "test_cell_count": report["segmenter_test"]["cell_count"],
            "split": f"block size {block_size}, seed {seed}",
        }
        cls_manifest.metrics = {
            "test_field": {
                k: field[k] for k in ("n", "no_call", "accuracy", "macro_f1", "macro_auc_ovr",
                                      "review_share")
            },
            "test_field_per_class": field["per_class"],
            "test_cell_accuracy_pipeline": report["classifier_test_cell_pipeline"]["accuracy"],
            "val_field_accuracy": report["val_field_accuracy"],
            "test_ece_after_calibration": report["calibration"]["test_ece_after"],
            "shift_suite_min_accuracy": min(
                (row["accuracy"] for row in report.get("shift_suite", {}).values()),
                default=None),
            "split": f"block size {block_size}, seed {seed}",
        }
        if foreign is not None:
            cls_manifest.metrics["foreign_normal_leukemic_not_flagged_share"] = (
                report["foreign_normal_test"]["one_rig"]["total"]["leukemic_not_flagged_share"])
        write_manifest(seg_manifest, seg_path.with_suffix(".json"))
        write_manifest(cls_manifest, cls_path.with_suffix(".json"))
    return report


def run_rig_suite(data: str, models_dir: Path, split: str, stain: bool = True,
                  into: Path | None = None, update_manifest: bool = False, block_size: int = 40,
                  seed: int = 0, threads: int = 0, foreign: str | None = None,
                  order: str = "slides") -> dict:
    """``rig_suite`` on one split's blocks (``val`` to decide, ``test`` to report) with the
    shipped models as their manifests set them, stain calibration on (the models' reference
    measured on the training blocks) or off. ``into``: an eval.json to add the rows to (key
    ``<split>_rig_suite``, or ``..._uncalibrated``); ``update_manifest``: write the reference
    into the segmenter manifest (``acquisition.stain_hue_deg``). ``foreign``: instead of the
    suite, the held-out normal cells of another lab (that folder's test part) as one rig
    (key ``foreign_normal_one_rig``, or ``..._uncalibrated``). ``order``: ``slides`` (the
    split's slides in a seeded random order, as a rig meets specimens: ``data.slide_order``)
    or ``file`` (sorted by class, as measured before 2026-11-27; keys gain ``_file_order``)."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, not {split!r}")
    if order not in ("slides", "file"):
        raise ValueError(f"order must be slides or file, not {order!r}")
    seg_path, cls_path = models_dir / "segmenter.onnx", models_dir / "classifier.onnx"
    seg_manifest = load_manifest(seg_path)
    if seg_manifest.acquisition is None:
        raise ValueError(f"{seg_path}: no acquisition reference in its manifest")
    splits = load_splits(data, block_size, seed)
    reference = stain_reference(splits["train"]["images"], seg_manifest.acquisition)
    analyzer = Analyzer(Segmenter(seg_path, "cpu", threads), Classifier(cls_path, "cpu", threads))
    analyzer.stain = StainCalibrator(reference if stain else None)
    report: dict = {"stain_reference_deg": reference, "stain_calibration": stain,
                    "order": order}
    if foreign:
        held_out = pbc_split(Path(foreign), seed)["test"]
        images = [read_rgb(p) for p, _ in held_out]
        key = "foreign_normal_one_rig"
        report[key] = foreign_report(daemon_results(analyzer, images, rig="foreign"),
                                     [c for _, c in held_out])
    else:
        part = splits[split]
        key = f"{split}_rig_suite" + ("_file_order" if order == "file" else "")
        indices = (slide_order(part["records"], block_size, seed) if order == "slides"
                   else list(range(len(part["records"]))))
        report["rows"] = rig_suite(analyzer, [read_rgb(part["records"][i].image)
                                              for i in indices], part["labels"][indices])
    if into is not None:
        merged = json.loads(into.read_text()) if into.is_file() else {}
        merged["stain_reference_deg"] = reference
        merged[key + ("" if stain else "_uncalibrated")] = _round(report.get("rows")
                                                                  or report[key])
        into.write_text(json.dumps(merged, indent=2) + "\n")
    if update_manifest:
        seg_manifest.acquisition.stain_hue_deg = reference
        write_manifest(seg_manifest, seg_path.with_suffix(".json"))
    return _round(report)

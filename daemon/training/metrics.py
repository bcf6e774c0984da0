"""Evaluation metrics (numpy only): segmentation overlap, counts, multi-class classification."""

from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pooled Dice and IoU of two boolean arrays of equal shape (all pixels of all fields)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    inter = float((pred & truth).sum())
    total = float(pred.sum() + truth.sum())
    union = float((pred | truth).sum())
    dice = 2 * inter / total if total else 1.0
    iou = inter / union if union else 1.0
    return dice, iou


def count_agreement(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Cells per field, predicted (N,) vs reference (N,): MAE, exact and +-1 agreement, r."""
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    diff = pred - truth
    corr = (
        float(np.corrcoef(pred, truth)[0, 1]) if len(pred) > 1 and pred.std() and truth.std() else 0
    )
    return {
        "mae": float(np.abs(diff).mean()),
        "bias": float(diff.mean()),
        "exact": float((diff == 0).mean()),
        "within_1": float((np.abs(diff) <= 1).mean()),
        "pearson_r": corr,
        "mean_reference": float(truth.mean()),
        "mean_predicted": float(pred.mean()),
    }


def confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def auc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the rank (Mann-Whitney) statistic, ties counted half. NaN if one class only."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def classification_report(truth: np.ndarray, probs: np.ndarray, codes: tuple[str, ...]) -> dict:
    """Accuracy, per-class sensitivity/specificity/F1/one-vs-rest AUC, macro-F1, confusion.

    truth (N,) int class indices; probs (N, C) probabilities (rows of NaN count as a wrong,
    "no call" prediction and are excluded from AUC).
    """
    n = len(codes)
    valid = ~np.isnan(probs).any(axis=1)
    pred = np.where(valid, np.nan_to_num(probs, nan=-1).argmax(axis=1), -1)
    matrix = confusion(truth[valid], pred[valid], n)
    per_class = {}
    f1s = []
    for k, code in enumerate(codes):
        tp = int(((pred == k) & (truth == k)).sum())
        fn = int(((pred != k) & (truth == k)).sum())
        fp = int(((pred == k) & (truth != k)).sum())
        tn = int(((pred != k) & (truth != k)).sum())
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
        f1s.append(f1)
        per_class[code] = {
            "n": int((truth == k).sum()),
            "sensitivity": sens,
            "specificity": spec,
            "precision": prec,
            "f1": f1,
            "auc_ovr": auc_binary(probs[valid, k], truth[valid] == k),
        }
    return {
        "n": int(len(truth)),
        "no_call": int((~valid).sum()),
        "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
        "macro_f1": float(np.mean(f1s)),
        "macro_auc_ovr": _nanmean([c["auc_ovr"] for c in per_class.values()]),
        "per_class": per_class,
        "confusion": {"rows_true_cols_pred": list(codes), "matrix": matrix.tolist()},
    }

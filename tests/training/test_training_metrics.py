"""Metric helpers (numpy only)."""

from __future__ import annotations

import numpy as np

from daemon.training.metrics import auc_binary, classification_report, count_agreement, dice_iou


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)
    positive = rng.random(60) < 0.4
    pairs = [
        (1.0 if p > n else 0.5 if p == n else 0.0)
        for p in scores[positive]
        for n in scores[~positive]
    ]
    assert abs(auc_binary(scores, positive) - np.mean(pairs)) < 1e-12


def test_classification_report_counts_no_call_as_wrong() -> None:
    truth = np.array([0, 1, 2, 3, 3])
    probs = np.eye(4)[[0, 1, 2, 3, 0]].astype(float)
    probs = np.vstack([probs, np.full((1, 4), np.nan)])
    truth = np.append(truth, 2)
    report = classification_report(truth, probs, ("a", "b", "c", "d"))
    assert report["no_call"] == 1
    assert abs(report["accuracy"] - 4 / 6) < 1e-12
    assert report["per_class"]["d"]["sensitivity"] == 0.5
    assert report["confusion"]["matrix"][3] == [1, 0, 0, 1]


def test_dice_iou_and_counts() -> None:
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    dice, iou = dice_iou(a, b)
    assert abs(dice - 0.5) < 1e-12 and abs(iou - 1 / 3) < 1e-12
    counts = count_agreement(np.array([1, 2, 3]), np.array([1, 2, 5]))
    assert counts["exact"] == 2 / 3 and counts["mae"] == 2 / 3

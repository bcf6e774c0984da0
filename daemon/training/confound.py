"""How much of a field's class does its colour alone give away? A cell-blind baseline.

In a data set where each class was stained, scanned or exposed in its own batches, a model can
score well by learning the batch's colour instead of the cells' morphology, and then fails on
any other lab's slides. This baseline looks at no cell: per field it keeps four numbers (the
median Y, I and Q of the stained, non-nucleus pixels: mostly red cells and cytoplasm, and the
background grey) and calls each evaluation field by its ``k`` nearest training fields. Far
above chance means colour carries the class in this data, and a classifier's accuracy on it
is partly a colour score: a reason for colour-shift tests and for validation on another lab's
slides, not a number to be proud of.
"""

from __future__ import annotations

import numpy as np

from daemon.imaging.stain import RGB2YIQ

#: RGB -> YIQ in float32, as the fields are (the space of the shift suite's hue and saturation).
_RGB2YIQ = RGB2YIQ.astype(np.float32)
#: Grey levels below the background from which a pixel counts as stained.
STAINED_BELOW_BACKGROUND = 15.0
#: (R + B) / 2 - G at or above this: violet (a white-cell nucleus), left out.
NUCLEUS_VIOLET = 35.0
FEATURES = ("stain_y", "stain_i", "stain_q", "background_grey")


def stain_features(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB field -> (4,) float32: median Y, I, Q of its stained non-nucleus
    pixels and its background grey (95th percentile). A field with no stained pixel gives
    the background's own colour for Y, I, Q."""
    rgb = image_rgb.reshape(-1, 3).astype(np.float32)
    grey = rgb @ _RGB2YIQ[0]
    background = float(np.percentile(grey, 95))
    violet = (rgb[:, 0] + rgb[:, 2]) * 0.5 - rgb[:, 1] >= NUCLEUS_VIOLET
    stained = (background - grey > STAINED_BELOW_BACKGROUND) & ~violet
    chosen = rgb[stained] if stained.any() else rgb[grey >= background]
    yiq = np.median(chosen @ _RGB2YIQ.T, axis=0)
    return np.asarray([*yiq, background], np.float32)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, k: int = 15
                ) -> np.ndarray:
    """Majority label of the ``k`` nearest training rows (Euclidean, features standardised on
    the training rows). train_x (N, F), train_y (N,) int, x (M, F) -> (M,) int."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    a, b = (train_x - mean) / std, (x - mean) / std
    distances = ((b[:, None, :] - a[None, :, :]) ** 2).sum(axis=-1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    classes = int(train_y.max()) + 1
    return np.asarray([np.bincount(train_y[row], minlength=classes).argmax()
                       for row in nearest], np.int64)


def colour_baseline(train_images: np.ndarray, train_labels: np.ndarray,
                    eval_images: np.ndarray, eval_labels: np.ndarray, classes: list[str],
                    k: int = 15) -> dict:
    """Field accuracy of the colour-only kNN (train -> eval), per-class recall, the class
    medians of the features and the majority-class rate for comparison."""
    train_x = np.stack([stain_features(im) for im in train_images])
    eval_x = np.stack([stain_features(im) for im in eval_images])
    predicted = knn_predict(train_x, train_labels, eval_x, k)
    majority = np.bincount(eval_labels, minlength=len(classes)).max() / max(1, len(eval_labels))
    return {
        "method": f"{k}-nearest training fields on {', '.join(FEATURES)} (no cell is looked at)",
        "n": int(len(eval_labels)),
        "accuracy": float((predicted == eval_labels).mean()),
        "majority_class_rate": float(majority),
        "recall": {c: float((predicted[eval_labels == i] == i).mean())
                   for i, c in enumerate(classes) if (eval_labels == i).any()},
        "train_class_medians": {
            c: dict(zip(FEATURES, np.round(np.median(train_x[train_labels == i], axis=0), 2)
                        .tolist(), strict=True))
            for i, c in enumerate(classes) if (train_labels == i).any()},
    }

"""Acquisition normalisation: exposure and white balance from the field's own background.

Every brightfield smear field shows bare glass or plasma between the cells, which is the
white reference of that acquisition: a darker lamp, another camera's white balance or a
yellower bulb all show there first. :func:`background_rgb` measures it (the median colour of
the brightest few per cent of pixels, on a subsampled copy) and :func:`normalise_background`
applies a per-channel gain (von Kries) that brings it to the models' reference background,
stated in the manifests (``acquisition.background_rgb``). A field's stain colour is not
touched here: one field's hue says too little about its rig; a rig's running stain hue is
brought to the models' by ``daemon.imaging.stain``, saturation is left to training
augmentation, and both are watched by the drift metrics.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Gains outside this range mean the frame is not a brightfield smear field, not a lamp change.
MAX_GAIN = 3.0
MIN_GAIN = 0.6
#: ITU-R BT.601 luma weights of R, G and B: the grey level of a colour.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def background_rgb(image_rgb: np.ndarray, top_fraction: float = 0.05) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3,) float32: median colour of the brightest ``top_fraction``."""
    step = max(1, int(max(image_rgb.shape[:2]) // 256))
    sample = image_rgb[::step, ::step].reshape(-1, 3)
    grey = sample.astype(np.float32) @ LUMA
    cut = np.quantile(grey, 1.0 - top_fraction)
    return np.median(sample[grey >= cut], axis=0).astype(np.float32)


def gain_for(background: np.ndarray, reference_rgb: tuple[float, float, float] | np.ndarray
             ) -> np.ndarray:
    """(3,) measured background RGB -> (3,) float32 per-channel gain bringing it to
    ``reference_rgb``, held to [MIN_GAIN, MAX_GAIN]."""
    measured = np.maximum(np.asarray(background, np.float32), 1.0)
    return np.clip(np.asarray(reference_rgb, np.float32) / measured, MIN_GAIN, MAX_GAIN)


def background_gain(image_rgb: np.ndarray, reference_rgb: tuple[float, float, float]
                    ) -> np.ndarray:
    """(3,) float32 per-channel gain mapping the field's background to ``reference_rgb``."""
    return gain_for(background_rgb(image_rgb), reference_rgb)


def apply_gain(image_rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB times a per-channel gain, saturating at 255 (one LUT pass)."""
    levels = np.arange(256, dtype=np.float32)[:, None] * gain[None, :]
    table = np.clip(np.rint(levels), 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(image_rgb), table)


def normalise_background(image_rgb: np.ndarray, reference_rgb: tuple[float, float, float]
                         ) -> np.ndarray:
    """The field with its background brought to ``reference_rgb`` (exposure + white balance)."""
    return apply_gain(image_rgb, background_gain(image_rgb, reference_rgb))


def describe_background(background: np.ndarray) -> tuple[float, float, float]:
    """(3,) RGB background colour -> (grey level 0-255, CIELAB hue angle in degrees 0-360,
    CIELAB chroma): the drift measures of an acquisition."""
    pixel = np.clip(background, 0, 255).astype(np.uint8).reshape(1, 1, 3)
    lab = cv2.cvtColor(pixel, cv2.COLOR_RGB2LAB).astype(np.float32)[0, 0]
    a, b = float(lab[1]) - 128.0, float(lab[2]) - 128.0
    grey = float(background @ LUMA)
    hue = (np.degrees(np.arctan2(b, a)) + 360.0) % 360.0
    return round(grey, 2), round(float(hue), 2), round(float(np.hypot(a, b)), 2)

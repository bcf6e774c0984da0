"""Frames made in code for the capture tests: good, blurred, over-exposed, dark, empty."""

from __future__ import annotations

import cv2
import numpy as np

from daemon.imaging.synthetic import smear_field


def good_rgb(seed: int = 0, size: int = 224) -> np.ndarray:
    image, _ = smear_field(np.random.default_rng(seed), size=(size, size))
    return image


def noisy(image: np.ndarray, sigma: float = 3.0, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def blurred_rgb(seed: int = 0) -> np.ndarray:
    """Defocused: optical blur, then the camera's own noise on top (which blur cannot remove).

    Sigma 4 px: these fields' red cells read ~23 px against the models' ~17, so the worker
    shrinks them by ~0.75 before quality control and 3 px of blur became 2.3 px, about the
    shift suite's `defocus_sigma2` that the models still read right: focus 19-27 around the
    minimum of 25, a frame on the edge rather than one that must fail. At 4 px: 14-21."""
    return noisy(cv2.GaussianBlur(good_rgb(seed), (0, 0), 4.0), 3.0, seed)


def overexposed_rgb(seed: int = 0) -> np.ndarray:
    return np.clip(good_rgb(seed).astype(np.float32) * 1.5, 0, 255).astype(np.uint8)


def dark_rgb(seed: int = 0) -> np.ndarray:
    return (good_rgb(seed).astype(np.float32) * 0.08).astype(np.uint8)


def empty_rgb(seed: int = 0, size: int = 224) -> np.ndarray:
    """Bare slide: background and noise, no stained cell."""
    return noisy(np.full((size, size, 3), (232, 226, 238), np.uint8), 3.0, seed)


def png(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()

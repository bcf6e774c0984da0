"""Acquisition shifts for the evaluation suite: what a second rig does to a field (torch-free).

Every function maps an (H, W, 3) uint8 RGB field to a shifted one. ``SUITE`` names each
shift the evaluation runs; magnifications enlarge or shrink the field and give the daemon no
µm/px, so it must find the scale from the red cells itself.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from daemon.imaging.stain import RGB2YIQ, YIQ2RGB

Shift = Callable[[np.ndarray], np.ndarray]


def exposure(factor: float) -> Shift:
    """Lamp or exposure time: every channel times ``factor`` (clipped)."""
    return lambda im: np.clip(im.astype(np.float32) * factor, 0, 255).round().astype(np.uint8)


def chroma(hue_deg: float = 0.0, saturation: float = 1.0) -> Shift:
    """Stain and white balance: rotate the YIQ chroma plane by ``hue_deg``, scale it."""
    angle = np.radians(hue_deg)
    rot = np.array([[1, 0, 0],
                    [0, np.cos(angle) * saturation, -np.sin(angle) * saturation],
                    [0, np.sin(angle) * saturation, np.cos(angle) * saturation]])
    matrix = (YIQ2RGB @ rot @ RGB2YIQ).astype(np.float32)
    return lambda im: np.clip(im.astype(np.float32) @ matrix.T, 0, 255).round().astype(np.uint8)


def defocus(sigma: float) -> Shift:
    return lambda im: cv2.GaussianBlur(im, (0, 0), sigma)


def jpeg(quality: int) -> Shift:
    def apply(im: np.ndarray) -> np.ndarray:
        _, encoded = cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return apply


def noise(sigma: float, seed: int = 0) -> Shift:
    """Sensor noise: Gaussian, ``sigma`` of full scale, seeded per field content."""
    def apply(im: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed + int(im[::17, ::17].sum()) % 100003)
        return np.clip(im + rng.normal(0, sigma * 255, im.shape), 0, 255).astype(np.uint8)
    return apply


def magnify(factor: float) -> Shift:
    """Another objective or camera: the field enlarged by ``factor`` (cubic up, area down)."""
    def apply(im: np.ndarray) -> np.ndarray:
        h, w = im.shape[:2]
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        return cv2.resize(im, (round(w * factor), round(h * factor)), interpolation=interpolation)
    return apply


def chain(*shifts: Shift) -> Shift:
    def apply(im: np.ndarray) -> np.ndarray:
        for shift in shifts:
            im = shift(im)
        return im
    return apply


SUITE: dict[str, Shift] = {
    "none": lambda im: im,
    "exposure_x0.75": exposure(0.75),
    "exposure_x1.25": exposure(1.25),
    "hue_-8deg": chroma(hue_deg=-8),
    "hue_+8deg": chroma(hue_deg=8),
    "saturation_x0.65": chroma(saturation=0.65),
    "saturation_x1.35": chroma(saturation=1.35),
    "defocus_sigma2": defocus(2.0),
    "jpeg_q25": jpeg(25),
    "noise_3pct": noise(0.03),
    "magnify_x0.5": magnify(0.5),
    "magnify_x2": magnify(2.0),
    "magnify_x4": magnify(4.0),
    "magnify_x8": magnify(8.0),
    # a second rig as the issue measured it: 2.5x, 15 % darker, slight hue and saturation, JPEG 60
    "mix_rig": chain(magnify(2.5), exposure(0.85), chroma(hue_deg=-4, saturation=0.85), jpeg(60)),
    # defocus and noise happen before enlargement by the camera (in the optics)
    "mix_worst": chain(defocus(1.0), noise(0.02), magnify(4.0), exposure(0.8),
                       chroma(hue_deg=6, saturation=0.75), jpeg(40)),
    "mix_small_dim": chain(magnify(0.5), exposure(0.8), chroma(hue_deg=-6, saturation=1.25),
                           jpeg(50)),
}

#: How much each shift of ``SUITE`` enlarges a field: the red cells of a shifted field should
#: measure this many times their size in the same field unshifted.
MAGNIFICATION: dict[str, float] = {
    "magnify_x0.5": 0.5, "magnify_x2": 2.0, "magnify_x4": 4.0, "magnify_x8": 8.0,
    "mix_rig": 2.5, "mix_worst": 4.0, "mix_small_dim": 0.5,
}

"""Batch augmentation (torch geometry and colour, OpenCV degradations) for training.

Covers what a second rig brings after the daemon's own normalisation (background white
balance, rescaling to the models' red-cell scale): residual exposure, stain hue and
saturation, defocus, JPEG compression, sensor noise and residual scale error.

Tensor functions take images as (N, 3, H, W) float32 RGB in [0, 1] (before normalization)
and, for the segmenter, masks as (N, 1, H, W) float32 {0, 1} with the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from daemon.imaging.stain import RGB2YIQ


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random augmentation (uniform unless stated)."""

    max_rotation_deg: float = 180.0  # arbitrary rotation (plus flips)
    scale: tuple[float, float] = (0.85, 1.15)  # zoom factor, log-uniform
    brightness: float = 0.25  # exposure: multiplicative 1 +- this
    contrast: float = 0.2  # around the image mean, 1 +- this
    saturation: tuple[float, float] = (0.65, 1.35)  # chroma factor
    hue_deg: float = 8.0  # hue rotation +- this, in degrees of the YIQ chroma plane
    blur_sigma: float = 2.0  # defocus: Gaussian sigma up to this (pixels) ...
    blur_p: float = 0.3  # ... on this share of samples
    jpeg_quality: tuple[int, int] = (25, 95)  # JPEG re-encoding at a quality in this range ...
    jpeg_p: float = 0.3  # ... on this share of samples
    noise_sigma: float = 0.03  # sensor noise: Gaussian sigma up to this (of full scale) ...
    noise_p: float = 0.3  # ... on this share of samples
    resample: tuple[float, float] = (0.5, 1.0)  # classifier: detail lost to a coarser scale ...
    resample_p: float = 0.0  # ... on this share of samples (0: off)
    #: A camera compresses at its own resolution, before the daemon enlarges the frame to the
    #: models' scale: when a sample is both resampled and JPEG-coded, code it while small.
    jpeg_before_upscale: bool = False
    #: Exposure at the camera, before its own degradations, undone after them by the
    #: daemon's background gain: the crop times a factor drawn log-uniformly in this range
    #: (clipped at 255 per channel, as a sensor saturates), then resampled, blurred, noised
    #: and JPEG-coded, then times 1 / min(factor, 1) (the glass of a training crop is at the
    #: reference, so an over-exposed field's glass clips and gets a gain of about 1). A dim
    #: field's JPEG blocks and quantisation come out amplified, which ``brightness`` (applied
    #: to normalised crops, with no gain after the JPEG) never shows ...
    camera_exposure: tuple[float, float] = (0.7, 1.3)
    camera_exposure_p: float = 0.0  # ... on this share of samples (0: off)


#: The segmenter sees whole fields: the residual scale error is a zoom of 0.5-2x.
SEGMENTER_AUGMENT = AugmentParams(scale=(0.5, 2.0))
#: The classifier sees crops sized to the cell: scale error shows as lost detail.
CLASSIFIER_AUGMENT = AugmentParams(resample_p=0.4)


def classifier_augment(overrides: dict) -> AugmentParams:
    """The classifier's augmentation with a recipe's overrides (``--augment KEY=VALUE``)."""
    return replace(CLASSIFIER_AUGMENT, **overrides)


def random_geometry(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    params: AugmentParams,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random flip, rotation and scale per sample; borders are filled by reflection.

    images (N, 3, H, W), masks (N, 1, H, W) or None -> same shapes.
    """
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(params.max_rotation_deg)
    lo, hi = math.log(params.scale[0]), math.log(params.scale[1])
    scale = torch.exp(lo + torch.rand(n, generator=generator) * (hi - lo))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    if masks is not None:
        masks = F.grid_sample(
            masks, grid, mode="nearest", padding_mode="reflection", align_corners=False
        )
    return images, masks


_RGB2YIQ = torch.tensor(RGB2YIQ, dtype=torch.float32)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def random_colour(
    images: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Exposure, contrast, saturation and hue jitter per sample; (N,3,H,W) in [0,1] -> same."""
    n = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + torch.rand(n, generator=generator) * (hi - lo)

    hue = uniform(-1, 1) * math.radians(params.hue_deg)
    sat = uniform(*params.saturation)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = torch.cos(hue) * sat
    rot[:, 1, 2] = -torch.sin(hue) * sat
    rot[:, 2, 1] = torch.sin(hue) * sat
    rot[:, 2, 2] = torch.cos(hue) * sat
    matrix = _YIQ2RGB @ rot @ _RGB2YIQ  # (n, 3, 3)
    out = torch.einsum("nij,njhw->nihw", matrix, images)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - params.contrast, 1 + params.contrast)
    out = (out - mean) * contrast[:, None, None, None] + mean
    out = out * uniform(1 - params.brightness, 1 + params.brightness)[:, None, None, None]
    return out.clamp(0.0, 1.0)


def stain_mix(
    images: torch.Tensor,
    source: torch.Tensor,
    targets: torch.Tensor,
    target_weights: torch.Tensor,
    p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Give each sample, with probability ``p``, the stain of a random target field.

    In a data set where each class was stained in its own batch, colour alone names the class
    (``daemon.training.confound``). Drawing the target field at random over all classes makes
    the colour of a training crop carry no class, so the network has to learn morphology
    (in the spirit of RandStainNA, Shen et al. 2022). The move is made in YIQ (0-255 scale):
    each pixel's darkness below the background is scaled by the ratio of the two fields'
    stain darkness, and its chroma is shifted by the difference of their stain chroma in
    proportion to how stained the pixel is; glass stays as it was.

    images (N, 3, H, W) RGB in [0, 1]; source (N, 4) and targets (M, 4) field stain features
    as ``confound.stain_features`` (stain Y, I, Q and background grey); target_weights (M,)
    draw probabilities (e.g. equal per class) -> (N, 3, H, W) in [0, 1].
    """
    n = images.shape[0]
    if p <= 0 or n == 0 or len(targets) == 0:
        return images
    chosen = torch.multinomial(target_weights, n, replacement=True, generator=generator)
    apply = (torch.rand(n, generator=generator) < p).float()[:, None, None]
    src, dst = source.float(), targets[chosen].float()
    src_depth = (src[:, 3] - src[:, 0]).clamp(min=4.0)
    dst_depth = (dst[:, 3] - dst[:, 0]).clamp(min=4.0)
    gain = (dst_depth / src_depth).clamp(0.5, 2.0)
    yiq = torch.einsum("ij,njhw->nihw", _RGB2YIQ, images * 255.0)
    background = src[:, 3, None, None]
    darkness = (background - yiq[:, 0]).clamp(min=0.0)
    weight = (darkness / src_depth[:, None, None]).clamp(0.0, 1.0)
    mixed_y = background - darkness * gain[:, None, None] + (yiq[:, 0] - background).clamp(min=0)
    shift_i = (dst[:, 1] - src[:, 1])[:, None, None] * weight
    shift_q = (dst[:, 2] - src[:, 2])[:, None, None] * weight
    moved = torch.stack([mixed_y, yiq[:, 1] + shift_i, yiq[:, 2] + shift_q], dim=1)
    yiq = yiq + (moved - yiq) * apply[:, None]
    out = torch.einsum("ij,njhw->nihw", _YIQ2RGB, yiq) / 255.0
    return out.clamp(0.0, 1.0)


def random_degrade(
    images: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Per sample, each with its probability: exposure at the camera (undone after the rest,
    as the daemon's background gain does), lost detail (downsample and back), defocus blur,
    sensor noise, JPEG re-encoding. (N,3,H,W) in [0,1] -> same (via uint8, as a camera
    delivers)."""
    n, _, height, width = images.shape
    draws = torch.rand(n, 8, generator=generator).numpy()
    # Drawn only when on, so recipes without it keep their random stream (and batches).
    exposures = (camera_exposures(n, params, generator) if params.camera_exposure_p > 0
                 else np.ones(n))
    batch = (images.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    lo_q, hi_q = params.jpeg_quality

    def jpeg(image: np.ndarray, draw: float) -> np.ndarray:
        quality = int(lo_q + draw * (hi_q - lo_q))
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else image

    for i in range(n):
        image = batch[i]
        if exposures[i] != 1.0:
            image = _gain(image, exposures[i])
        coded = draws[i, 6] < params.jpeg_p
        if draws[i, 0] < params.resample_p:
            lo, hi = params.resample
            f = lo + draws[i, 1] * (hi - lo)
            small = cv2.resize(image, (max(4, round(width * f)), max(4, round(height * f))),
                               interpolation=cv2.INTER_AREA)
            if coded and params.jpeg_before_upscale:
                small, coded = jpeg(small, draws[i, 7]), False
            image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        if draws[i, 2] < params.blur_p:
            image = cv2.GaussianBlur(image, (0, 0), 0.3 + draws[i, 3] * (params.blur_sigma - 0.3))
        if draws[i, 4] < params.noise_p:
            sigma = draws[i, 5] * params.noise_sigma * 255.0
            noise = np.random.default_rng(int(draws[i, 5] * 2**31)).normal(0, sigma, image.shape)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        if coded:
            image = jpeg(image, draws[i, 7])
        if exposures[i] != 1.0:
            image = _gain(image, 1.0 / min(exposures[i], 1.0))
        batch[i] = image
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


def camera_exposures(n: int, params: AugmentParams, generator: torch.Generator) -> np.ndarray:
    """(n,) exposure factors of ``random_degrade``: log-uniform in ``params.camera_exposure`` on
    a ``camera_exposure_p`` share of samples, 1 on the rest."""
    draws = torch.rand(n, 2, generator=generator).numpy().astype(np.float64)
    lo, hi = (math.log(v) for v in params.camera_exposure)
    factors = np.exp(lo + draws[:, 1] * (hi - lo))
    return np.where(draws[:, 0] < params.camera_exposure_p, factors, 1.0)


def _gain(image: np.ndarray, gain: float) -> np.ndarray:
    """(H, W, 3) uint8 times ``gain``, rounded and clipped at 255 per channel (one LUT)."""
    table = np.clip(np.rint(np.arange(256, dtype=np.float64) * gain), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """(N,3,H,W) [0,1] -> ((x - mean) / std), matching ``daemon.pipeline.to_tensor``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    s = torch.tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - m) / s

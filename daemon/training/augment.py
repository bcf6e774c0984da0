"""Batch augmentation on CPU tensors (torch): geometry and colour jitter.

All functions take images as (N, 3, H, W) float32 RGB in [0, 1] (before normalization) and,
for the segmenter, masks as (N, 1, H, W) float32 {0, 1} transformed with the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random augmentation (uniform unless stated)."""

    max_rotation_deg: float = 180.0  # arbitrary rotation (plus flips)
    scale: tuple[float, float] = (0.85, 1.15)  # zoom factor
    brightness: float = 0.12  # multiplicative 1 +- this
    contrast: float = 0.2  # around the image mean, 1 +- this
    saturation: float = 0.2  # 1 +- this
    hue_deg: float = 12.0  # hue rotation +- this, in degrees of the YIQ chroma plane


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
    lo, hi = params.scale
    scale = lo + torch.rand(n, generator=generator) * (hi - lo)
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


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def random_colour(
    images: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter per sample; (N,3,H,W) in [0,1] -> same."""
    n = images.shape[0]

    def uniform(amount: float) -> torch.Tensor:
        return 1 + (torch.rand(n, generator=generator) * 2 - 1) * amount

    hue = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(params.hue_deg)
    sat = uniform(params.saturation)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = torch.cos(hue) * sat
    rot[:, 1, 2] = -torch.sin(hue) * sat
    rot[:, 2, 1] = torch.sin(hue) * sat
    rot[:, 2, 2] = torch.cos(hue) * sat
    matrix = _YIQ2RGB @ rot @ _RGB2YIQ  # (n, 3, 3)
    out = torch.einsum("nij,njhw->nihw", matrix, images)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(params.contrast)[:, None, None, None] + mean
    out = out * uniform(params.brightness)[:, None, None, None]
    return out.clamp(0.0, 1.0)


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """(N,3,H,W) [0,1] -> ((x - mean) / std), matching ``daemon.pipeline.to_tensor``."""
    m = torch.tensor(mean, dtype=images.dtype)[None, :, None, None]
    s = torch.tensor(std, dtype=images.dtype)[None, :, None, None]
    return (images - m) / s

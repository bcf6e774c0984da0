"""Network definitions (torch): a light U-Net segmenter and MobileNetV2 with a CAM output.

Both are written here rather than taken from torchvision (not installable beside torch 2.13
in this project's environment) and are trained from scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """U-Net with ``levels`` 2x poolings (downsampling factor ``2**levels``) and ``base`` channels.

    forward: (N, 3, H, W) normalized float -> (N, 1, H, W) foreground LOGITS; H and W must be
    multiples of ``2**levels``.
    """

    def __init__(self, base: int = 8, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        widths = [base * 2**i for i in range(levels + 1)]
        self.encoders = nn.ModuleList()
        cin = 3
        for width in widths:
            self.encoders.append(_DoubleConv(cin, width))
            cin = width
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.decoders.append(_DoubleConv(width * 2, width))
        self.head = nn.Conv2d(widths[0], 1, 1)

    @property
    def size_multiple(self) -> int:
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


class SegmenterExport(nn.Module):
    """Wraps the U-Net for export: ``image`` (N,3,H,W) -> ``mask`` (N,1,H,W) probability."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


# --- MobileNetV2 --------------------------------------------------------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with width multiplier and a configurable output stride.

    ``output_stride`` 32 is the original network; 16 (default here) keeps the last stage at
    stride 1 so a 64-px crop gives a 4x4 class-activation map instead of 2x2.
    forward: (N, 3, S, S) -> logits (N, num_classes). ``features`` gives (N, C, S/os, S/os).
    """

    # expansion t, channels c, repeats n, stride s
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int = 4,
        width: float = 0.5,
        output_stride: int = 16,
        dropout: float = 0.2,
        last_channels: int = 1280,
    ) -> None:
        super().__init__()
        cin = _make_divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn_relu6(3, cin, 3, 2)]
        stride_total = 2
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width)
            if s == 2 and stride_total >= output_stride:
                s = 1
            stride_total *= s
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.last_channels = _make_divisible(last_channels * max(1.0, width))
        layers.append(_conv_bn_relu6(cin, self.last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(pooled))


class ClassifierExport(nn.Module):
    """``crop`` (N,3,S,S) -> ``probabilities`` (N,4) softmax and ``cam`` (N,4,h,w).

    cam[n, k] = sum_c W[k, c] * features[n, c] (+ b[k]): the head applied at every position of
    the last feature map, so its spatial mean equals the logit of class k (CAM; equal to
    Grad-CAM for a global-average-pool + linear head).
    """

    def __init__(self, net: MobileNetV2) -> None:
        super().__init__()
        self.net = net

    def forward(self, crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(crop)
        weight = self.net.classifier.weight[:, :, None, None]
        cam = F.conv2d(features, weight, self.net.classifier.bias)
        logits = cam.mean(dim=(2, 3))
        return torch.softmax(logits, dim=1), cam

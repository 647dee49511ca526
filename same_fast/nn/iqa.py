"""Image-quality assessor (IQA): a light CNN that grades an image good / usable / reject.

The SAME reference loads MCF-Net (three DenseNet121 over RGB, HSV and Lab, trained on EyeQ); we
cannot ship that, so this is a small network trained on clean images (good) and graded synthetic
degradations (usable / reject by severity), see ``same_fast.train.picker``. Colour spaces are
computed on the input's device inside ``forward``, so the picker never leaves the GPU.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = ("good", "usable", "reject")


def colour_features(x01: torch.Tensor) -> torch.Tensor:
    """Network input features of ``x01`` (N, C, H, W) float in [0, 1], on its device.

    RGB (C=3): R, G, B, cos(hue)*S, sin(hue)*S, V, L/100, a/110, b/110 -> 9 channels. Hue is
    encoded on the unit circle (weighted by saturation) so red at 0 and 2*pi look alike.
    Grey (C=1): the intensity and its local contrast (|x - 5x5 mean|, x4) -> 2 channels.
    """
    if x01.shape[1] == 1:
        local = F.avg_pool2d(F.pad(x01, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        return torch.cat([x01, 4.0 * (x01 - local).abs()], 1)
    from same_fast.ops import rgb_to_hsv, rgb_to_lab

    hsv = rgb_to_hsv(x01)
    lab = rgb_to_lab(x01)
    h, s, v = hsv[:, :1], hsv[:, 1:2], hsv[:, 2:3]
    # ops.rgb_to_hsv gives hue as a fraction of a turn in [0, 1); Lab is L* in [0, 100], a*/b*
    # roughly in [-128, 128]
    turn = 2 * math.pi * h
    return torch.cat([x01, torch.cos(turn) * s, torch.sin(turn) * s, v, lab[:, :1] / 100.0,
                      lab[:, 1:] / 110.0], 1)


def feature_channels(in_channels: int) -> int:
    return 2 if in_channels == 1 else 9


class IQANet(nn.Module):
    """Classifier of image quality into ``CLASSES`` (good, usable, reject).

    forward(x01 (N, C, H, W) float in [0, 1], any size, any device) -> logits (N, 3).
    The input is resized to ``size`` x ``size`` (antialiased) first, so cost does not grow with
    the image. ``in_channels`` is 3 (fundus, colour) or 1 (ultrasound, OCT).
    """

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 4, size: int = 128
                 ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"IQANet: in_channels must be 1 or 3, got {in_channels}")
        self.config: dict[str, Any] = {"in_channels": in_channels, "width": width, "depth": depth,
                                       "size": size}
        self.in_channels = in_channels
        self.size = size
        c = feature_channels(in_channels)
        # a strided stem: quality cues (blur, haze, noise) survive at half resolution
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
        for i in range(depth):
            out = width * 2 ** min(i + 1, 3)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Conv2d(out, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        self.features = nn.Sequential(*layers)
        # mean and standard deviation pooling: sharpness and noise live in the spread of responses
        self.head = nn.Linear(2 * ch, len(CLASSES))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if x01.ndim != 4 or x01.shape[1] != self.in_channels:
            raise ValueError(f"IQANet expects (N, {self.in_channels}, H, W), got {tuple(x01.shape)}")
        x = F.interpolate(x01.float(), size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        f = self.features(colour_features(x.clamp(0, 1)))
        pooled = torch.cat([f.mean((2, 3)), f.flatten(2).std(2, correction=0)], 1)
        return self.head(pooled)

    def probs(self, x01: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 3) in [0, 1], columns ordered as ``CLASSES``."""
        return self.forward(x01).softmax(1)


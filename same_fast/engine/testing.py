"""A small stand-in enhancer with the SAMENet interface, for engine tests and benchmarks.

``TinyEnhancer(x)`` takes ``(N, C, H, W)`` float in [-1, 1] (H, W multiples of ``.multiple``) and
returns ``(image in [-1, 1], structure_logits (N, 1, H, W))`` like ``same_fast.nn.SAMENet``: one
encoder, an image decoder with U-Net skips and a structure decoder fed by the image decoder's
features. It exists so the engine can be tested without the real network's training cost.
"""
from __future__ import annotations

import torch
from torch import nn


class TinyEnhancer(nn.Module):
    """Two-level, two-decoder U-Net; ``width`` channels at the first level (default 8)."""

    def __init__(self, in_channels: int = 3, width: int = 8, norm: str = "batch") -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "width": width, "norm": norm}
        self.multiple = 4
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            elif norm == "instance":
                layers.append(nn.InstanceNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            return nn.Sequential(*layers)

        self.down1 = block(in_channels, w, 2)
        self.down2 = block(w, 2 * w, 2)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * w, in_channels, 4, 2, 1)
        self.s_up2 = nn.Sequential(nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU())
        self.s_up1 = nn.Conv2d(w + in_channels, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = self.down1(x)
        d2 = self.down2(d1)
        u2 = self.up2(d2)
        image = torch.tanh(self.up1(torch.cat([u2, d1], 1)))
        s = self.s_up2(u2)
        structure = self.s_up1(torch.cat([s, image], 1))
        return image, structure


def perturbed_state(model: nn.Module, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state with every float tensor shifted by seeded noise (adapted weights)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=g, dtype=v.dtype) * scale
            out[k] = v + noise * (v.abs().mean() + 1e-3)
        else:
            out[k] = v.clone()
    return out


def save_tiny(path: str, model: TinyEnhancer) -> None:
    """Save a stand-in as a checkpoint that ``engine.select.load_any`` (and the CLI) can load."""
    from same_fast import checkpoint

    checkpoint.save(path, model.state_dict(), {
        "architecture": "TinyEnhancer", "config": model.config, "preset": "tiny",
        "channels": model.config["in_channels"], "modality": "test", "value_range": [-1, 1],
        "provenance": {"what": "engine stand-in for tests"}})

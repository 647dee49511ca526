"""The frozen downstream vessel segmenter of the DRIVE experiments: a small U-Net trained on
clean HRF + FIVES (CC BY), cached as a safetensors checkpoint beside the results."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.config import ExperimentConfig


class VesselUNet(nn.Module):
    """A small U-Net for vessel maps: (N, 3, H, W) in [0, 1] (H, W multiples of 8) -> logits
    (N, 1, H, W)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(True),
                                 nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(True))

        self.enc = nn.ModuleList([block(3, w[0]), block(w[0], w[1]), block(w[1], w[2]),
                                  block(w[2], w[3])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2)
                                 for i in range(3)])
        self.dec = nn.ModuleList([block(2 * w[i], w[i]) for i in range(3)])
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x01 * 2 - 1
        for i, e in enumerate(self.enc):
            h = e(h if i == 0 else F.max_pool2d(h, 2))
            feats.append(h)
        for i in (2, 1, 0):
            h = self.dec[i](torch.cat([feats[i], self.up[i](h)], 1))
        return self.head(h)


def train_segmenter(steps: int, size: int, seed: int, batch: int = 8, crop: int = 128,
                    sets: tuple[str, ...] = ("HRF", "FIVES")) -> tuple[VesselUNet, dict[str, Any]]:
    """Train the vessel U-Net on the clean images of ``sets`` (default HRF + FIVES, CC BY),
    letterboxed to ``size`` so vessels have the width they have in DRIVE at that size; random
    ``crop`` patches, flips; BCE + Dice."""
    from same_fast.data import DATASETS, require_data_root
    from same_fast.train.picker import load_structure_set, random_view

    root = require_data_root()
    data = load_structure_set([root / str(DATASETS[s]["root"]) for s in sets], 3, size)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = VesselUNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    pair = torch.cat([data.images, data.masks], 1)
    losses = []
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, pair.shape[0], (batch,), generator=g)
        # native-scale patches of the letterboxed images (no zoom: vessel width as in DRIVE)
        v = _patches(pair[idx], crop, g) if crop < size else random_view(pair[idx], size, g)
        x, m = v[:, :3], v[:, 3:]
        logits = net(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * m).sum() + 1) / (p.sum() + m.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, m) + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return net, {"steps": steps, "images": len(data.names), "train_sets": list(sets),
                 "loss_first": float(np.mean(losses[:10])) if losses else None,
                 "loss_last": float(np.mean(losses[-10:])) if losses else None}


def _patches(x: torch.Tensor, crop: int, g: torch.Generator) -> torch.Tensor:
    """Native-scale ``crop`` patches of a batch, flipped at random."""
    from same_fast.adapt.augment import random_window

    h, w = x.shape[-2:]
    return torch.cat([random_window(h, w, crop, crop, g).apply(x[i:i + 1])
                      for i in range(x.shape[0])])


def cached_segmenter(cfg: ExperimentConfig, out: Path) -> tuple[VesselUNet, dict[str, Any]]:
    """The segmenter at ``cfg.segmenter`` (default ``out/vessel_segmenter.safetensors``),
    trained and saved there first when absent."""
    from same_fast import checkpoint

    path = Path(cfg.segmenter) if cfg.segmenter else out / "vessel_segmenter.safetensors"
    if path.is_file():
        tensors, meta = checkpoint.load(path)
        net = VesselUNet()
        net.load_state_dict(tensors)
        return net.eval(), {**meta.get("training", {}), "cached": str(path)}
    net, info = train_segmenter(cfg.segmenter_steps, cfg.size, cfg.seed)
    checkpoint.save(path, net.state_dict(), {"architecture": "VesselUNet", "training": info})
    return net, info



@torch.no_grad()
def segment(net: VesselUNet, x01: torch.Tensor) -> torch.Tensor:
    """Vessel probabilities (N, 1, H, W) of ``x01`` (N, 3, H, W) in [0, 1], four at a time."""
    return torch.cat([torch.sigmoid(net(x01[i:i + 4])) for i in range(0, x01.shape[0], 4)])


"""Irregular-structure detector (ISD): a convolutional VAE of anatomical structure maps.

Trained on real structure masks (vessel maps for fundus, lesion / lumen masks for ultrasound), it
reconstructs plausible maps well and implausible ones (the teacher's structure output on an image
it could not read) badly. The score of a map is its reconstruction error plus the KL term; a map
scoring above a percentile of the training scores is rejected by the picker. The SAME paper uses
a VAE-GAN; the reference code never released it. ``StructureDiscriminator`` is its adversarial
half: ``same-fast train-picker --isd-adversarial W`` trains the VAE against it (off by default, and
the shipped pickers are plain VAEs: on BUSI it lowered the ISD's AUROC; README, adaptation). The
discriminator shapes training only: scoring, the threshold and the checkpoint use the VAE alone.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _ladder_channels(owner: str, size: int, width: int) -> list[int]:
    """Channels of each stride-2 level from ``size`` down to 4 x 4 (ValueError unless ``size``
    is a power of two >= 16)."""
    levels = int(round(math.log2(size / 4))) if size > 0 else 0
    if size < 16 or 4 * 2 ** levels != size:
        raise ValueError(f"{owner}: size must be a power of two >= 16, got {size}")
    return [min(width * 2 ** i, 4 * width) for i in range(levels)]


def _down_ladder(chans: list[int]) -> nn.Sequential:
    """Stride-2 4x4 convolutions with LeakyReLU, one per entry of ``chans``, from 1 channel."""
    layers: list[nn.Module] = []
    for cin, cout in zip([1, *chans[:-1]], chans, strict=True):
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers)


class StructureVAE(nn.Module):
    """VAE over one-channel structure probability maps.

    Input: ``m`` (N, 1, H, W) float in [0, 1] (a binary mask or a sigmoid map), any size, any
    device; it is resized to ``size`` x ``size`` (area interpolation keeps thin vessels as grey).
    ``size`` must be a power of two >= 16; the encoder halves it down to 4 x 4.
    """

    def __init__(self, size: int = 128, latent: int = 32, width: int = 16, beta: float = 0.05
                 ) -> None:
        super().__init__()
        chans = _ladder_channels("StructureVAE", size, width)
        self.config: dict[str, Any] = {"size": size, "latent": latent, "width": width,
                                       "beta": beta}
        self.size, self.latent, self.beta = size, latent, beta
        self.encoder = _down_ladder(chans)
        self.top = ch = chans[-1]
        self.to_stats = nn.Linear(ch * 16, 2 * latent)
        self.from_latent = nn.Linear(latent, ch * 16)
        ups = list(reversed(chans)) + [chans[0]]
        dec: list[nn.Module] = []
        for cin, cout in zip(ups[:-1], ups[1:], strict=True):
            dec += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(chans[0], 1, 3, padding=1))

    def prepare(self, m: torch.Tensor) -> torch.Tensor:
        """Resize ``m`` (N, 1, H, W) in [0, 1] to the working size."""
        if m.ndim != 4 or m.shape[1] != 1:
            raise ValueError(f"StructureVAE expects (N, 1, H, W), got {tuple(m.shape)}")
        m = m.float().clamp(0, 1)
        if m.shape[-2:] != (self.size, self.size):
            m = F.interpolate(m, size=(self.size, self.size), mode="area")
        return m

    def encode(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.to_stats(self.encoder(m).flatten(1))
        mu, logvar = stats.chunk(2, 1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.top, 4, 4)
        return self.decoder(h)

    def forward(self, m: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample a reconstruction: (prepared input, recon logits, mu, logvar)."""
        x = self.prepare(m)
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        z = mu + eps * (0.5 * logvar).exp()
        return x, self.decode(z), mu, logvar

    def loss(self, m: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss (0-d): mean per-pixel BCE + beta * KL per latent dimension."""
        return self.elbo_loss(*self(m, generator))

    def elbo_loss(self, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                  logvar: torch.Tensor) -> torch.Tensor:
        """The loss of one ``forward`` result (0-d): mean per-pixel BCE + beta * KL per latent."""
        rec = F.binary_cross_entropy_with_logits(logits, x)
        return rec + self.beta * _kl(mu, logvar).mean()

    def reconstruct_mean(self, m: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic reconstruction from the posterior mean, what scoring compares.

        Returns (prepared input (N, 1, size, size) in [0, 1], reconstruction probabilities
        sigmoid(decode(mu)) of the same shape, mu (N, latent), logvar (N, latent)).
        """
        x = self.prepare(m)
        mu, logvar = self.encode(x)
        return x, torch.sigmoid(self.decode(mu)), mu, logvar

    @torch.no_grad()
    def score(self, m: torch.Tensor) -> torch.Tensor:
        """Implausibility of each map: (N,) float, higher = less like the training structures.

        Reconstruction error is the mean per-pixel Bernoulli KL(input || reconstruction) from the
        posterior mean (deterministic), so a soft but faithful map scores as low as a binary one;
        plus ``beta`` x the KL of the posterior (per latent dimension). The picker computes the
        same number through ``same_fast.ops.picker_weights(recon_error="bernoulli_kl")``.
        """
        x, p, mu, logvar = self.reconstruct_mean(m)
        p = p.clamp(1e-6, 1 - 1e-6)
        xc = x.clamp(1e-6, 1 - 1e-6)
        rec = (xc * (xc / p).log() + (1 - xc) * ((1 - xc) / (1 - p)).log()).flatten(1).mean(1)
        return rec + self.beta * _kl(mu, logvar)


class StructureDiscriminator(nn.Module):
    """The adversarial half of the VAE-GAN: a logit per map, real training structure vs decoded.

    The same strided-convolution ladder as the VAE's encoder (``size`` a power of two >= 16, down
    to 4 x 4), then one linear layer. Input (N, 1, size, size) in [0, 1]: what
    ``StructureVAE.prepare`` returns, or the sigmoid of the VAE's decoder output.
    """

    def __init__(self, size: int = 128, width: int = 16) -> None:
        super().__init__()
        chans = _ladder_channels("StructureDiscriminator", size, width)
        self.size = size
        self.features = _down_ladder(chans)
        self.head = nn.Linear(chans[-1] * 16, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != (self.size, self.size):
            raise ValueError(f"StructureDiscriminator expects (N, 1, {self.size}, {self.size}), "
                             f"got {tuple(m.shape)}")
        return self.head(self.features(m).flatten(1)).squeeze(1)


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, averaged over latent dimensions: (N,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(1)

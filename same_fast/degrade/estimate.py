"""Degradation parameters estimated from target images alone, for adaptation's student view.

Adaptation re-degrades the student's view so that it learns to undo more than the source model
does (Noisier2Noise: learning to map a noisier view to the teacher's output on the original
teaches denoising without clean images). Which corruption to add is best read off the clinic's
own images rather than assumed, and never taken from a test's generator:

- ``noise_sigma``: Immerkaer's fast estimate of additive noise (a Laplacian-difference kernel
  that cancels smooth structure, mean absolute response, J. Immerkaer, CVIU 1996), per channel
  inside the field of view and averaged over channels, per image; textured anatomy inflates it
  a little.
- ``TargetNoise``: the re-degradation that follows from it: Gaussian noise at the estimated
  level (times ``U(0.7, 1.3)``) and, with probability ``p_jpeg``, a mild JPEG pass (saved
  frames are often compressed). No blur (sharpening a noisy image amplifies its noise) and no
  tone change (an enhancer should keep the input's tone).
- ``target_redegradation(images, fovs)``: the preset for a set of target images (the median
  noise estimate, floored at ``floor`` so clean images still get a little).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from same_fast.degrade import ops
from same_fast.degrade.presets import Range, randn_from, uniform

_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sigma(x01: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image standard deviation of additive noise ``(N,)`` (in [0, 1] units) of
    ``(N, C, H, W)`` images: per channel inside ``fov`` (eroded by the kernel's reach), then
    the mean over channels."""
    x = x01.float()
    n_img, c = x.shape[:2]
    r = F.conv2d(x.reshape(n_img * c, 1, *x.shape[-2:]), _KERNEL.to(x).view(1, 1, 3, 3)).abs()
    r = r.view(n_img, c, *r.shape[-2:])
    m = torch.ones_like(x[:, :1]) if fov is None else (fov if fov.dim() == 4 else fov[:, None]).to(x)
    m = -F.max_pool2d(-m, 7, 1, 3)[..., 1:-1, 1:-1]  # erode: no FOV edge in the estimate
    n = (m.flatten(1).sum(1) * c).clamp_min(1.0)
    return math.sqrt(math.pi / 2) / 6 * (r * m).flatten(1).sum(1) / n


@dataclass(frozen=True)
class TargetNoise:
    """Gaussian noise of std ``sigma`` x U(``spread``) and a JPEG pass with probability
    ``p_jpeg`` at quality U(``jpeg_quality``): the student's view for a target whose noise level
    was estimated as ``sigma``."""

    sigma: float
    name: str = "target-noise"
    spread: Range = (0.7, 1.3)
    p_jpeg: float = 0.3
    jpeg_quality: Range = (40.0, 90.0)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[0], x.device
        std = (self.sigma * uniform(g, n, self.spread, d)).view(-1, 1, 1, 1)
        use_jpeg = (uniform(g, n, (0, 1), d) < self.p_jpeg).view(-1, 1, 1, 1)
        quality = uniform(g, n, self.jpeg_quality, d)
        y = (x + std * randn_from(g, x)).clamp(0, 1)
        y = torch.where(use_jpeg, ops.jpeg(y, quality), y)
        return ops.keep_fov(y, fov)


def target_redegradation(images: Sequence[torch.Tensor],
                         fovs: Sequence[torch.Tensor | None] | None = None,
                         floor: float = 0.005) -> TargetNoise:
    """``TargetNoise`` at the median noise estimate of ``images`` ((C, H, W) in [0, 1])."""
    est = []
    for i, x in enumerate(images):
        f = None if fovs is None or fovs[i] is None else fovs[i][None]
        est.append(float(noise_sigma(x[None], f)[0]))
    sigma = float(torch.tensor(est).median()) if est else floor
    return TargetNoise(sigma=max(floor, sigma))

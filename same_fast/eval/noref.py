"""No-reference image measures inside a field of view, for targets without clean images.

Two classical measures, both on the luminance (Rec. 601 weights; grey images as they are) and
both restricted to the FOV eroded by ``margin`` pixels, so the bright rim of a fundus disc
against its black surround does not dominate:

- ``laplacian_variance``: variance of the 3x3 Laplacian response (Pech-Pacheco et al., ICPR 2000,
  the usual focus/sharpness measure). It rises with sharpness and with noise alike: read it
  beside a noise estimate (``same_fast.degrade.estimate.noise_sigma``).
- ``rms_contrast``: standard deviation of the luminance (Peli, JOSA A 1990), in [0, 1] units.

Neither says whether an image is right; they say how much fine detail and how much spread it
has. Images ``(N, C, H, W)`` float in [0, 1]; masks ``(N, 1, H, W)`` (bool or {0, 1}) or None;
results ``(N,)`` float tensors on the input's device.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = (0.299, 0.587, 0.114)


def luminance(x01: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` luminance of RGB (Rec. 601) or grey images."""
    if x01.shape[1] == 1:
        return x01.float()
    w = torch.tensor(_LUMA, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    return (x01.float() * w).sum(1, keepdim=True)


def inner_mask(fov: torch.Tensor | None, like: torch.Tensor, margin: int = 8) -> torch.Tensor:
    """The FOV eroded by ``margin`` pixels (square structuring element), ``(N, 1, H, W)`` float
    in {0, 1}; everywhere when ``fov`` is None."""
    if fov is None:
        return torch.ones_like(like[:, :1], dtype=torch.float32)
    m = (fov if fov.dim() == 4 else fov[:, None]).float().to(like.device)
    if margin > 0:
        m = -F.max_pool2d(-m, 2 * margin + 1, 1, margin)
    return m


def _masked_var(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = m.flatten(1).sum(1).clamp_min(1.0)
    mean = (v * m).flatten(1).sum(1) / n
    return (((v - mean.view(-1, 1, 1, 1)) ** 2) * m).flatten(1).sum(1) / n


def laplacian_variance(x01: torch.Tensor, fov: torch.Tensor | None = None,
                       margin: int = 8) -> torch.Tensor:
    """Variance of the Laplacian of the luminance inside the eroded FOV, per image ``(N,)``
    (luminance in [0, 1] units, so a value of 1e-4 is a response spread of 0.01)."""
    y = luminance(x01)
    r = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), _LAPLACE.to(y).view(1, 1, 3, 3))
    return _masked_var(r, inner_mask(fov, x01, margin))


def rms_contrast(x01: torch.Tensor, fov: torch.Tensor | None = None,
                 margin: int = 8) -> torch.Tensor:
    """Standard deviation of the luminance inside the eroded FOV, per image ``(N,)``."""
    return _masked_var(luminance(x01), inner_mask(fov, x01, margin)).sqrt()

"""Colour spaces on the device: sRGB to HSV and to CIE Lab (D65, 2 degree observer).

Semantics follow scikit-image's ``rgb2hsv`` and ``rgb2lab`` on planar tensors:
- input (N, 3, H, W) float RGB in [0, 1] (sRGB-encoded), any device;
- HSV: h in [0, 1) (a fraction of a turn; 0 for grey pixels), s and v in [0, 1];
- Lab: L in [0, 100], a and b roughly in [-128, 128].
The torch path is differentiable; the Triton path is forward-only, so an input that requires
grad always takes the torch path.
"""
from __future__ import annotations

import torch

from same_fast.errors import InputError
from same_fast.ops._backend import resolve

# sRGB (linear) -> XYZ, and the D65 white point.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"colour conversion expects (N, 3, H, W) RGB, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError("colour conversion expects float RGB in [0, 1]")


def _use_triton(x: torch.Tensor, backend: str | None) -> bool:
    return resolve(backend, x) == "triton" and not (x.requires_grad and torch.is_grad_enabled())


def rgb_to_hsv(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] -> HSV (N, 3, H, W), float32 (float64 kept)."""
    _check(x)
    if _use_triton(x, backend):
        from same_fast.kernels import color as k

        return k.rgb_to_hsv(x)
    x = x if x.dtype == torch.float64 else x.float()
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe_d = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = (g - b) / safe_d
    h = torch.where(g == v, 2.0 + (b - r) / safe_d, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe_d, h)  # blue over green over red on ties
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = h - torch.floor(h)
    return torch.stack((h, s, v), 1)


def rgb_to_lab(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> CIE Lab (N, 3, H, W), float32 (float64 kept)."""
    _check(x)
    if _use_triton(x, backend):
        from same_fast.kernels import color as k

        return k.rgb_to_lab(x)
    x = x if x.dtype == torch.float64 else x.float()
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    m = torch.tensor(_XYZ_FROM_RGB, dtype=x.dtype, device=x.device)
    m = m / torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(3, 1)
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0),
                    7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), 1)

"""Triton kernels: sRGB to HSV and to CIE Lab (D65) on planar (N, 3, H, W) float images.

One program per BLOCK pixels; channels are planes HW apart. Forward only (the picker's colour
inputs need no gradient). Semantics match ``same_fast.ops.color`` (scikit-image's rgb2hsv and
rgb2lab). Launch through ``same_fast.ops.rgb_to_hsv`` / ``rgb_to_lab``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def rgb_to_hsv_kernel(x_ptr, out_ptr, total, HW, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n = idx // HW
    p = idx - n * HW
    base = n * 3 * HW + p
    r = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(x_ptr + base + HW, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + base + 2 * HW, mask=mask, other=0.0).to(tl.float32)
    v = tl.maximum(tl.maximum(r, g), b)
    mn = tl.minimum(tl.minimum(r, g), b)
    delta = v - mn
    safe_v = tl.where(v > 0.0, v, 1.0)
    s = tl.where(v > 0.0, delta / safe_v, 0.0)
    safe_d = tl.where(delta > 0.0, delta, 1.0)
    # The last matching channel wins, as in scikit-image: blue over green over red.
    h = (g - b) / safe_d
    h = tl.where(g == v, 2.0 + (b - r) / safe_d, h)
    h = tl.where(b == v, 4.0 + (r - g) / safe_d, h)
    h = tl.where(delta > 0.0, h / 6.0, 0.0)
    h = h - tl.floor(h)
    tl.store(out_ptr + base, h, mask=mask)
    tl.store(out_ptr + base + HW, s, mask=mask)
    tl.store(out_ptr + base + 2 * HW, v, mask=mask)


@triton.jit
def _linearise(c):
    safe = tl.maximum(c, 0.04045)
    return tl.where(c > 0.04045, tl.exp(2.4 * tl.log((safe + 0.055) / 1.055)), c / 12.92)


@triton.jit
def _lab_f(t):
    safe = tl.maximum(t, 0.008856)
    return tl.where(t > 0.008856, tl.exp(tl.log(safe) / 3.0), 7.787 * t + 16.0 / 116.0)


@triton.jit
def rgb_to_lab_kernel(x_ptr, out_ptr, total, HW, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n = idx // HW
    p = idx - n * HW
    base = n * 3 * HW + p
    r = _linearise(tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32))
    g = _linearise(tl.load(x_ptr + base + HW, mask=mask, other=0.0).to(tl.float32))
    b = _linearise(tl.load(x_ptr + base + 2 * HW, mask=mask, other=0.0).to(tl.float32))
    # sRGB -> XYZ (D65), divided by the D65 white point (0.95047, 1.0, 1.08883).
    fx = _lab_f((0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047)
    fy = _lab_f(0.212671 * r + 0.715160 * g + 0.072169 * b)
    fz = _lab_f((0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883)
    tl.store(out_ptr + base, 116.0 * fy - 16.0, mask=mask)
    tl.store(out_ptr + base + HW, 500.0 * (fx - fy), mask=mask)
    tl.store(out_ptr + base + 2 * HW, 200.0 * (fy - fz), mask=mask)


def _launch(kernel, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    n, _, h, w = x.shape
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    total = n * h * w
    kernel[(triton.cdiv(total, BLOCK),)](x, out, total, h * w, BLOCK=BLOCK)
    return out


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> float32 HSV, h in [0, 1) (fraction of a turn)."""
    return _launch(rgb_to_hsv_kernel, x)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> float32 Lab (D65): L in [0, 100], a and b about +-128."""
    return _launch(rgb_to_lab_kernel, x)

"""SSIM (Wang et al. 2004) per image, its loss, and a fused L1 + SSIM loss.

Semantics (one for every implementation):
- inputs ``x``, ``y``: (N, C, H, W) float, values in ``[0, data_range]``; H and W >= ``window``;
- window: a ``window`` x ``window`` Gaussian (``sigma``), separable, normalised to sum 1;
- padding: none ("valid"): local statistics only where the window fits, so the map is
  (H - window + 1) x (W - window + 1). This equals scikit-image's ``structural_similarity``
  (gaussian_weights=True, sigma=1.5, use_sample_covariance=False), which crops the padded border
  before averaging, and pytorch-msssim's ``ssim`` (valid convolution);
- constants C1 = (k1 * data_range)^2, C2 = (k2 * data_range)^2, k1 = 0.01, k2 = 0.03;
- result: the mean of the SSIM map over pixels and channels, one value per image, shape (N,).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from same_fast.errors import InputError


@functools.lru_cache(maxsize=16)
def _gauss_1d_cached(window: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2.0
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_1d(window: int, sigma: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised 1-D Gaussian taps, shape (window,)."""
    return _gauss_1d_cached(int(window), float(sigma), dtype, str(torch.device(device)))


def _check(x: torch.Tensor, y: torch.Tensor, window: int) -> None:
    if x.shape != y.shape:
        raise InputError(f"SSIM needs inputs of equal shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.dim() != 4:
        raise InputError(f"SSIM expects (N, C, H, W) tensors, got shape {tuple(x.shape)}")
    if window % 2 != 1 or window < 1:
        raise InputError(f"SSIM window must be a positive odd number, got {window}")
    if x.shape[-1] < window or x.shape[-2] < window:
        raise InputError(f"SSIM window {window} does not fit images of size "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise InputError("SSIM expects floating-point tensors")


def ssim_reference(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Plain torch SSIM (autograd through ``conv2d``); the semantics every path must match.

    Returns (N,) per-image SSIM in float32 (or the input dtype if float64).
    """
    _check(x, y, window)
    n, c, h, w = x.shape
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dt), y.to(dt)
    g = gaussian_1d(window, sigma, dt, x.device)
    kh, kw = g.view(1, 1, 1, window), g.view(1, 1, window, 1)

    def filt(z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(n * c, 1, h, w)
        return F.conv2d(F.conv2d(z, kh), kw)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(n, c, -1).mean(dim=(1, 2))


# --- the public front -------------------------------------------------------------------------

def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, *,
         backend: str | None = None) -> torch.Tensor:
    """Per-image SSIM, shape (N,), differentiable in ``x`` and ``y`` (semantics: module doc).

    Args:
        x, y: (N, C, H, W) float tensors in ``[0, data_range]`` on any device.
        backend: ``auto`` | ``torch`` | ``triton``.
    """
    _check(x, y, window)
    return ssim_reference(x, y, data_range, window, sigma, k1, k2)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
              sigma: float = 1.5, *, reduction: str = "mean",
              backend: str | None = None) -> torch.Tensor:
    """``1 - SSIM``; ``reduction`` "mean" gives a 0-d tensor, "none" gives (N,)."""
    loss = 1.0 - ssim(x, y, data_range, window, sigma, backend=backend)
    return _reduce(loss, reduction)


def l1_ssim_loss(x: torch.Tensor, y: torch.Tensor, w_l1: float = 0.16, w_ssim: float = 0.84,
                 data_range: float = 1.0, window: int = 11, sigma: float = 1.5, *,
                 reduction: str = "mean", backend: str | None = None) -> torch.Tensor:
    """``w_l1 * mean|x - y| / data_range + w_ssim * (1 - SSIM)`` per image (N,) or its mean.

    The default weights are Zhao et al.'s (Loss Functions for Image Restoration, 2017).
    """
    l1 = (x - y).abs().flatten(1).mean(1).float() / data_range
    loss = w_l1 * l1 + w_ssim * (1.0 - ssim(x, y, data_range, window, sigma, backend=backend))
    return _reduce(loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise InputError(f"reduction must be 'mean' or 'none', got '{reduction}'")

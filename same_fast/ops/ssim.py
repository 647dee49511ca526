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
from same_fast.ops._backend import resolve


def _gauss_1d(window: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2.0
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


_gauss_1d_cached = functools.lru_cache(maxsize=16)(_gauss_1d)


def gaussian_1d(window: int, sigma: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised 1-D Gaussian taps, shape (window,)."""
    args = (int(window), float(sigma), dtype, str(torch.device(device)))
    # Under torch.compile the taps become graph constants anyway; the cache would only be
    # traced through (with a warning), so call the plain function there.
    if torch.compiler.is_compiling():
        return _gauss_1d(*args)
    return _gauss_1d_cached(*args)


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


# --- fast torch path: banded shift-and-add filtering + analytic backward ---------------------
#
# The five local statistics are stacked as planes (5 * N * C, H, W) and filtered separably by
# shift-and-add over tiles of planes x rows sized to stay in cache: 22 fused axpy passes per
# tile, no im2col, no layout changes (several times faster than oneDNN's depthwise convolution
# on the CPU for 11-tap Gaussians). The forward also forms dSSIM/d(statistic) maps, so the
# backward is one full (transposed) filtering of at most four maps plus an elementwise combine.

_TILE_BYTES = 16 << 20  # per tile (input rows + intermediate): fits L3, few ops per call


def _taps_uncached(window: int, sigma: float) -> tuple[float, ...]:
    return tuple(gaussian_1d(window, sigma, torch.float64, "cpu").tolist())


_taps_cached = functools.lru_cache(maxsize=16)(_taps_uncached)


def _taps(window: int, sigma: float) -> tuple[float, ...]:
    return _taps_uncached(window, sigma) if torch.compiler.is_compiling() else _taps_cached(window, sigma)


def _filter_valid(z: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable valid correlation of every plane of ``z`` (K, H, W) with ``taps`` (both axes).

    Returns (K, H - win + 1, W - win + 1). Works on any device and float dtype.
    """
    k_all, h, w = z.shape
    win = len(taps)
    hv, wv = h - win + 1, w - win + 1
    out = z.new_empty(k_all, hv, wv)
    row_bytes = 2 * w * z.element_size()
    kc = max(1, min(k_all, _TILE_BYTES // (row_bytes * (8 + win - 1))))
    n = max(8, min(hv, _TILE_BYTES // (row_bytes * kc) - (win - 1)))
    tmp = z.new_empty(kc, n + win - 1, wv)
    for c0 in range(0, k_all, kc):
        c1 = min(c0 + kc, k_all)
        for r0 in range(0, hv, n):
            r1 = min(r0 + n, hv)
            m = r1 - r0
            src = z[c0:c1, r0:r0 + m + win - 1]
            a = tmp[:c1 - c0, :m + win - 1]
            torch.mul(src[..., 0:wv], taps[0], out=a)
            for j in range(1, win):
                a.add_(src[..., j:j + wv], alpha=taps[j])
            o = out[c0:c1, r0:r1]
            torch.mul(a[:, 0:m], taps[0], out=o)
            for i in range(1, win):
                o.add_(a[:, i:i + m], alpha=taps[i])
    return out


class _SSIMFunction(torch.autograd.Function):
    """Per-image SSIM (N,) with an analytic backward (float32 or float64 maths)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, data_range: float, window: int,
                sigma: float, k1: float, k2: float) -> torch.Tensor:
        n, c, h, w = x.shape
        nc, hv, wv = n * c, h - window + 1, w - window + 1
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xp = x.detach().to(dt).reshape(nc, h, w)
        yp = y.detach().to(dt).reshape(nc, h, w)
        taps = _taps(window, sigma)
        z = torch.empty(5, nc, h, w, dtype=dt, device=x.device)
        z[0].copy_(xp)
        z[1].copy_(yp)
        torch.mul(xp, xp, out=z[2])
        torch.mul(yp, yp, out=z[3])
        torch.mul(xp, yp, out=z[4])
        st = _filter_valid(z.view(5 * nc, h, w), taps).view(5, nc, hv, wv)
        del z
        mx, my, exx, eyy, exy = st.unbind(0)
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        mxy = mx * my
        a1 = mxy.mul(2).add_(c1)
        a2 = exy.sub_(mxy).mul_(2).add_(c2)
        b1 = (mx * mx).add_(my * my)
        b2 = exx.add_(eyy).sub_(b1).add_(c2)
        b1.add_(c1)
        inv = (b1 * b2).reciprocal_()
        s = a1 * a2
        s.mul_(inv)
        out = s.view(n, c * hv * wv).sum(1) / (c * hv * wv)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_x or need_y:
            # dS/d(statistic), ordered (d/dmx, d/dexx = d/deyy, d/dexy, d/dmy) so that the maps
            # either input needs are one contiguous slice. The mean's 1/(C Hv Wv) and the
            # upstream gradient are applied in backward.
            d = torch.empty(4, nc, hv, wv, dtype=dt, device=x.device)
            p_e = torch.div(s, b2, out=d[1]).neg_()
            torch.mul(a1, inv, out=d[2]).mul_(2)
            t1 = a2.sub_(a1).mul_(inv).mul_(2)                  # 2 (A2 - A1) / (B1 B2)
            t2 = s.div_(b1).add_(p_e).mul_(-2)                  # 2 S (1/B2 - 1/B1)
            if need_x:
                torch.mul(my, t1, out=d[0]).addcmul_(mx, t2)
            if need_y:
                torch.mul(mx, t1, out=d[3]).addcmul_(my, t2)
            d = d if need_x and need_y else (d[0:3] if need_x else d[1:4])
            ctx.save_for_backward(xp, yp, d)
        ctx.meta = (n, c, h, w, taps, x.dtype, y.dtype)
        return out.to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        n, c, h, w, taps, x_dtype, y_dtype = ctx.meta
        xp, yp, d = ctx.saved_tensors
        win = len(taps)
        nc, hv, wv, p = n * c, h - win + 1, w - win + 1, win - 1
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = (grad_out.to(d.dtype) / (c * hv * wv)).repeat_interleave(c).view(1, nc, 1, 1)
        k = d.shape[0]
        # The adjoint of the valid filter is the full one: zero-pad by win - 1, filter validly.
        buf = torch.zeros(k, nc, hv + 2 * p, wv + 2 * p, dtype=d.dtype, device=d.device)
        torch.mul(d, scale, out=buf[:, :, p:p + hv, p:p + wv])
        full = _filter_valid(buf.view(k * nc, hv + 2 * p, wv + 2 * p), taps).view(k, nc, h, w)
        del buf

        def back(a: torch.Tensor, dm: torch.Tensor, de: torch.Tensor, dexy: torch.Tensor,
                 b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            # dL/da = F^T(dS/dm) + 2 a F^T(dS/de) + b F^T(dS/dexy)
            gz = dm.addcmul_(a, de, value=2.0).addcmul_(b, dexy)
            return gz.view(n, c, h, w).to(dtype)

        gx = gy = None
        if need_x and need_y:
            gy = back(yp, full[3], full[1], full[2], xp, y_dtype)
            gx = back(xp, full[0], full[1], full[2], yp, x_dtype)
        elif need_x:
            gx = back(xp, full[0], full[1], full[2], yp, x_dtype)
        else:
            gy = back(yp, full[2], full[0], full[1], xp, y_dtype)
        return gx, gy, None, None, None, None, None


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
    if resolve(backend, x, y) == "triton":
        from same_fast.kernels.ssim import ssim_triton  # late: triton is optional

        return ssim_triton(x, y, gaussian_1d(window, sigma, torch.float32, x.device),
                           data_range, k1, k2)
    return _SSIMFunction.apply(x, y, float(data_range), int(window), float(sigma), float(k1),
                               float(k2))


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
    _check(x, y, window)
    if resolve(backend, x, y) == "triton":
        # One fused forward and one backward pass for both terms.
        from same_fast.kernels.ssim import ssim_l1_triton

        s, l1 = ssim_l1_triton(x, y, gaussian_1d(window, sigma, torch.float32, x.device),
                               data_range)
    else:
        l1 = (x - y).abs().flatten(1).mean(1).float()
        s = ssim(x, y, data_range, window, sigma, backend="torch")
    loss = w_l1 * l1 / data_range + w_ssim * (1.0 - s)
    return _reduce(loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise InputError(f"reduction must be 'mean' or 'none', got '{reduction}'")


class SSIMLoss(torch.nn.Module):
    """Module front of :func:`l1_ssim_loss`: ``w_l1 * L1 + w_ssim * (1 - SSIM)``, mean over N.

    The defaults (w_l1=0, w_ssim=1) give the plain SSIM loss. Inputs (N, C, H, W) in
    ``[0, data_range]``.
    """

    def __init__(self, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
                 w_l1: float = 0.0, w_ssim: float = 1.0, backend: str | None = None) -> None:
        super().__init__()
        self.data_range, self.window, self.sigma = data_range, window, sigma
        self.w_l1, self.w_ssim, self.backend = w_l1, w_ssim, backend

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l1_ssim_loss(x, y, self.w_l1, self.w_ssim, self.data_range, self.window,
                            self.sigma, backend=self.backend)

"""Batched building blocks of the degradations: per-sample blur, blobs, rings, colour jitter.

Every function takes ``(N, C, H, W)`` float tensors in [0, 1] on any device plus per-sample
parameters as ``(N,)`` tensors on the same device, and returns a tensor of the same shape.
Pixel-unit parameters (sigmas, radii) are in pixels of the tensor given; callers scale them.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# ITU-R 601 luma weights, as PIL's ImageEnhance uses for contrast and colour.
_LUMA = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 1, H, W)`` luma (the channel itself when C != 3)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness``: ``x * f`` per sample."""
    return x * _col(f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with the image's mean luma by factor ``f``."""
    m = luminance(x).mean((2, 3), keepdim=True)
    return m + _col(f) * (x - m)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Color``: blend with the per-pixel luma by factor ``f`` (RGB only)."""
    if x.shape[1] != 3:
        return x
    g = luminance(x)
    return g + _col(f) * (x - g)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(N,)`` sigmas -> ``(N, 2*radius+1)`` normalised 1-D Gaussians (sigma 0 = identity)."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (pixels), edges replicated.

    The kernel radius is 3 x the largest sigma in the batch (capped by the image size), so one
    grouped convolution serves the whole batch. When every sigma is above 6 px (and not
    ``exact``), the blur runs on a 2^k times smaller image with the variance of the area
    downsampling subtracted, then is upsampled bilinearly: the same smoothing (mean absolute
    difference ~1e-3 of the range, a few percent at the peak of a point source) at a fraction of
    the cost (large-sigma blurs are the hot spot of source training on the CPU).
    """
    n, c, h, w = x.shape
    smin = float(sigma.min()) if sigma.numel() else 0.0
    f = 1
    while not exact and smin / (2 * f) >= 3.0 and min(h, w) // (2 * f) >= 16:
        f *= 2
    if f > 1:
        small = F.avg_pool2d(x, f, f, ceil_mode=True)
        # area averaging over f pixels has variance (f^2 - 1) / 12 (pixels of x)
        s_small = torch.sqrt((sigma.float() ** 2 - (f * f - 1) / 12.0).clamp_min(1e-6)) / f
        y = blur(small, s_small, exact=True)
        return F.interpolate(y, scale_factor=float(f), mode="bilinear",
                             align_corners=False)[..., :h, :w]
    smax = float(sigma.max()) if sigma.numel() else 0.0
    radius = min(int(math.ceil(3 * smax)), max(h, w) - 1)
    if radius < 1:
        return x
    k = gaussian_kernels(sigma.to(x.device), radius).to(x.dtype)  # (N, K)
    return separable(x, k, k)


def separable(x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Per-sample separable filter: ``kx`` along rows and ``ky`` along columns, ``(N, K)`` odd
    taps each (the two may differ in length), edges replicated."""
    n, c, h, w = x.shape
    rx, ry = kx.shape[1] // 2, ky.shape[1] // 2
    y = F.pad(x.reshape(1, n * c, h, w), (rx, rx, 0, 0), mode="replicate")
    # one kernel per (sample, channel) group
    y = F.conv2d(y, kx.repeat_interleave(c, 0).view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, ry, ry), mode="replicate")
    y = F.conv2d(y, ky.repeat_interleave(c, 0).view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def anisotropic_blur(x: torch.Tensor, sigma_y: torch.Tensor, sigma_x: torch.Tensor
                     ) -> torch.Tensor:
    """Gaussian blur with per-sample sigmas (pixels) along columns (``sigma_y``) and rows
    (``sigma_x``), radius 3 x the largest of each (capped by the image), edges replicated."""
    h, w = x.shape[-2:]
    ry = min(int(math.ceil(3 * float(sigma_y.max()))), h - 1) if sigma_y.numel() else 0
    rx = min(int(math.ceil(3 * float(sigma_x.max()))), w - 1) if sigma_x.numel() else 0
    if max(rx, ry) < 1:
        return x
    ky = gaussian_kernels(sigma_y.to(x.device), max(ry, 0)).to(x.dtype)
    kx = gaussian_kernels(sigma_x.to(x.device), max(rx, 0)).to(x.dtype)
    return separable(x, kx, ky)


def box_gaussian_blur(x: torch.Tensor, ksize: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """OpenCV-style ``GaussianBlur(ksize, sigma)``: a Gaussian truncated to ``ksize`` taps.

    ``ksize`` (N,) odd integers; with a large sigma this is close to a box blur of that size.
    """
    n, c, h, w = x.shape
    radius = min(int(ksize.max()) // 2, max(h, w) - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.to(x.device).float().clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= (ksize.to(x.device).view(-1, 1) // 2))
    k = (k / k.sum(1, keepdim=True)).to(x.dtype)
    return separable(x, k, k)


def pillbox_blur(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Defocus blur: each sample convolved with a disc (pillbox) of its own ``radius`` (pixels,
    ``(N,)``; edges antialiased over one pixel, radius 0 = identity), edges replicated."""
    n, c, h, w = x.shape
    r_max = min(int(math.ceil(float(radius.max()))) + 1, max(h, w) - 1)
    if r_max < 1:
        return x
    t = torch.arange(-r_max, r_max + 1, device=x.device, dtype=torch.float32)
    dist = torch.sqrt(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2)
    k = (radius.to(x.device).float().view(-1, 1, 1) + 0.5 - dist).clamp(0, 1)
    k = k / k.sum((1, 2), keepdim=True)
    k = k.repeat_interleave(c, 0)[:, None].to(x.dtype)
    xp = F.pad(x.reshape(1, n * c, h, w), (r_max,) * 4, mode="replicate")
    return F.conv2d(xp, k, groups=n * c).view(n, c, h, w)


def grid(n_h: int, n_w: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(1, 1, H, 1)`` and ``(1, 1, 1, W)`` in pixels."""
    yy = torch.arange(n_h, device=device, dtype=torch.float32).view(1, 1, -1, 1) + 0.5
    xx = torch.arange(n_w, device=device, dtype=torch.float32).view(1, 1, 1, -1) + 0.5
    return yy, xx


def distance(h: int, w: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Distance (pixels) of every pixel to per-sample centres ``cy``, ``cx`` (pixels): (N,1,H,W)."""
    yy, xx = grid(h, w, cy.device)
    return torch.sqrt((yy - _col(cy)) ** 2 + (xx - _col(cx)) ** 2)


def gaussian_blobs(h: int, w: int, cy: torch.Tensor, cx: torch.Tensor, radius: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """Sum of smooth blobs: ``(N, K)`` centres/radii (pixels)/weights -> ``(N, 1, H, W)``.

    A blob is ``weight * exp(-d^2 / (2 r^2))``; entries with weight 0 are absent, which lets
    every sample have a different number of blobs in one batched call.
    """
    yy, xx = grid(h, w, cy.device)  # (1,1,H,1), (1,1,1,W)
    n, k = cy.shape
    dy2 = (yy.view(1, 1, h, 1) - cy.view(n, k, 1, 1)) ** 2
    dx2 = (xx.view(1, 1, 1, w) - cx.view(n, k, 1, 1)) ** 2
    r2 = (2 * radius.clamp_min(1e-3) ** 2).view(n, k, 1, 1)
    # separable: exp(-(dy2+dx2)/r2) = exp(-dy2/r2) * exp(-dx2/r2); summed over blobs by einsum
    gy = torch.exp(-dy2 / r2) * weight.view(n, k, 1, 1)
    gx = torch.exp(-dx2 / r2)
    return torch.einsum("nkhi,nkiw->nhw", gy, gx).unsqueeze(1)


def keep_fov(y: torch.Tensor, fov: torch.Tensor | None) -> torch.Tensor:
    """Zero everything outside the field of view (``fov`` (N,1,H,W) or (N,H,W), bool or 0/1)."""
    if fov is None:
        return y
    m = fov.to(device=y.device)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    return y * (m > 0.5).to(y.dtype)


def fov_mean(x: torch.Tensor, fov: torch.Tensor | None) -> torch.Tensor:
    """Each channel's mean inside the field of view (the whole frame without one), (N, C, 1, 1);
    ``fov`` as ``keep_fov`` takes it. An empty field of view gives 0."""
    if fov is None:
        return x.mean((2, 3), keepdim=True)
    m = fov.to(device=x.device)
    m = (m.unsqueeze(1) if m.dim() == 3 else m) > 0.5
    m = m.to(x.dtype)
    return (x * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)


# JPEG's example quantisation tables (ITU-T T.81 Annex K), luminance and chrominance.
_JPEG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
              14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
              18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_JPEG_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def jpeg_tables(quality: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 8, 8)`` luminance and chrominance tables for qualities 1-100 (the IJG scaling)."""
    q = quality.clamp(1, 100).view(-1, 1, 1, 1)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    base = torch.tensor((_JPEG_LUMA, _JPEG_CHROMA), dtype=torch.float32,
                        device=quality.device).view(1, 2, 8, 8)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def dct8_matrix(device: torch.device) -> torch.Tensor:
    """The 8x8 orthonormal DCT-II matrix JPEG codes blocks with."""
    k = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * k.view(1, 8) + 1) * k.view(8, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] = m[0] / math.sqrt(2)
    return m  # orthonormal DCT-II: coefficients = m @ block @ m.T


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG compression and decompression per sample, on the device.

    Colour goes through YCbCr with 4:2:0 chroma (2x2 average, nearest back); each 8x8 block of
    the level-shifted planes is DCT'd, quantised with the sample's tables and reconstructed.
    One channel is coded as luminance alone. Same shape and range; ``quality`` (N,) in 1-100.
    """
    n, c, h, w = x.shape
    d = x.device
    v = x.float() * 255.0
    if c == 3:
        r, g, b = v[:, 0], v[:, 1], v[:, 2]
        planes = [0.299 * r + 0.587 * g + 0.114 * b,
                  128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                  128 + 0.5 * r - 0.418688 * g - 0.081312 * b]
    else:
        planes = [v[:, i] for i in range(c)]
    tables = jpeg_tables(quality.to(d).float())
    m = dct8_matrix(d)
    out = []
    for i, p in enumerate(planes):
        chroma = c == 3 and i > 0
        if chroma:
            p = F.avg_pool2d(F.pad(p[:, None], (0, w % 2, 0, h % 2), mode="replicate"), 2)[:, 0]
        ph, pw = p.shape[-2:]
        p = F.pad(p[:, None], (0, (-pw) % 8, 0, (-ph) % 8), mode="replicate")[:, 0] - 128.0
        bh, bw = p.shape[-2] // 8, p.shape[-1] // 8
        blocks = p.view(n, bh, 8, bw, 8).permute(0, 1, 3, 2, 4)  # (N, bh, bw, 8, 8)
        t = tables[:, 1 if chroma else 0].view(n, 1, 1, 8, 8)
        coef = torch.round((m @ blocks @ m.T) / t) * t
        rec = (m.T @ coef @ m).permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8) + 128.0
        rec = rec[:, :ph, :pw]
        if chroma:
            rec = rec.repeat_interleave(2, -2).repeat_interleave(2, -1)[:, :h, :w]
        out.append(rec)
    if c == 3:
        y, cb, cr = out[0], out[1] - 128, out[2] - 128
        out = [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb]
    return (torch.stack(out, 1) / 255.0).clamp(0, 1).to(x.dtype)


def shift_columns(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move every column down by ``shift`` ``(N, W)`` whole pixels (negative: up), edges
    replicated: an A-scan displaced along the beam, as by axial eye motion."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    idx = (rows - shift.to(x.device).long().view(n, 1, 1, w)).clamp(0, h - 1)
    return torch.gather(x, 2, idx.expand(n, c, h, w))


def gamma_speckle(z: torch.Tensor, looks: torch.Tensor) -> torch.Tensor:
    """Unit-mean multiplicative speckle of ``looks`` (``(N,)``, >= 1) looks from a standard
    normal field ``z``: the Wilson-Hilferty cube of a normal, which follows the Gamma(L, 1/L)
    law of L-look intensity speckle closely (exponential at L = 1, variance 1 / L)."""
    a = (1.0 / (9.0 * looks.float().clamp_min(1.0))).view(-1, 1, 1, 1).to(z.device, z.dtype)
    s = (1.0 - a + z * a.sqrt()).clamp_min(0.0) ** 3
    return s / s.mean((1, 2, 3), keepdim=True).clamp_min(1e-6)

"""Triton kernels for per-image SSIM (valid padding, Gaussian window) and L1, forward and
backward, so ``l1_ssim_loss`` costs one forward and one backward pass.

Forward: one pass. Each program owns a BH x BW tile of one (image, channel) plane. It adds the
tile's |x - y| to an L1 partial sum and, where the tile lies in the valid SSIM map, accumulates
the five local statistics (mu_x, mu_y, E[x^2], E[y^2], E[xy]) over the WIN x WIN Gaussian window
straight from the inputs, writes the tile's sum of SSIM values to a partial-sum buffer (summed
deterministically afterwards) and, when a gradient is needed, the four maps dS/d(mu_x),
dS/d(E[x^2]) (= dS/d(E[y^2])), dS/d(E[xy]), dS/d(mu_y).

Backward: one more pass. Each program owns a tile of input pixels and gathers the four maps
through the (symmetric) window: dL/dx = s * (F^T dmx + 2 x F^T de + y F^T dexy) + t sign(x - y),
with s and t the upstream gradients of SSIM and L1 over C * Hv * Wv and C * H * W. Maths in
float32 whatever the input dtype.

Semantics match ``same_fast.ops.ssim_reference``; launch through ``same_fast.ops.ssim`` and
``same_fast.ops.l1_ssim_loss``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BH = 16
BW = 32


@triton.jit
def ssim_fwd_kernel(x_ptr, y_ptr, g_ptr, part_ptr, l1_ptr, d_ptr, H, W, HV, WV, C1, C2,
                    NEED_GRAD: tl.constexpr, WIN: tl.constexpr, BH: tl.constexpr,
                    BW: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    plane = tl.program_id(2).to(tl.int64)
    rows = pid_h * BH + tl.arange(0, BH)[:, None]
    cols = pid_w * BW + tl.arange(0, BW)[None, :]
    valid = (rows < HV) & (cols < WV)
    inside = (rows < H) & (cols < W)
    base = plane * H * W
    # L1 over every pixel (the grid covers the whole image; SSIM only where the window fits).
    off0 = base + rows * W + cols
    x0 = tl.load(x_ptr + off0, mask=inside, other=0.0).to(tl.float32)
    y0 = tl.load(y_ptr + off0, mask=inside, other=0.0).to(tl.float32)
    mx = tl.zeros((BH, BW), dtype=tl.float32)
    my = tl.zeros((BH, BW), dtype=tl.float32)
    exx = tl.zeros((BH, BW), dtype=tl.float32)
    eyy = tl.zeros((BH, BW), dtype=tl.float32)
    exy = tl.zeros((BH, BW), dtype=tl.float32)
    for i in tl.static_range(WIN):
        gi = tl.load(g_ptr + i)
        for j in tl.static_range(WIN):
            wgt = gi * tl.load(g_ptr + j)
            off = base + (rows + i) * W + (cols + j)
            xv = tl.load(x_ptr + off, mask=valid, other=0.0).to(tl.float32)
            yv = tl.load(y_ptr + off, mask=valid, other=0.0).to(tl.float32)
            wx = wgt * xv
            wy = wgt * yv
            mx += wx
            my += wy
            exx += wx * xv
            eyy += wy * yv
            exy += wx * yv
    mxy = mx * my
    a1 = 2.0 * mxy + C1
    a2 = 2.0 * (exy - mxy) + C2
    b1 = mx * mx + my * my + C1
    b2 = exx + eyy - (b1 - C1) + C2
    inv = 1.0 / (b1 * b2)
    s = a1 * a2 * inv
    s = tl.where(valid, s, 0.0)
    n_tiles = tl.num_programs(0) * tl.num_programs(1)
    tile = plane * n_tiles + pid_h * tl.num_programs(0) + pid_w
    tl.store(part_ptr + tile, tl.sum(s))
    tl.store(l1_ptr + tile, tl.sum(tl.abs(x0 - y0)))
    if NEED_GRAD:
        plane_sz = HV * WV
        n_planes = tl.num_programs(2).to(tl.int64)
        doff = plane * plane_sz + rows * WV + cols
        p_e = -s / b2
        t1 = 2.0 * (a2 - a1) * inv
        t2 = 2.0 * s * (1.0 / b2 - 1.0 / b1)
        tl.store(d_ptr + doff, my * t1 + mx * t2, mask=valid)
        tl.store(d_ptr + n_planes * plane_sz + doff, p_e, mask=valid)
        tl.store(d_ptr + 2 * n_planes * plane_sz + doff, 2.0 * a1 * inv, mask=valid)
        tl.store(d_ptr + 3 * n_planes * plane_sz + doff, mx * t1 + my * t2, mask=valid)


@triton.jit
def ssim_bwd_kernel(x_ptr, y_ptr, g_ptr, d_ptr, scale_ptr, l1_scale_ptr, gx_ptr, gy_ptr, H, W,
                    HV, WV,
                    NEED_X: tl.constexpr, NEED_Y: tl.constexpr, WIN: tl.constexpr,
                    BH: tl.constexpr, BW: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    plane = tl.program_id(2).to(tl.int64)
    n_planes = tl.num_programs(2).to(tl.int64)
    rows = pid_h * BH + tl.arange(0, BH)[:, None]
    cols = pid_w * BW + tl.arange(0, BW)[None, :]
    inside = (rows < H) & (cols < W)
    plane_sz = HV * WV
    fmx = tl.zeros((BH, BW), dtype=tl.float32)
    fmy = tl.zeros((BH, BW), dtype=tl.float32)
    fe = tl.zeros((BH, BW), dtype=tl.float32)
    fxy = tl.zeros((BH, BW), dtype=tl.float32)
    for i in tl.static_range(WIN):
        gi = tl.load(g_ptr + i)
        p = rows - i
        for j in tl.static_range(WIN):
            wgt = gi * tl.load(g_ptr + j)
            q = cols - j
            m = (p >= 0) & (p < HV) & (q >= 0) & (q < WV)
            doff = plane * plane_sz + p * WV + q
            fe += wgt * tl.load(d_ptr + n_planes * plane_sz + doff, mask=m, other=0.0)
            fxy += wgt * tl.load(d_ptr + 2 * n_planes * plane_sz + doff, mask=m, other=0.0)
            if NEED_X:
                fmx += wgt * tl.load(d_ptr + doff, mask=m, other=0.0)
            if NEED_Y:
                fmy += wgt * tl.load(d_ptr + 3 * n_planes * plane_sz + doff, mask=m, other=0.0)
    scale = tl.load(scale_ptr + plane)
    l1_scale = tl.load(l1_scale_ptr + plane)
    off = plane * H * W + rows * W + cols
    xv = tl.load(x_ptr + off, mask=inside, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + off, mask=inside, other=0.0).to(tl.float32)
    diff = xv - yv
    sgn = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)) * l1_scale
    if NEED_X:
        gx = scale * (fmx + 2.0 * xv * fe + yv * fxy) + sgn
        tl.store(gx_ptr + off, gx.to(gx_ptr.dtype.element_ty), mask=inside)
    if NEED_Y:
        gy = scale * (fmy + 2.0 * yv * fe + xv * fxy) - sgn
        tl.store(gy_ptr + off, gy.to(gy_ptr.dtype.element_ty), mask=inside)


class SSIMTriton(torch.autograd.Function):
    """Per-image (SSIM, mean |x - y|), each (N,) float32, from one forward and one backward pass.

    Returning both lets ``l1_ssim_loss`` fuse its L1 term into the same two passes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, data_range: float, taps: torch.Tensor,
                k1: float, k2: float) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        window = taps.numel()
        hv, wv = h - window + 1, w - window + 1
        x, y = x.contiguous(), y.contiguous()
        g = taps.to(device=x.device, dtype=torch.float32).contiguous()
        grid = (triton.cdiv(w, BW), triton.cdiv(h, BH), n * c)
        part = torch.empty(2, n * c, grid[0] * grid[1], dtype=torch.float32, device=x.device)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        d = torch.empty((4, n * c, hv, wv) if need else (1,), dtype=torch.float32,
                        device=x.device)
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        ssim_fwd_kernel[grid](x, y, g, part[0], part[1], d, h, w, hv, wv, c1, c2,
                              NEED_GRAD=need, WIN=window, BH=BH, BW=BW)
        if need:
            ctx.save_for_backward(x, y, g, d)
        ctx.window = window
        sums = part.view(2, n, -1).sum(2)
        return sums[0] / (c * hv * wv), sums[1] / (c * h * w)

    @staticmethod
    def backward(ctx, grad_ssim: torch.Tensor | None, grad_l1: torch.Tensor | None):
        x, y, g, d = ctx.saved_tensors
        n, c, h, w = x.shape
        window = ctx.window
        hv, wv = h - window + 1, w - window + 1
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        zeros = torch.zeros(n, dtype=torch.float32, device=x.device)
        g_s = zeros if grad_ssim is None else grad_ssim.float()
        g_l = zeros if grad_l1 is None else grad_l1.float()
        scale = (g_s / (c * hv * wv)).repeat_interleave(c).contiguous()
        l1_scale = (g_l / (c * h * w)).repeat_interleave(c).contiguous()
        gx = torch.empty_like(x) if need_x else x.new_empty(1)
        gy = torch.empty_like(y) if need_y else y.new_empty(1)
        grid = (triton.cdiv(w, BW), triton.cdiv(h, BH), n * c)
        ssim_bwd_kernel[grid](x, y, g, d, scale, l1_scale, gx, gy, h, w, hv, wv, NEED_X=need_x,
                              NEED_Y=need_y, WIN=window, BH=BH, BW=BW)
        return (gx if need_x else None), (gy if need_y else None), None, None, None, None


def ssim_l1_triton(x: torch.Tensor, y: torch.Tensor, taps: torch.Tensor, data_range: float = 1.0,
                   k1: float = 0.01, k2: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (SSIM, mean |x - y|) via the Triton kernels; inputs (N, C, H, W) on CUDA (or
    CPU under ``TRITON_INTERPRET=1``). ``taps``: the normalised 1-D Gaussian window (its length
    is the window size), computed by the front (``same_fast.ops.ssim.gaussian_1d``)."""
    return SSIMTriton.apply(x, y, float(data_range), taps, float(k1), float(k2))


def ssim_triton(x: torch.Tensor, y: torch.Tensor, taps: torch.Tensor, data_range: float = 1.0,
                k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (N,) via the Triton kernels."""
    return ssim_l1_triton(x, y, taps, data_range, k1, k2)[0]

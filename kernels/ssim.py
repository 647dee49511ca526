"""Triton kernels for per-image SSIM (valid padding, Gaussian window), forward and backward.

Forward: one pass. Each program owns a BH x BW tile of the valid SSIM map of one (image,
channel) plane, accumulates the five local statistics (mu_x, mu_y, E[x^2], E[y^2], E[xy]) over
the WIN x WIN Gaussian window straight from the inputs, writes the tile's sum of SSIM values to a
partial-sum buffer (summed deterministically afterwards), and, when a gradient is needed, the four
maps dS/d(mu_x), dS/d(E[x^2]) (= dS/d(E[y^2])), dS/d(E[xy]), dS/d(mu_y).

Backward: one more pass. Each program owns a tile of input pixels and gathers the four maps
through the (symmetric) window: dL/dx = s * (F^T dmx + 2 x F^T de + y F^T dexy), with s the
upstream gradient over C * Hv * Wv. Maths in float32 whatever the input dtype.

Semantics match ``same_fast.ops.ssim_reference``; launch through ``same_fast.ops.ssim``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BH = 16
BW = 32


@triton.jit
def ssim_fwd_kernel(x_ptr, y_ptr, g_ptr, part_ptr, d_ptr, H, W, HV, WV, C1, C2,
                    NEED_GRAD: tl.constexpr, WIN: tl.constexpr, BH: tl.constexpr,
                    BW: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    plane = tl.program_id(2).to(tl.int64)
    rows = pid_h * BH + tl.arange(0, BH)[:, None]
    cols = pid_w * BW + tl.arange(0, BW)[None, :]
    valid = (rows < HV) & (cols < WV)
    base = plane * H * W
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
    tl.store(part_ptr + plane * n_tiles + pid_h * tl.num_programs(0) + pid_w, tl.sum(s))
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
def ssim_bwd_kernel(x_ptr, y_ptr, g_ptr, d_ptr, scale_ptr, gx_ptr, gy_ptr, H, W, HV, WV,
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
    off = plane * H * W + rows * W + cols
    xv = tl.load(x_ptr + off, mask=inside, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + off, mask=inside, other=0.0).to(tl.float32)
    if NEED_X:
        gx = scale * (fmx + 2.0 * xv * fe + yv * fxy)
        tl.store(gx_ptr + off, gx.to(gx_ptr.dtype.element_ty), mask=inside)
    if NEED_Y:
        gy = scale * (fmy + 2.0 * yv * fe + xv * fxy)
        tl.store(gy_ptr + off, gy.to(gy_ptr.dtype.element_ty), mask=inside)


def _gauss(window: int, sigma: float, device: torch.device) -> torch.Tensor:
    from same_fast.ops.ssim import gaussian_1d

    return gaussian_1d(window, sigma, torch.float32, device)


class SSIMTriton(torch.autograd.Function):
    """Per-image SSIM (N,) float32 with Triton forward and backward (see module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, data_range: float, window: int,
                sigma: float, k1: float, k2: float) -> torch.Tensor:
        n, c, h, w = x.shape
        hv, wv = h - window + 1, w - window + 1
        x, y = x.contiguous(), y.contiguous()
        g = _gauss(window, sigma, x.device)
        grid = (triton.cdiv(wv, BW), triton.cdiv(hv, BH), n * c)
        part = torch.empty(n * c, grid[0] * grid[1], dtype=torch.float32, device=x.device)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        d = torch.empty((4, n * c, hv, wv) if need else (1,), dtype=torch.float32,
                        device=x.device)
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        ssim_fwd_kernel[grid](x, y, g, part, d, h, w, hv, wv, c1, c2, NEED_GRAD=need,
                              WIN=window, BH=BH, BW=BW)
        if need:
            ctx.save_for_backward(x, y, g, d)
        ctx.window = window
        return part.view(n, -1).sum(1) / (c * hv * wv)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, y, g, d = ctx.saved_tensors
        n, c, h, w = x.shape
        window = ctx.window
        hv, wv = h - window + 1, w - window + 1
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = (grad_out.float() / (c * hv * wv)).repeat_interleave(c).contiguous()
        gx = torch.empty_like(x) if need_x else x.new_empty(1)
        gy = torch.empty_like(y) if need_y else y.new_empty(1)
        grid = (triton.cdiv(w, BW), triton.cdiv(h, BH), n * c)
        ssim_bwd_kernel[grid](x, y, g, d, scale, gx, gy, h, w, hv, wv, NEED_X=need_x,
                              NEED_Y=need_y, WIN=window, BH=BH, BW=BW)
        return (gx if need_x else None), (gy if need_y else None), None, None, None, None, None


def ssim_triton(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
                sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (N,) via the Triton kernels; inputs (N, C, H, W) on CUDA (or CPU under
    ``TRITON_INTERPRET=1``)."""
    return SSIMTriton.apply(x, y, float(data_range), int(window), float(sigma), float(k1),
                            float(k2))
